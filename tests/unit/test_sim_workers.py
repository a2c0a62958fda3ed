"""kit.sim._workers: the sums over workers cope with a worker that died and was replaced.

Each test writes worker files into a directory of its own, as the workers would; the dead worker's pid
is a child of this test that has exited (reaped), so it exists no more.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from kit.sim import _workers


@pytest.fixture
def stats_dir(tmp_path, monkeypatch):
    monkeypatch.setenv(_workers.STATS_DIR_ENV, str(tmp_path))
    return tmp_path


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _write(d, pid: int, started: int, stats: dict, age_s: float = 0.0) -> None:
    path = d / f"{pid}-{started}.json"
    path.write_text(json.dumps({"pid": pid, **stats}))
    if age_s:
        t = time.time() - age_s
        os.utime(path, (t, t))


def test_a_dead_workers_counters_add_once_and_its_gauges_not_at_all(stats_dir):
    dead = _dead_pid()
    _write(stats_dir, dead, 1, {"queries": 7, "queries_in_flight": 5, "tokens_in_flight": 50, "uptime_s": 9.0})
    own = {"pid": os.getpid(), "queries": 3, "queries_in_flight": 2, "tokens_in_flight": 20, "uptime_s": 1.0}
    _workers.publish(own)
    total = _workers.gather(own)
    assert total["queries"] == 10
    assert total["queries_in_flight"] == 2 and total["tokens_in_flight"] == 20
    assert total["workers"] == 1 and total["pids"] == sorted({dead, os.getpid()})
    assert total["uptime_s"] == 9.0


def test_a_stale_file_of_a_live_pid_is_not_a_live_worker(stats_dir):
    # a dead worker's pid taken by another process: its file stopped changing, so it is not read as alive
    _write(stats_dir, os.getppid(), 1, {"queries": 4, "queries_in_flight": 4}, age_s=_workers.STALE_S + 5)
    own = {"pid": os.getpid(), "queries": 1, "queries_in_flight": 1}
    total = _workers.gather(own)
    assert total["queries"] == 5 and total["queries_in_flight"] == 1 and total["workers"] == 1


def test_a_reused_pid_writes_a_file_of_its_own(stats_dir):
    # the same pid, another start: two files, both counted
    _write(stats_dir, os.getpid(), 1, {"queries": 6})
    own = {"pid": os.getpid(), "queries": 2}
    _workers.publish(own)
    assert len(list(stats_dir.glob("*.json"))) == 2
    assert _workers.gather(own)["queries"] == 8


def test_unreadable_or_odd_files_are_skipped_never_a_failed_sum(stats_dir):
    (stats_dir / "123-1.json").write_text("[1, 2]")
    (stats_dir / "124-1.json").write_text("{not json")
    (stats_dir / "notapid.json").write_text("{}")
    (stats_dir / ".125-1.tmp").write_text("{}")
    own = {"pid": os.getpid(), "queries": 2}
    total = _workers.gather(own)
    assert total["queries"] == 2 and total["workers"] == 1
