"""Fan-out over connections: every host's result, every host's failure reported (local hosts, real shells)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kit.inventory import parse_inventory_json
from kit.run import GroupException, LocalConnection, connect, describe_failures, fan_out
from kit.run import _hostops as ops


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
