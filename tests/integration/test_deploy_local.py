"""playbooks/site.yml deploys the whole stack on this machine for real (inventory/local.yml).

The only tests that use the kit's fixed ports (redis 6379, sim 8000, wsproxy 4040-4041, haproxy
8080/8081/8404).  The module fixture deploys once from a frozen copy of the source tree (other
work in the tree must not look like a change between runs) and always runs teardown.yml at the
end; the last test runs teardown itself and proves nothing is left: no process, no listening
port, no kit_root, kernel settings put back.  Takes about 3-5 minutes on a loaded 2-core machine.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest
import redis
import trio
from trio_websocket import open_websocket_url

from devkit.ansible_log import failure_summary
from kit import contract

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
INVENTORY = REPO / "inventory" / "local.yml"
KIT_ROOT = Path("/opt/wsproxy-loadkit/localhost")
SECRETS = REPO / ".secrets"
ADDR = "127.0.0.1"
PORTS = {
    "redis": 6379,
    "sim": 8000,
    "wsproxy-0": 4040,
    "wsproxy-1": 4041,
    "haproxy_http": 8080,
    "haproxy_ws": 8081,
    "haproxy_stats": 8404,
}
SUPERVISORCTL = ["/usr/bin/supervisorctl", "-c", str(KIT_ROOT / "supervisor" / "supervisord.conf")]
PLAYBOOK_TIMEOUT = 420
RECAP = re.compile(r"^(\S+)\s+: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)

pytestmark = [pytest.mark.timeout(900)]


def _sysctl_keys() -> list[str]:
    return list(contract.sysctls())  # the tuning role's tuning_sysctl default


def _read_sysctls() -> dict[str, str | None]:
    out = {}
    for key in _sysctl_keys():
        try:
            out[key] = " ".join(Path("/proc/sys", key.replace(".", "/")).read_text().split())
        except FileNotFoundError:
            out[key] = None
    return out


class Ansible:
    """Runs playbooks against inventory/local.yml with the test's frozen source and wheelhouse."""

    def __init__(self, extra_vars: dict[str, str]):
        self.extra_vars = extra_vars
        self.env = {
            **os.environ,
            "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_FORCE_COLOR": "0",
        }

    def run(
        self, playbook: str, *args: str, inventory: Path = INVENTORY
    ) -> tuple[subprocess.CompletedProcess, float, dict[str, int]]:
        t0 = time.monotonic()
        res = subprocess.run(
            [
                str(BIN / "ansible-playbook"),
                "-i",
                str(inventory),
                str(REPO / "playbooks" / playbook),
                "-e",
                json.dumps(self.extra_vars),
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=PLAYBOOK_TIMEOUT,
            cwd=REPO,
            env=self.env,
            stdin=subprocess.DEVNULL,
        )
        elapsed = time.monotonic() - t0
        recap = {}
        for m in RECAP.finditer(res.stdout):
            recap = {"ok": int(m[2]), "changed": int(m[3]), "unreachable": int(m[4]), "failed": int(m[5])}
        return res, elapsed, recap


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex((ADDR, port)) == 0


def _kit_pids() -> set[int]:
    """supervisord, every program it runs and all their descendants (e.g. the simulator's workers)."""
    res = subprocess.run(SUPERVISORCTL + ["pid"], capture_output=True, text=True, timeout=30)
    pids = {int(res.stdout.strip())} if res.returncode == 0 and res.stdout.strip().isdigit() else set()
    res = subprocess.run(SUPERVISORCTL + ["pid", "all"], capture_output=True, text=True, timeout=30)
    pids |= {int(x) for x in res.stdout.split() if x.isdigit() and x != "0"}
    for pid in list(pids):
        try:
            pids |= {c.pid for c in psutil.Process(pid).children(recursive=True)}
        except psutil.NoSuchProcess:
            pass
    return pids


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _secret(name: str) -> str:
    return (SECRETS / name).read_text().strip()


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    src = tmp_path_factory.mktemp("src")
    shutil.copytree(REPO / "kit", src / "kit", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "requirements.lock"):
        shutil.copy2(REPO / name, src / name)
    wheelhouse = tmp_path_factory.mktemp("wheelhouse")
    cached = REPO / ".wheelhouse" / "wheels"
    if cached.is_dir():  # saves the download; pip still checks every hash
        shutil.copytree(cached, wheelhouse / "wheels", ignore=shutil.ignore_patterns("wsproxy_loadkit-*"))
    ansible = Ansible({"kit_venv_source_root": str(src), "kit_venv_wheelhouse_dir": str(wheelhouse)})

    res, _, recap = ansible.run("teardown.yml")  # leftovers of an interrupted earlier run
    assert res.returncode == 0, failure_summary(res.stdout)
    busy = {name: port for name, port in PORTS.items() if _listening(port)}
    if busy:
        pytest.fail(
            f"the kit's fixed ports are in use by something else: {busy}; stop it (only this test may use them)"
        )
    sysctl_before = _read_sysctls()

    state = {"ansible": ansible, "sysctl_before": sysctl_before, "torn_down": False, "src": src}
    try:
        res, elapsed, recap = ansible.run("site.yml")
        state.update(first=(res, elapsed, recap))
        print(f"\nsite.yml first run: {elapsed:.1f} s, {recap}")
        yield state
    finally:
        if not state["torn_down"]:
            ansible.run("teardown.yml")


def test_site_yml_deploys_the_stack(deployed):
    res, elapsed, recap = deployed["first"]
    assert res.returncode == 0, failure_summary(res.stdout)
    assert recap["failed"] == 0 and recap["unreachable"] == 0 and recap["changed"] > 0
    # the host's open-file cap is reported, not skipped (20,000 here; root cannot raise it)
    said = " ".join(res.stdout.split())
    hard = int(subprocess.run(["sh", "-c", "ulimit -Hn"], capture_output=True, text=True).stdout)
    if hard < 65536:
        assert f"open files per kit process capped at {hard}" in said
        assert f"at most ~{(hard - 200) // 2} proxied sessions" in said
    report = json.loads((KIT_ROOT / "state" / "tuning.json").read_text())
    assert report["nofile"]["effective"] == min(65536, hard)


def test_every_service_answers_its_health_check(deployed):
    r = redis.Redis(
        host=ADDR, port=PORTS["redis"], username="admin", password=_secret("redis_admin_password"), socket_timeout=5
    )
    try:
        assert r.ping() is True
        assert r.info("server")["redis_version"]
    finally:
        r.close()
    with httpx.Client(timeout=10) as http:
        assert http.get(f"http://{ADDR}:{PORTS['haproxy_http']}/health").json() == {"status": "ok"}
        assert http.get(f"http://{ADDR}:{PORTS['sim']}/health").status_code == 200
        for name in ("wsproxy-0", "wsproxy-1"):
            assert http.get(f"http://{ADDR}:{PORTS[name]}/health").json()["status"] == "ok", name
    status = subprocess.run(SUPERVISORCTL + ["status"], capture_output=True, text=True, timeout=30).stdout
    for program in ("redis", "sim", "wsproxy-0", "wsproxy-1", "haproxy"):
        assert re.search(rf"^{program}\s+RUNNING", status, re.M), status


def test_haproxy_stats_page_needs_the_password(deployed):
    url = f"http://{ADDR}:{PORTS['haproxy_stats']}/"
    # one connection per request: the stats listener closes after a 401 (http-server-close), and a
    # kept-alive client could race that close ("Server disconnected without sending a response")
    assert httpx.get(url, timeout=10).status_code == 401
    assert httpx.get(url, auth=("admin", "wrong-password"), timeout=10).status_code == 401
    ok = httpx.get(url + ";csv", auth=("admin", _secret("haproxy_stats_password")), timeout=10)
    assert ok.status_code == 200
    rows = {tuple(line.split(",")[:2]) for line in ok.text.splitlines()}
    assert {("wsproxy", "localhost-wsproxy-0"), ("wsproxy", "localhost-wsproxy-1"), ("sim", "localhost-sim")} <= rows


def test_rendered_haproxy_cfg_passes_haproxy_check(deployed):
    cfg = KIT_ROOT / "haproxy" / "haproxy.cfg"
    res = subprocess.run(["haproxy", "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stdout + res.stderr
    text = cfg.read_text()
    assert "balance hash var(txn.session_id)" in text and "hash-type consistent" in text
    assert "timeout tunnel" in text
    # the policy that degrades instead of collapsing (haproxy role defaults): a server marked DOWN keeps its
    # sessions, checks may take 5 s, every server DOWN sends new sessions to all of them anyway
    assert "shutdown-sessions" not in text and "timeout check 5s" in text
    assert "use_backend wsproxy_open if { nbsrv(wsproxy) eq 0 }" in text and "backend wsproxy_open" in text
    assert "log stdout format iso" in text  # times on every line: fab run reads the balancer's decisions
    # HAProxy's Prometheus exporter answers on the stats port without the stats password
    resp = httpx.get(f"http://{ADDR}:{PORTS['haproxy_stats']}/metrics", timeout=10)
    assert resp.status_code == 200 and 'haproxy_server_status{proxy="wsproxy"' in resp.text
    assert oct(cfg.stat().st_mode & 0o777) == "0o600"  # it holds the stats password


def test_every_kit_path_lies_under_kit_root_and_secrets_are_0600(deployed):
    for env in (KIT_ROOT / "etc").glob("*.env"):
        assert env.stat().st_mode & 0o077 == 0, env
    assert (KIT_ROOT / "redis" / "redis.conf").stat().st_mode & 0o077 == 0
    # the redis config stores password hashes, never the passwords
    conf = (KIT_ROOT / "redis" / "redis.conf").read_text()
    for name in ("redis_admin_password", "redis_sim_password", "redis_wsproxy_password"):
        assert _secret(name) not in conf
    supervisord = psutil.Process(int((KIT_ROOT / "run" / "supervisord.pid").read_text()))
    assert supervisord.cmdline()[-1].startswith(str(KIT_ROOT))


def test_redis_acl_confines_each_user(deployed):
    def client(user: str, secret: str) -> redis.Redis:
        return redis.Redis(host=ADDR, port=PORTS["redis"], username=user, password=_secret(secret), socket_timeout=5)

    sim, wsp, admin = (
        client("sim", "redis_sim_password"),
        client("wsproxy", "redis_wsproxy_password"),
        client("admin", "redis_admin_password"),
    )
    try:
        assert sim.hset("session:acltest", "status", "open") == 1 and sim.expire("session:acltest", 60)
        with pytest.raises(redis.exceptions.NoPermissionError):
            sim.set("other:key", "x")  # only session:* keys
        with pytest.raises(redis.exceptions.NoPermissionError):
            sim.publish("other:channel", "x")  # only session:*:down channels
        assert sim.publish("session:acltest:down", "{}") == 0
        # the simulator's workers hear each other's closes on the contract's channel, and on no other
        ps = sim.pubsub()
        ps.subscribe(contract.sim_close_channel().decode())
        assert ps.get_message(timeout=5)["type"] == "subscribe"
        ps.close()
        ps = sim.pubsub()
        ps.subscribe("other:channel")
        with pytest.raises(redis.exceptions.NoPermissionError):
            ps.get_message(timeout=5)
        ps.close()
        for script in (
            ("EVAL", "while true do end", 0),
            ("SCRIPT", "LOAD", "return 1"),
            ("EVALSHA", "e0e1f9fabfc9d4800c877a703b823ac0578ff8db", 0),
        ):
            with pytest.raises(redis.exceptions.NoPermissionError):
                sim.execute_command(*script)  # no scripts: an endless one would wedge Redis for good
        with pytest.raises(redis.exceptions.NoPermissionError):
            wsp.publish("session:acltest:down", "x")  # wsproxy only subscribes
        with pytest.raises(redis.exceptions.NoPermissionError):
            wsp.hgetall("session:acltest")
        with pytest.raises(redis.exceptions.NoPermissionError):
            admin.hgetall("session:acltest")  # the monitor reads INFO, not data
        assert "connected_clients" in admin.info("clients")
        ps = wsp.pubsub()
        ps.subscribe("session:acltest:down")
        assert ps.get_message(timeout=5)["type"] == "subscribe"
        ps.close()
        ps = wsp.pubsub()
        ps.subscribe("session:other")  # not a :down channel: refused (the reply arrives with the next read)
        with pytest.raises(redis.exceptions.NoPermissionError):
            ps.get_message(timeout=5)
        ps.close()
        anonymous = redis.Redis(host=ADDR, port=PORTS["redis"], socket_timeout=5)
        with pytest.raises((redis.exceptions.AuthenticationError, redis.exceptions.ResponseError)):
            anonymous.get("session:acltest")  # the default user is off
        anonymous.close()
    finally:
        sim.delete("session:acltest")
        for c in (sim, wsp, admin):
            c.close()


def _connections_total() -> list[int]:
    with httpx.Client(timeout=10) as http:
        return [
            http.get(f"http://{ADDR}:{PORTS[n]}/stats").json()["connections_total"] for n in ("wsproxy-0", "wsproxy-1")
        ]


async def test_websocket_through_haproxy_streams_tokens_end_to_end(deployed):
    async with httpx.AsyncClient(base_url=f"http://{ADDR}:{PORTS['haproxy_http']}", timeout=10) as http:
        created = (await http.post("/session/create", json={"agent_id": "deploy-test"})).json()
        sid, token, path = created["session_id"], created["auth_token"], created["ws_path"]
        assert path == f"/deploy-test/ws/{sid}"
        headers = [(b"Authorization", f"Bearer {token}".encode())]
        landed = []
        for attempt in range(2):  # a session and its reconnect reach the same wsproxy instance
            before = await trio.to_thread.run_sync(_connections_total)
            with trio.fail_after(30):
                async with open_websocket_url(f"ws://{ADDR}:{PORTS['haproxy_ws']}{path}", extra_headers=headers) as ws:
                    run = await http.post(f"/session/{sid}/run", json={"query": f"hello {attempt}", "max_tokens": 5})
                    assert run.status_code == 202, run.text
                    query_id = run.json()["query_id"]
                    messages = []
                    while not messages or messages[-1]["type"] != "done":
                        messages.append(json.loads(await ws.get_message()))
            after = await trio.to_thread.run_sync(_connections_total)
            landed.append([b - a for a, b in zip(before, after)])
            assert [m["seq"] for m in messages] == list(range(6))
            assert all(m["query_id"] == query_id for m in messages)
            assert [m["type"] for m in messages] == ["token"] * 5 + ["done"] and messages[-1]["tokens"] == 5
        assert landed[0] == landed[1] and sorted(landed[0]) == [0, 1], landed
        await http.post(f"/session/{sid}/close")


def test_websocket_without_token_is_refused_through_haproxy(deployed):
    with socket.create_connection((ADDR, PORTS["haproxy_ws"]), timeout=10) as s:
        s.sendall(
            b"GET /a/ws/nosuchsession HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        assert s.recv(100).startswith(b"HTTP/1.1 401")


def test_a_check_diff_run_from_an_inventory_outside_inventory_dir_reports_no_change(deployed, tmp_path):
    # the same hosts in a file of its own directory (no inventory/group_vars beside it): the roles' defaults
    # and the contract alone give exactly what inventory/local.yml deployed, and --check --diff (one run for
    # both facts: a full second site.yml run cost a minute of the suite) says nothing would change
    mine = tmp_path / "elsewhere" / "local.yml"
    mine.parent.mkdir()
    shutil.copy2(INVENTORY, mine)
    res, elapsed, recap = deployed["ansible"].run("site.yml", "--check", "--diff", inventory=mine)
    print(f"\nsite.yml --check --diff ({mine}): {elapsed:.1f} s, {recap}")
    assert res.returncode == 0, failure_summary(res.stdout)
    assert recap["changed"] == 0, [
        line for line in res.stdout.splitlines() if line.startswith("changed:")
    ] or failure_summary(res.stdout)


def _program_pid(name: str) -> int | None:
    res = subprocess.run(SUPERVISORCTL + ["status", name], capture_output=True, text=True, timeout=30)
    m = re.search(r"RUNNING\s+pid (\d+)", res.stdout)
    return int(m[1]) if m else None


def test_a_new_kit_build_restarts_the_programs_that_run_it(deployed):
    """A changed kit (a new wheel in the venv) must restart the simulator: supervisord's `update` ignores a
    comment, and a deploy once left the old code running while the venv held the new one."""
    old = _program_pid("sim")
    assert old is not None
    mark = f"\n# build marker of test_a_new_kit_build_restarts_the_programs_that_run_it {time.time_ns()}\n"
    with open(deployed["src"] / "kit" / "sim" / "_app.py", "a") as fh:
        fh.write(mark)
    res, _, _ = deployed["ansible"].run("sim.yml")
    assert res.returncode == 0, failure_summary(res.stdout)
    deadline = time.monotonic() + 60  # `update` restarted it; supervisord says RUNNING after startsecs
    while (new := _program_pid("sim")) is None and time.monotonic() < deadline:
        time.sleep(0.2)
    status = subprocess.run(SUPERVISORCTL + ["status", "sim"], capture_output=True, text=True, timeout=30).stdout
    assert new is not None and new != old, (old, status)
    build = psutil.Process(new).environ().get("KIT_BUILD")
    assert build and build in (KIT_ROOT / "supervisor" / "conf.d" / "sim.conf").read_text()
    installed = list((KIT_ROOT / "venv").glob("lib/python3*/site-packages/kit/sim/_app.py"))
    assert installed and mark in installed[0].read_text()


def test_supervisor_restarts_a_crashed_service(deployed):
    old = _program_pid("wsproxy-0")
    assert old is not None
    psutil.Process(old).kill()  # SIGKILL, as a crash would
    deadline = time.monotonic() + 30
    new = None
    while time.monotonic() < deadline:  # poll for the supervisor's restart, bounded
        new = _program_pid("wsproxy-0")
        if new not in (None, old):
            try:
                if httpx.get(f"http://{ADDR}:{PORTS['wsproxy-0']}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
        time.sleep(0.2)
    assert new not in (None, old)
    assert httpx.get(f"http://{ADDR}:{PORTS['wsproxy-0']}/health", timeout=5).status_code == 200
    assert (KIT_ROOT / "log" / "wsproxy-0.log").stat().st_size > 0


def _services_cpu_s() -> float:
    """CPU seconds the supervisor's programs and all their descendants used so far, read from /proc.

    utime+stime of each live process plus cutime+cstime (what its reaped children used).
    """
    tck = os.sysconf("SC_CLK_TCK")
    stats: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                raw = (entry / "stat").read_text()
            except OSError:
                continue
            stats[int(entry.name)] = raw[raw.rfind(")") + 2 :].split()
    status = subprocess.run(SUPERVISORCTL + ["status"], capture_output=True, text=True, timeout=30).stdout
    todo = [int(pid) for pid in re.findall(r"RUNNING\s+pid (\d+)", status)]
    seen: set[int] = set()
    while todo:
        pid = todo.pop()
        if pid not in seen and pid in stats:
            seen.add(pid)
            todo += [p for p, st in stats.items() if int(st[1]) == pid]
    return sum(sum(int(x) for x in stats[p][11:15]) / tck for p in seen)


def test_sum_of_component_cpu_is_within_15_percent_of_kit_cpu_measured_from_proc(deployed, tmp_path):
    from kit.run import RunOptions, execute

    before = _services_cpu_s()
    rc = execute(
        RunOptions(
            inventory=INVENTORY,
            clients=200,
            queries=2,
            ramp=50.0,
            max_duration=120,
            results_dir=tmp_path,
            run_id="cpu",
            live=False,
        ),
        out=lambda line: None,
    )
    services = _services_cpu_s() - before
    assert rc == 0
    summary = json.loads((tmp_path / "cpu" / "summary.json").read_text())
    assert summary["run"]["component_problems"] == []
    # each generator process reports its own CPU (getrusage of itself at its end)
    runs = [
        r
        for f in (tmp_path / "cpu" / "generators").glob("*/out/histograms.json")
        for r in json.loads(f.read_text())["runs"]
    ]
    assert runs and all(r.get("cpu_s") is not None for r in runs)
    independent = services + sum(r["cpu_s"] for r in runs)
    components = {c["component"]: c for c in summary["components"]}
    assert set(components) == {"client", "sim", "wsproxy", "haproxy", "redis"}
    measured = sum(c["cpu_s"] for c in summary["components"])
    print(f"\ncomponents {measured:.2f} CPU-s, independent {independent:.2f} CPU-s (services {services:.2f})")
    assert abs(measured - independent) <= 0.15 * independent
    assert components["wsproxy"]["processes"] >= 2 and components["client"]["us_per_token"] > 0
    assert summary["bottleneck"]["component"] in components


def test_a_users_wsproxy_build_deploys_through_wsproxy_artifact_and_the_run_records_it(deployed, tmp_path):
    """The pluggable wsproxy: a single-file build given as wsproxy_artifact replaces the reference one,
    a run against it passes, and the run records which build it measured (kind, checksum)."""
    import hashlib

    from kit.run import RunOptions, execute

    artifact = tmp_path / "my-wsproxy"
    artifact.write_text(
        "#!/bin/sh\n# a user's wsproxy build, 1.0 (here: the reference one behind a wrapper)\n"
        f'exec {KIT_ROOT}/venv/bin/python -m kit.wsproxy "$@"\n'
    )
    artifact.chmod(0o755)
    digest = hashlib.sha256(artifact.read_bytes()).hexdigest()
    # an inventory beside local.yml (same group_vars) whose wsproxy host names the artifact
    inv = REPO / "inventory" / f".artifact-test-{os.getpid()}.yml"
    text = INVENTORY.read_text().replace(
        "      ansible_python_interpreter: /usr/bin/python3\n",
        f"      ansible_python_interpreter: /usr/bin/python3\n      wsproxy_artifact: {artifact}\n",
        1,
    )
    assert str(artifact) in text
    inv.write_text(text)
    ansible = deployed["ansible"]
    try:
        res = subprocess.run(
            [
                str(BIN / "ansible-playbook"),
                "-i",
                str(inv),
                str(REPO / "playbooks" / "wsproxy.yml"),
                "-e",
                json.dumps(ansible.extra_vars),
            ],
            capture_output=True,
            text=True,
            timeout=PLAYBOOK_TIMEOUT,
            cwd=REPO,
            env=ansible.env,
            stdin=subprocess.DEVNULL,
        )
        assert res.returncode == 0, failure_summary(res.stdout)
        conf = (KIT_ROOT / "supervisor" / "conf.d" / "wsproxy-0.conf").read_text()
        assert f"{KIT_ROOT}/bin/wsproxy-artifact" in conf
        rc = execute(
            RunOptions(
                inventory=inv,
                clients=20,
                queries=1,
                ramp=20.0,
                max_duration=120,
                results_dir=tmp_path,
                run_id="artifact",
                live=False,
            ),
            out=lambda line: None,
        )
        summary = json.loads((tmp_path / "artifact" / "summary.json").read_text())
        assert rc == 0 and summary["success_rate"] == 100.0, summary.get("run", {}).get("partial_reasons")
        build = json.dumps(summary["run"]["build"])
        assert "artifact" in build and digest in build, build
        # the preflight took the host's open-file limit from the tuning role's report, not a second guess
        pre = json.loads((tmp_path / "artifact" / "preflight.json").read_text())
        assert all("tuning.json" in cap["nofile_source"] for cap in pre["caps"].values()), pre["caps"]
    finally:
        inv.unlink(missing_ok=True)
        res, _, _ = ansible.run("wsproxy.yml")  # back to the reference wsproxy for the tests after this one
        assert res.returncode == 0, failure_summary(res.stdout)
    assert f"{KIT_ROOT}/bin/wsproxy-artifact" not in (KIT_ROOT / "supervisor" / "conf.d" / "wsproxy-0.conf").read_text()


def test_scaling_wsproxy_down_removes_the_extra_instance(deployed):
    ansible = deployed["ansible"]
    for playbook in ("wsproxy.yml", "haproxy.yml"):
        res, _, recap = ansible.run(playbook, "-e", "wsproxy_instances_per_host=1")
        assert res.returncode == 0 and recap["changed"] > 0, failure_summary(res.stdout)
    assert not _listening(PORTS["wsproxy-1"])
    assert _program_pid("wsproxy-1") is None and _program_pid("wsproxy-0") is not None
    assert not (KIT_ROOT / "supervisor" / "conf.d" / "wsproxy-1.conf").exists()
    cfg = (KIT_ROOT / "haproxy" / "haproxy.cfg").read_text()
    assert "localhost-wsproxy-0" in cfg and "localhost-wsproxy-1" not in cfg
    # HAProxy reloaded the new config (USR2 to the master), it was not left on the old one
    auth = ("admin", _secret("haproxy_stats_password"))
    deadline = time.monotonic() + 20
    while True:  # the reload completes asynchronously; poll, bounded
        csv = httpx.get(f"http://{ADDR}:{PORTS['haproxy_stats']}/;csv", auth=auth, timeout=5).text
        if "localhost-wsproxy-1" not in csv or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert "localhost-wsproxy-0" in csv and "localhost-wsproxy-1" not in csv


def test_teardown_leaves_no_process_port_or_kit_root(deployed):
    pids = _kit_pids()
    assert len(pids) >= 6, pids  # supervisord + redis, sim (+ workers), 2 wsproxy, haproxy (+ worker)
    res, elapsed, recap = deployed["ansible"].run("teardown.yml")
    deployed["torn_down"] = True
    assert res.returncode == 0, failure_summary(res.stdout)
    assert [p for p in pids if _alive(p)] == []
    assert [name for name, port in PORTS.items() if _listening(port)] == []
    assert not KIT_ROOT.exists()
    assert _read_sysctls() == deployed["sysctl_before"]
    # a second teardown finds nothing to do
    res, _, recap = deployed["ansible"].run("teardown.yml")
    assert res.returncode == 0 and recap["changed"] == 0, failure_summary(res.stdout)
