"""``fab run --chaos`` on real processes: Redis, the simulator and a wsproxy under a test-owned
supervisord (as the kit_service role runs them where there is no systemd), one local inventory host.

Proves: the fault hits the process the service manager names (kill: SIGKILL, the supervisor
restarts it; restart: through supervisorctl; pause: SIGSTOP then SIGCONT), is recorded as an
event with its recovery time and cost, the client's accounting stays exact (received + lost =
expected in the raw queries.csv), and the report lists it.  A fault may cost tokens and sessions: these runs
are judged by no default threshold (``no_default_thresholds``), so exit 0 means the run itself completed.
"""

from __future__ import annotations

import csv
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from devkit.localstack import free_port, wait_http_ok, wait_tcp
from kit.run import RunOptions, execute

pytestmark = pytest.mark.timeout(300)

REPO = Path(__file__).resolve().parents[2]
VENV = REPO / ".venv"


def _ctl(root: Path, *args: str) -> str:
    return subprocess.run(
        ["supervisorctl", "-c", str(root / "supervisor" / "supervisord.conf"), *args],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.strip()


@pytest.fixture
def supervised(tmp_path):
    """kit_root with a supervisord running redis, sim and wsproxy-0 on free loopback ports."""
    root = tmp_path / "root"
    (root / "supervisor").mkdir(parents=True)
    (root / "log").mkdir()
    ports = {"redis": free_port(), "sim": free_port(), "wsproxy": free_port(), "stats": free_port()}
    password, secret = secrets.token_urlsafe(16), secrets.token_urlsafe(48)
    redis_conf = root / "redis.conf"
    redis_conf.write_text(
        f'bind 127.0.0.1\nport {ports["redis"]}\nrequirepass {password}\nsave ""\n'
        f"appendonly no\ndir {root}\nmaxclients 10000\n"
    )
    url = f"redis://:{password}@127.0.0.1:{ports['redis']}/0"
    py = sys.executable

    def program(name: str, command: str, env: dict[str, object]) -> str:
        envs = ",".join(f'{k}="{v}"' for k, v in env.items())
        return (
            f"[program:{name}]\ncommand={command}\nautostart=true\nautorestart=true\nstartsecs=1\n"
            f"stopasgroup=true\nkillasgroup=true\nredirect_stderr=true\nstdout_logfile={root}/log/{name}.log\n"
            + (f"environment={envs}\n" if envs else "")
        )

    conf = root / "supervisor" / "supervisord.conf"
    conf.write_text(
        f"[unix_http_server]\nfile={root}/supervisor/supervisor.sock\n"
        f"[supervisord]\nnodaemon=true\nlogfile={root}/supervisor/supervisord.log\n"
        f"pidfile={root}/supervisor/supervisord.pid\n"
        "[rpcinterface:supervisor]\nsupervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n"
        f"[supervisorctl]\nserverurl=unix://{root}/supervisor/supervisor.sock\n"
        + program("redis", f"{shutil.which('redis-server')} {redis_conf}", {})
        + program(
            "sim",
            f"{py} -m kit.sim",
            {
                "REDIS_URL": url,
                "JWT_SECRET": secret,
                "FASTAPI_HOST": "127.0.0.1",
                "FASTAPI_PORT": ports["sim"],
                "TOKEN_DELAY_MS": 50,
            },
        )
        + program(
            "wsproxy-0",
            f"{py} -m kit.wsproxy",
            {"REDIS_URL": url, "JWT_SECRET": secret, "HOST": "127.0.0.1", "PORT": ports["wsproxy"]},
        )
    )
    sup = subprocess.Popen(
        ["supervisord", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        wait_tcp("127.0.0.1", ports["redis"])
        wait_http_ok("127.0.0.1", ports["sim"])
        wait_http_ok("127.0.0.1", ports["wsproxy"])
        yield root, ports
    finally:
        os.kill(sup.pid, signal.SIGTERM)  # supervisord stops its programs (process groups) and exits
        try:
            sup.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(sup.pid, signal.SIGKILL)
            sup.wait()


def _inventory(tmp: Path, root: Path, ports: dict) -> Path:
    node = {
        "ansible_connection": "local",
        "ansible_host": "127.0.0.1",
        "kit_root": str(root),
        "kit_venv_dir": str(VENV),
        "ansible_python_interpreter": str(VENV / "bin" / "python"),
        "haproxy_http_port": ports["sim"],
        "haproxy_ws_port": ports["wsproxy"],
        "haproxy_stats_port": ports["stats"],
        "redis_port": ports["redis"],
        "sim_port": ports["sim"],
        "wsproxy_base_port": ports["wsproxy"],
    }
    one = {"hosts": {"node": None}}
    inv = {
        "all": {
            "hosts": {"node": node},
            "children": {g: one for g in ("redis", "haproxy", "wsproxy", "sim", "generators")},
        }
    }
    path = tmp / "inv.yml"
    path.write_text(yaml.safe_dump(inv))
    return path


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _run(tmp: Path, root: Path, ports: dict, run_id: str, chaos: list[str], **kw) -> tuple[int, dict, Path, list]:
    lines: list[str] = []
    opts = RunOptions(
        inventory=_inventory(tmp, root, ports),
        skip_health=True,
        results_dir=tmp / "results",
        run_id=run_id,
        max_duration=120,
        live=False,
        chaos=chaos,
        **kw,
    )
    rc = execute(opts, out=lines.append)
    run_dir = tmp / "results" / run_id
    return rc, json.loads((run_dir / "summary.json").read_text()), run_dir, lines


def _exact(run_dir: Path) -> None:
    q = _rows(run_dir / "queries.csv")
    assert q
    for x in q:  # every token /run announced was received or counted lost
        if x["expected_tokens"]:
            assert int(x["tokens"]) - int(x["duplicated"]) + int(x["lost"]) == int(x["expected_tokens"]), x


def test_kill_of_a_wsproxy_instance_is_an_event_with_its_recovery_and_exact_accounting(supervised, tmp_path):
    root, ports = supervised
    before = _ctl(root, "pid", "wsproxy-0")
    rc, summary, run_dir, lines = _run(
        tmp_path,
        root,
        ports,
        "chaos-kill",
        ["kill:wsproxy@5s"],
        clients=100,
        queries=8,  # seconds of load after the kill to judge the recovery in, on a busy machine too (6 left
        # too few once under CI's three shards: delivery p99 was not back within 1.5x or +10 ms before the end)
        ramp=50.0,
        think_time=0.3,
        query_timeout=30.0,
        no_default_thresholds=True,
    )  # the point is the fault's accounting
    assert rc == 0, "\n".join(lines[-40:])
    (ev,) = summary["events"]
    assert ev["action"] == "kill" and ev["host"] == "node" and ev["program"] == "wsproxy-0" and ev["ok"], ev
    assert ev["detail"].startswith(f"SIGKILL wsproxy-0 pid {before}")
    assert 4.5 <= ev["at_s"] <= 6.5
    after = _ctl(root, "pid", "wsproxy-0")
    assert after.isdigit() and after != before  # the supervisor restarted it
    # the clients noticed and reconnected; what the fault cost is attributed to it
    assert summary["total_reconnect_attempts"] > 0 and summary["sessions_with_reconnects"] > 0
    assert ev["reconnect_attempts"] > 0
    # tokens flow back soon after the kill; delivery p99 must be back before the run ends (under the suite's
    # three shards it once took 15.3 s: the other shards' load, not the kill, keeps a 3 ms p99 above +10 ms)
    assert ev["recovery_s"] is not None and ev["recovery"]["delivery_p99"]["recovery_s"] is not None, ev["recovery"]
    assert 0 <= ev["recovery"]["tokens"]["recovery_s"] < 15, ev["recovery"]
    assert ev["recovery"]["baseline_tps"] > 0
    _exact(run_dir)
    assert summary["lost_tokens"] == sum(int(x["lost"]) for x in _rows(run_dir / "queries.csv"))
    report = (run_dir / "report.txt").read_text()
    assert "Event         kill node:wsproxy-0 at" in report and "recovered in" in report


def test_pause_of_redis_and_a_graceful_restart_are_events_that_undo_and_recover(supervised, tmp_path):
    root, ports = supervised
    redis_pid, ws_pid = _ctl(root, "pid", "redis"), _ctl(root, "pid", "wsproxy-0")
    rc, summary, run_dir, lines = _run(
        tmp_path,
        root,
        ports,
        "chaos-pause",
        # a pause counts from when it is in place (on a busy machine its pid lookup takes a second): the
        # restart comes late enough for the delivery p99 to have its three whole seconds back in between
        ["pause:redis@4s+2s", "restart:wsproxy[0]@13s"],
        clients=80,
        queries=11,  # load well past the restart, to judge its recovery in on a busy machine too
        ramp=40.0,
        think_time=0.3,
        query_timeout=30.0,
        no_default_thresholds=True,
    )  # the point is the faults' recovery
    assert rc == 0, "\n".join(lines[-40:])
    pause, restart = summary["events"]
    assert pause["action"] == "pause" and pause["ok"] and pause["program"] == "redis", pause
    assert pause["detail"].startswith(f"SIGSTOP redis pid {redis_pid}") and "SIGCONT" in pause["detail"]
    assert 1.8 <= pause["for_s"] <= 3.5
    assert _ctl(root, "pid", "redis") == redis_pid  # paused and resumed, not restarted
    assert "T" not in Path(f"/proc/{redis_pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    assert restart["action"] == "restart" and restart["ok"], restart
    assert _ctl(root, "pid", "wsproxy-0") != ws_pid
    for ev in (pause, restart):
        assert ev["recovery_s"] is not None and ev["recovery_s"] < 20, (ev["action"], ev["recovery"])
    _exact(run_dir)


def test_a_bad_chaos_spec_or_target_is_one_line_and_exit_2(supervised, tmp_path):
    from kit.run import RunError

    root, ports = supervised
    for spec, says in (
        ("kill:wsproxy", "not ACTION:TARGET@AT"),
        ("pause:redis@3s", "give +FOR"),
        ("kill:nosuch@3s", "neither a group"),
        ("kill:wsproxy[3]@1s", "index 3"),
        ("partition:wsproxy@1s+1s", "is this machine"),
    ):
        with pytest.raises(RunError, match=re.escape(says)):
            _run(tmp_path, root, ports, f"bad-{time.monotonic_ns()}", [spec], clients=1, queries=1)
