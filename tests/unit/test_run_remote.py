"""Fan-out over connections: every host's result, every host's failure reported (local hosts, real shells)."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from kit.inventory import parse_inventory_json
from kit.run import GroupException, LocalConnection, connect, describe_failures, fan_out
from kit.run import _hostops as ops
from kit.run import _jobwatch as jobwatch
from kit.run._jobwatch import JobWatch


def _local_hosts(*names: str):
    data = {
        "_meta": {"hostvars": {n: {"ansible_connection": "local"} for n in names}},
        "all": {"children": ["generators"]},
        "generators": {"hosts": list(names)},
    }
    return parse_inventory_json(data, Path("x.yml")).hosts


def test_local_inventory_hosts_get_a_local_connection_that_runs_shell():
    hosts = _local_hosts("a")
    c = connect(hosts["a"])
    assert isinstance(c, LocalConnection)
    assert c.run("echo $((6 * 7))").stdout.strip() == "42"


def test_fan_out_reports_each_failing_host_and_keeps_the_others_results():
    hosts = _local_hosts("good", "bad1", "bad2")
    conns = [connect(h) for h in hosts.values()]
    with pytest.raises(GroupException) as info:
        fan_out(conns, lambda c: c.run(f"test {c.host} = good && echo fine").stdout.strip())
    lines = describe_failures(info.value)
    assert sorted(line.split(":")[0] for line in lines) == ["bad1", "bad2"]
    assert all("exited 1" in line for line in lines)
    ok = {c.host: v for c, v in info.value.result.items() if not isinstance(v, BaseException)}
    assert ok == {"good": "fine"}


def test_a_background_job_reports_its_exit_status_and_is_stopped_by_process_group(tmp_path):
    c = connect(_local_hosts("a")["a"])
    d = str(tmp_path / "job")
    ops.start_job(c, d, ["sh", "-c", "exit 5"])
    for _ in range(100):
        st = ops.job_state(c, d)
        if st["rc"] is not None:
            break
        __import__("time").sleep(0.05)  # waiting for the job to end, bounded
    assert st["rc"] == 5 and not st["alive"]
    d2 = str(tmp_path / "sleeper")
    pid = ops.start_job(c, d2, ["sleep", "300"])
    assert ops.job_state(c, d2)["alive"]
    ops.stop_job(c, d2, grace=2)
    st = ops.job_state(c, d2)
    assert not st["alive"]
    assert (
        not Path(f"/proc/{pid}").exists() or Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    )


def test_fetch_dir_copies_a_folder_tree(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("A")
    (src / "sub" / "b.txt").write_text("B")
    c = connect(_local_hosts("a")["a"])
    names = ops.fetch_dir(c, str(src), tmp_path / "dest")
    assert sorted(names) == ["./a.txt", "./sub/b.txt"]
    assert (tmp_path / "dest" / "sub" / "b.txt").read_text() == "B"


def test_stop_job_reports_what_needed_sigkill_and_a_job_that_already_ended_needs_nothing(tmp_path):
    c = connect(_local_hosts("a")["a"])
    d = str(tmp_path / "stubborn")
    # a job whose process ignores SIGTERM: it is SIGKILLed after the grace and named
    ops.start_job(c, d, ["sh", "-c", "trap '' TERM; sleep 300 & wait; sleep 300"])
    killed = ops.stop_job(c, d, grace=0.5)
    assert len(killed) == 2  # the stubborn shell and its sleep; the job's wrapper ended on SIGTERM
    assert not any(
        Path(f"/proc/{p}").exists() and Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        for p in killed
    )
    d2 = str(tmp_path / "done")
    ops.start_job(c, d2, ["true"])
    for _ in range(100):
        if ops.job_state(c, d2)["rc"] is not None:
            break
        __import__("time").sleep(0.05)  # waiting for the job to end, bounded
    assert ops.stop_job(c, d2) == []
    assert ops.stop_job(c, str(tmp_path / "never-started")) == []


def _wait_for(predicate, what: str, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = predicate()
        if got:
            return got
        time.sleep(0.05)  # polling a state that changes on its own, bounded
    raise AssertionError(f"not within {timeout} s: {what}")


def test_a_job_watch_reports_each_change_of_its_jobs_and_ends_with_them(tmp_path):
    c = connect(_local_hosts("a")["a"])
    script = (
        "mkdir -p out; echo '{\"n\": 1}' > out/s.tmp && mv out/s.tmp out/status.json; sleep 0.8; "
        "echo '{\"n\": 2}' > out/s.tmp && mv out/s.tmp out/status.json; sleep 0.8; exit 3"
    )
    jobs = {"quick": str(tmp_path / "quick"), "slow": str(tmp_path / "slow")}
    ops.start_job(c, jobs["quick"], ["sh", "-c", script])
    slow_pid = ops.start_job(c, jobs["slow"], ["sleep", "300"])
    w = JobWatch(c, sys.executable, jobs, "out/status.json", 60)
    try:
        assert w.wait_first()
        # a change is reported within the watcher's look, not at the next beat
        _wait_for(lambda: ((w.latest() or {}).get("quick") or {}).get("status") == {"n": 2}, "status n=2 reported")
        final = _wait_for(lambda: (w.latest() or {}).get("quick", {}).get("rc") is not None and w.latest(), "rc")
        assert final["quick"] == {"rc": 3, "alive": False, "status": {"n": 2}}
        assert final["slow"] == {"rc": None, "alive": True, "status": None}
        assert w._proc is not None and w._proc.poll() is None  # one job still runs: the watcher too
        ops.stop_job(c, jobs["slow"], grace=2)
        assert w._proc.wait(timeout=10) == 0  # every job ended: the watcher reported it and ended by itself
        assert w.latest()["slow"]["alive"] is False  # the last round stays readable: every job in it ended
    finally:
        w.close()
        ops.stop_job(c, jobs["slow"], grace=1)
    assert not Path(f"/proc/{slow_pid}/cmdline").exists() or not Path(f"/proc/{slow_pid}/cmdline").read_bytes()


def test_a_job_watch_that_cannot_start_or_goes_quiet_is_not_trusted(tmp_path, monkeypatch):
    c = connect(_local_hosts("a")["a"])
    d = str(tmp_path / "job")
    ops.start_job(c, d, ["sleep", "300"])
    try:
        broken = JobWatch(c, str(tmp_path / "no-such-python"), {"j": d}, "out/status.json", 60)
        assert not broken.wait_first(2) and broken.latest() is None  # the caller polls the host instead
        monkeypatch.setattr(jobwatch, "STALE_S", 0.5)
        w = JobWatch(c, sys.executable, {"j": d}, "out/status.json", 60)
        try:
            assert w.wait_first() and w.latest() == {"j": {"rc": None, "alive": True, "status": None}}
            assert w._proc is not None
            os.kill(w._proc.pid, signal.SIGSTOP)  # alive but silent: its last round goes stale
            _wait_for(lambda: w.latest() is None, "a silent watcher's round no longer trusted", timeout=5)
            os.kill(w._proc.pid, signal.SIGCONT)
        finally:
            w.close()
        assert w._proc.poll() is not None
    finally:
        ops.stop_job(c, d, grace=1)


def test_a_job_watch_skips_what_a_chatty_login_shell_prints_before_it(tmp_path, monkeypatch):
    """A host whose shell start-up files print (a banner, a toolchain's notice) keeps its watcher; a stream that
    never greets within MAX_PREAMBLE is not trusted (the caller polls the host)."""
    c = connect(_local_hosts("a")["a"])
    d = str(tmp_path / "job")
    ops.start_job(c, d, ["sleep", "300"])

    def python_after(name: str, preamble: str) -> str:
        wrapper = tmp_path / name
        wrapper.write_text(f"#!/bin/sh\nprintf '{preamble}'\nexec {sys.executable} \"$@\"\n")
        wrapper.chmod(0o755)
        return str(wrapper)

    try:
        for name, preamble in (("banner", "Welcome to lab-h1\\nconda: base\\n"), ("no-newline", "pyenv: hi")):
            w = JobWatch(c, python_after(name, preamble), {"j": d}, "out/status.json", 60)
            try:
                assert w.wait_first(), name
                assert w.latest() == {"j": {"rc": None, "alive": True, "status": None}}, name
            finally:
                w.close()
        monkeypatch.setattr(jobwatch, "MAX_PREAMBLE", 64)
        w = JobWatch(c, python_after("flood", "x" * 200 + "\\n"), {"j": d}, "out/status.json", 60)
        try:
            assert not w.wait_first() and w.latest() is None
        finally:
            w.close()
    finally:
        ops.stop_job(c, d, grace=1)
