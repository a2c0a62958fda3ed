"""``fab run``'s orchestration over real SSH into lab hosts, without Ansible.

Two lab hosts are the generators (reached by SSH with the lab key, running the
kit from this checkout's venv on the shared filesystem); Redis, the simulator
and the wsproxy run on the controller, bound to the lab bridge's address, and
stand in for the deployed stack (the "haproxy" entry points straight at the
simulator and the wsproxy).  This proves the split, the agreed start, the live
polling, the collection, the exact merge, the report and the tarball; the
full deployed stack is tests/lab/test_fab_run_lab.py.
"""

from __future__ import annotations

import csv
import json
import tarfile
from pathlib import Path

import pytest
import yaml
from standin import standin_inventory

from devkit.localstack import start_redis, start_sim, start_wsproxy
from kit.lab import lab_down, lab_up, parse_layout
from kit.run import _hostops as ops
from kit.run._plan import parse_threshold
from kit.run._run import RunOptions, execute

pytestmark = [pytest.mark.lab, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]
VENV = REPO / ".venv"


@pytest.fixture(scope="module")
def lab_stack(need_root, tmp_path_factory):
    """A 2-host lab plus Redis/sim/wsproxy on the bridge address: (tmp, bridge address, ports)."""
    from kit.lab import LabConfig

    tmp = tmp_path_factory.mktemp("orch")
    cfg = LabConfig(root=tmp / "lab", prefix="lkr", subnet="10.213.6.0/24", inventory_path=tmp / "lab.yml")
    procs = []
    try:
        lab_up(2, parse_layout("redis=1,haproxy=1,wsproxy=1,sim=1,generators=2"), cfg=cfg)
        addr = cfg.address(0)
        redis = start_redis(tmp / "redis", host=addr)
        procs.append(redis.proc)
        secret = "s" * 48
        sim, sim_port = start_sim(tmp / "logs", redis_url=redis.url, jwt_secret=secret, host=addr, TOKEN_DELAY_MS=2)
        procs.append(sim)
        ws, ws_port = start_wsproxy(tmp / "logs", redis_url=redis.url, jwt_secret=secret, host=addr)
        procs.append(ws)
        yield tmp, cfg, addr, {"redis": redis.port, "sim": sim_port, "wsproxy": ws_port}
    finally:
        for p in reversed(procs):
            p.stop()
        lab_down(cfg)


def _inventory(tmp: Path, cfg, addr: str, ports: dict, venvs: dict[str, Path]) -> Path:
    lab = yaml.safe_load(cfg.inventory_path.read_text())["all"]
    path = tmp / f"inv-{len(list(tmp.glob('inv-*')))}.yml"
    return standin_inventory(
        path, tmp, lab, lab["hosts"], addr, {**ports, "http": ports["sim"], "ws": ports["wsproxy"]}, venvs=venvs
    )


def _raw_latencies(path: Path) -> list[float]:
    with open(path, newline="") as fh:
        return sorted(float(r["latency_ms"]) for r in csv.DictReader(fh) if r["status"] == "ok")


