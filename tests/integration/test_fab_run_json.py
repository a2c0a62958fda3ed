"""``fab run`` as a script and a person see it: ``--json`` and its exit status, the live view on a terminal.

Real runs through the real ``fab`` command: Redis, the simulator and the wsproxy (devkit.localstack, free
loopback ports) stand in for the deployed stack on a one-host inventory reached without SSH
(``ansible_connection: local``; the "haproxy" ports point straight at the simulator and the wsproxy),
as in tests/integration/test_report_html.py.  Runs are small (4 sessions x 2 queries).
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from localinv import local_fab_inventory

pytestmark = pytest.mark.timeout(240)

REPO = Path(__file__).resolve().parents[2]
FAB = REPO / ".venv" / "bin" / "fab"
RESULTS = REPO / "results"


@pytest.fixture(scope="module")
def inventory(tmp_path_factory):
    with local_fab_inventory(tmp_path_factory.mktemp("fabjson")) as inventory:
        yield inventory


@pytest.fixture
def run_id(request):
    rid = f"test-fabjson-{request.node.name[:40].replace('[', '-').rstrip(']')}-{os.getpid()}"
    yield rid
    shutil.rmtree(RESULTS / rid, ignore_errors=True)
    (RESULTS / f"{rid}.tar.gz").unlink(missing_ok=True)


def _fab_run(inventory: Path, run_id: str, *extra: str, queries: int = 2) -> list[str]:
    return [
        str(FAB),
        "run",
        "--inventory",
        str(inventory),
        "--clients",
        "4",
        "--queries",
        str(queries),
        "--think-time",
        "0.5",
        "--skip-health",
        "--max-duration",
        "60",
        "--run-id",
        run_id,
        *extra,
    ]


@pytest.mark.parametrize("threshold, rc, outcome", [("success>=100%", 0, "pass"), ("p50<1us", 1, "threshold_failed")])
def test_fab_run_json_prints_only_the_summary_as_json_on_stdout_and_exits_by_it(
    inventory, run_id, threshold, rc, outcome
):
    res = subprocess.run(
        [*_fab_run(inventory, run_id, "--threshold", threshold, "--json")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert res.returncode == rc, res.stderr[-3000:]
    doc = json.loads(res.stdout)  # the whole of stdout is one JSON document
    assert doc["exit_status"] == rc and doc["outcome"] == outcome and doc["run_id"] == run_id
    assert Path(doc["results_dir"]) == RESULTS / run_id and Path(doc["tarball"]).is_file()
    summary = doc["summary"]
    assert summary["total_queries"] == 8 and summary["successful_queries"] == 8 and summary["partial"] is False
    assert summary["run"]["thresholds"][0]["threshold"] == threshold
    # the defaults judge the run too, each on a metric the user's threshold does not name, and say so
    judged = [(t["threshold"], t["default"]) for t in summary["run"]["thresholds"]]
    assert judged == [
        (threshold, False),
        *([("success>=99%", True)] if threshold.startswith("p50") else []),
        ("lost==0", True),
    ]
    assert summary["run"]["config"]["default_thresholds"] is True
    assert (f"FAILED threshold {threshold}: actual " in res.stderr) is (rc == 1)
    assert summary["reconnect_limit"]["rate_per_process"] == 200.0  # the generators' reconnect bucket, as used
    assert summary == json.loads((RESULTS / run_id / "summary.json").read_text())
    # every human line went to stderr: the plan, the plain live lines (stderr is no terminal), the report
    assert f"run {run_id}: 4 clients x 2 queries" in res.stderr
    assert any(line.lstrip().startswith("t=") and "p99=" in line for line in res.stderr.splitlines())
    assert f"results: {RESULTS / run_id}" in res.stderr


def test_on_a_terminal_fab_run_redraws_its_live_table_in_place(inventory, run_id):
    master, slave = pty.openpty()
    os.set_blocking(master, False)
    env = {**os.environ, "COLUMNS": "140", "LINES": "50", "TERM": "xterm-256color"}
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen(
        _fab_run(inventory, run_id, queries=6), cwd=REPO, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, env=env
    )
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + 180
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: every writer of the terminal has closed it
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    out = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 0, out[-3000:]
    assert "tokens/s" in out and "queries/s" in out and "loop lag p99 ms" in out
    assert re.search(r"│ local +│ +4 │ +[\d,]+ │ .* running", out), "no row of the generator with its figures"
    # drawn in place: the cursor goes up over the last table and erases it, more than once
    assert out.count("\x1b[2K") >= 2 and "\x1b[1A" in out
    assert "t=" in out and not any(line.lstrip().startswith("t=") and "active=" in line for line in out.splitlines())
    # what follows the view prints as usual below its last state
    assert out.index("generators reporting") < out.index(f"results: {RESULTS / run_id}")


def test_abort_on_fail_stops_a_doomed_run_within_two_seconds_and_records_why(inventory, run_id):
    """20 queries a session would take about 20 s; p50<1ms fails with the first answers, judged after a 2 s grace."""
    t0 = time.time()
    res = subprocess.run(
        [
            *_fab_run(
                inventory,
                run_id,
                "--threshold",
                "p50<1ms",
                "--abort-on-fail",
                "--abort-grace",
                "2",
                "--json",
                queries=20,
            )
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    wall = time.time() - t0
    assert res.returncode == 1, res.stderr[-3000:]
    doc = json.loads(res.stdout)
    assert doc["outcome"] == "aborted" and doc["failed_thresholds"][0] == "p50<1ms"
    aborted = doc["summary"]["run"]["aborted"]
    assert aborted["threshold"] == "p50<1ms" and 2 <= aborted["at_s"] <= 5, aborted
    assert "ABORTING at t=" in res.stderr and "ABORTED RUN" in res.stderr
    report = (RESULTS / run_id / "report.txt").read_text()
    assert "** ABORTED **" in report and f"Aborted       at {aborted['at_s']:g} s: threshold p50<1ms" in report
    summary = doc["summary"]
    assert summary["partial"] is False and 0 < summary["total_queries"] < 80
    # every query the generators recorded ended within 2 s of the abort (stopped, not run to its end)
    abort_wall = summary["run"]["start_at"] + aborted["at_s"]
    with (RESULTS / run_id / "queries.csv").open() as f:
        import csv

        ends = [float(r["submit_at"]) + float(r["latency_ms"]) / 1000 for r in csv.DictReader(f) if r["latency_ms"]]
    assert ends and max(ends) <= abort_wall + 2.0, max(ends) - abort_wall
    assert wall < 60