def test_fab_run_splits_over_ssh_generators_merges_exactly_and_packs_one_tarball(lab_stack, capsys, monkeypatch):
    tmp, cfg, addr, ports = lab_stack
    # the generators' states come from one watcher per host (kit/run/_jobwatch.py), not a command a second
    polls: list[str] = []
    job_state = ops.job_state
    monkeypatch.setattr(ops, "job_state", lambda c, *a, **k: polls.append(c.host) or job_state(c, *a, **k))
    inv = _inventory(tmp, cfg, addr, ports, {})
    lines: list[str] = []
    opts = RunOptions(
        inventory=inv,
        clients=40,
        queries=2,
        ramp=200.0,
        skip_health=True,
        results_dir=tmp / "results",
        max_duration=90,
        run_id="orch-ok",
        think_time=0.05,
        query_timeout=20.0,
        thresholds=[parse_threshold("lost==0"), parse_threshold("success>=100%"), parse_threshold("p99<30s")],
    )
    rc = execute(opts, out=lines.append)
    run_dir = tmp / "results" / "orch-ok"
    assert rc == 0, "\n".join(lines)
    assert polls == [], f"generator hosts polled command by command: {polls}"
    summary = json.loads((run_dir / "summary.json").read_text())
    run = summary["run"]
    assert not summary["partial"]
    assert summary["total_sessions"] == 40 and summary["success_rate"] == 100.0
    assert summary["total_queries"] == 80 and summary["lost_tokens"] == 0
    # the split: 2 generator hosts x 2 cores, one process per core
    assert sorted((s["host"], s["clients"], s["processes"]) for s in run["slots"]) == [
        ("lkr-h1", 20, 2),
        ("lkr-h2", 20, 2),
    ]
    # merged counts equal the sum over generators; merged p99 equals the p99 of all raw values
    per_gen = [json.loads(p.read_text()) for p in sorted((run_dir / "generators").glob("*/out/summary.json"))]
    assert len(per_gen) == 2
    assert summary["total_queries"] == sum(g["total_queries"] for g in per_gen)
    assert summary["total_tokens"] == sum(g["total_tokens"] for g in per_gen)
    raw = _raw_latencies(run_dir / "queries.csv")
    assert len(raw) == 80
    from kit.client._analyze import exact_percentile

    assert summary["latency_ms"]["p99"] == pytest.approx(exact_percentile(raw, 99), rel=2e-3, abs=0.01)
    # every host's metrics, the start skew, clocks, thresholds, report and tarball
    for host in ("lkr-h1", "lkr-h2", "controller"):
        assert (run_dir / "hosts" / host / "host.jsonl").read_text().count("\n") >= 1, host
    assert run["start_skew_s"]["per_process"] and run["clock"]["offsets"]["lkr-h1"]["samples"] == 5
    assert all(t["passed"] for t in run["thresholds"])
    # the workload options reach every generator and the run's record
    for s in run["slots"]:  # each generator's settings file (kit.options), written by fab run
        settings = json.loads((run_dir / "settings" / f"{s['label']}.json").read_text())
        assert settings["think_time"] == 0.05 and settings["query_timeout"] == 20.0
    assert run["config"]["think_time"] == 0.05 and run["config"]["query_timeout"] == 20.0
    # each generator host's client processes are costed (the stand-in services have no supervisor: reported)
    assert {(c["component"], c["host"]) for c in summary["components"]} >= {("client", "lkr-h1"), ("client", "lkr-h2")}
    assert any("controller: no PID for wsproxy-0" in p for p in run["component_problems"])
    assert any(line.lstrip().startswith("t=") for line in lines), "no live view line"
    assert "success rate 100.00%" in (run_dir / "report.txt").read_text()
    assert "<svg" in (run_dir / "report.html").read_text()
    with tarfile.open(tmp / "results" / "orch-ok.tar.gz") as tf:
        names = set(tf.getnames())
    for member in (
        "summary.json",
        "run.json",
        "preflight.json",
        "inventory.yml",
        "report.html",
        "queries.csv",
        "hosts/lkr-h1/host.jsonl",
        "server/controller-sim-stats.json",
    ):
        assert f"orch-ok/{member}" in names, member


def test_a_failing_threshold_exits_1_and_is_reported(lab_stack):
    tmp, cfg, addr, ports = lab_stack
    inv = _inventory(tmp, cfg, addr, ports, {})
    lines: list[str] = []
    rc = execute(
        RunOptions(
            inventory=inv,
            clients=4,
            queries=1,
            skip_health=True,
            results_dir=tmp / "results",
            run_id="orch-threshold",
            live=False,
            thresholds=[parse_threshold("p50<1us")],
        ),
        out=lines.append,
    )
    assert rc == 1
    run = json.loads((tmp / "results" / "orch-threshold" / "run.json").read_text())
    assert run["thresholds"][0]["passed"] is False and run["thresholds"][0]["actual"] > 1e-6
    assert [(t["threshold"], t["default"]) for t in run["thresholds"]] == [
        ("p50<1us", False),
        ("success>=99%", True),
        ("lost==0", True),
    ]
    assert any(line.startswith("FAILED threshold p50<1us: actual ") for line in lines), "\n".join(lines)
    assert "FAIL" in (tmp / "results" / "orch-threshold" / "report.txt").read_text()


def test_a_generator_that_dies_gives_a_partial_run_with_the_others_results(lab_stack):
    tmp, cfg, addr, ports = lab_stack
    broken = tmp / "broken-venv"
    (broken / "bin").mkdir(parents=True, exist_ok=True)
    py = broken / "bin" / "python"
    # the host monitor runs, the load client dies at once: a generator crash
    py.write_text(
        f'#!/bin/sh\n[ "$2" = kit.client ] && {{ echo "simulated crash" >&2; exit 7; }}\nexec {VENV}/bin/python "$@"\n'
    )
    py.chmod(0o755)
    inv = _inventory(tmp, cfg, addr, ports, {"lkr-h2": broken})
    lines: list[str] = []
    rc = execute(
        RunOptions(
            inventory=inv,
            clients=10,
            queries=1,
            skip_health=True,
            results_dir=tmp / "results",
            run_id="orch-partial",
            live=False,
        ),
        out=lines.append,
    )
    assert rc == 3, "\n".join(lines)
    summary = json.loads((tmp / "results" / "orch-partial" / "summary.json").read_text())
    assert summary["partial"] is True
    assert any("lkr-h2" in r and "status 7" in r for r in summary["run"]["partial_reasons"])
    assert summary["total_sessions"] == 5 and summary["success_rate"] == 100.0  # lkr-h1's half, all there
    assert (tmp / "results" / "orch-partial.tar.gz").exists()


def test_a_generator_that_hangs_is_stopped_after_the_bound_and_the_run_is_partial(lab_stack):
    tmp, cfg, addr, ports = lab_stack
    hung = tmp / "hung-venv"
    (hung / "bin").mkdir(parents=True, exist_ok=True)
    py = hung / "bin" / "python"
    # the load client never finishes and ignores its own --max-duration: a hung generator
    py.write_text(f'#!/bin/sh\n[ "$2" = kit.client ] && exec sleep 600\nexec {VENV}/bin/python "$@"\n')
    py.chmod(0o755)
    inv = _inventory(tmp, cfg, addr, ports, {"lkr-h1": hung})
    t0 = __import__("time").monotonic()
    rc = execute(
        RunOptions(
            inventory=inv,
            clients=6,
            queries=1,
            skip_health=True,
            results_dir=tmp / "results",
            run_id="orch-hung",
            live=False,
            max_duration=4,
            grace=2,
        ),
        out=lambda s: None,
    )
    elapsed = __import__("time").monotonic() - t0
    assert rc == 3
    run = json.loads((tmp / "results" / "orch-hung" / "run.json").read_text())
    assert any(r.startswith("lkr-h1") and "still running" in r for r in run["partial_reasons"])
    assert elapsed < 60
    summary = json.loads((tmp / "results" / "orch-hung" / "summary.json").read_text())
    assert summary["total_sessions"] == 3  # lkr-h2's share, merged and reported
    # the hung process group was stopped by PID on its host
    pid = int((tmp / "roots" / "lkr-h1" / "runs" / "orch-hung" / "gen-lkr-h1" / "pid").read_text())
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1][:3]


def _alive_in_session(sid: int) -> list[int]:
    """Non-zombie processes of session *sid* (a job started with setsid: its PID is the session id)."""
    left = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[3]) == sid and fields[0] != "Z":  # fields: state ppid pgrp session ...
            left.append(int(stat.parent.name))
    return left


def test_ctrl_c_on_fab_run_stops_every_generator_and_monitor_and_packs_a_partial_tarball(lab_stack):
    import os
    import shutil
    import signal
    import subprocess
    import time

    tmp, cfg, addr, ports = lab_stack
    inv = _inventory(tmp, cfg, addr, ports, {})
    run_id = f"orch-sigint-{os.getpid()}"
    results = REPO / "results"
    proc = subprocess.Popen(
        [
            str(VENV / "bin" / "fab"),
            "run",
            "--inventory",
            str(inv),
            "--clients",
            "20",
            "--queries",
            "1000",
            "--think-time",
            "0.2",
            "--skip-health",
            "--run-id",
            run_id,
            "--max-duration",
            "240",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    seen: list[str] = []
    try:
        for line in proc.stdout:  # the live view starts once every generator was launched and polled
            seen.append(line)
            if line.lstrip().startswith("t=") and "active" in line:
                break
        else:
            pytest.fail("fab run ended before its live view:\n" + "".join(seen))
        jobs = json.loads((results / run_id / "jobs.json").read_text())
        gen_pids = [j["pid"] for j in jobs["generators"].values()]
        mon_pids = [j["pid"] for j in jobs["monitors"].values()]
        assert len(gen_pids) == 2 and all(gen_pids) and len(mon_pids) == 3 and all(mon_pids)
        assert all(_alive_in_session(p) for p in gen_pids + mon_pids), "jobs not running before the interrupt"
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=180)
        seen.append(rest)
        assert proc.returncode == 130, "".join(seen)[-4000:]
        assert time.monotonic() - t0 < 120
        for pid in gen_pids + mon_pids:
            assert not _alive_in_session(pid), f"job {pid} left behind: {_alive_in_session(pid)}"
        with tarfile.open(results / f"{run_id}.tar.gz") as tf:
            summary = json.load(tf.extractfile(f"{run_id}/summary.json"))
        assert summary["partial"] is True and summary["run"]["interrupted"] == "SIGINT"
        assert any("interrupted by SIGINT" in r for r in summary["run"]["partial_reasons"])
        assert summary["run"]["stop_problems"] == []
        names = set(tarfile.open(results / f"{run_id}.tar.gz").getnames())
        # what exists was collected: each generator's folder (its log, its last live status)
        assert {f"{run_id}/generators/{lbl}/out.log" for lbl in jobs["generators"]} <= names
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(results / run_id, ignore_errors=True)
        (results / f"{run_id}.tar.gz").unlink(missing_ok=True)
