"""``fab run --plan FILE``: a three-stage plan with Poisson arrivals through the real ``fab`` command on local
processes (devkit.localstack's Redis, simulator and wsproxy on a one-host inventory, as
tests/integration/test_workload_fab_run.py), and a plan whose threshold fails with abort."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from localinv import local_fab_inventory

pytestmark = pytest.mark.timeout(300)

REPO = Path(__file__).resolve().parents[2]
FAB = REPO / ".venv" / "bin" / "fab"
RESULTS = REPO / "results"

#: ramp up to 30 sessions in 4 s, hold 5 s, ramp down in 4 s
PLAN = """\
stages:
  - {duration: 4s, target: 30}
  - {duration: 5s, target: 30}
  - {duration: 4s, target: 0}
arrivals: poisson
seed: 11
queries: 1000
think_time: 0.2
tokens: 4
token_delay: 5
max_duration: 60
max_reconnect_attempts: 1
thresholds: ['success>=100%', 'lost==0']
tags: {scenario: three-stages, env: lab}
"""


@pytest.fixture(scope="module")
def inventory(tmp_path_factory):
    with local_fab_inventory(tmp_path_factory.mktemp("fabplan")) as inventory:
        yield inventory


@pytest.fixture
def run_ids(request):
    made: list[str] = []

    def make(suffix: str) -> str:
        rid = f"test-plan-{request.node.name[:30]}-{suffix}-{os.getpid()}"
        made.append(rid)
        return rid

    yield make
    for rid in made:
        shutil.rmtree(RESULTS / rid, ignore_errors=True)
        (RESULTS / f"{rid}.tar.gz").unlink(missing_ok=True)


def _fab_run(inventory: Path, plan: Path, run_id: str, *extra: str) -> subprocess.CompletedProcess:
    argv = [str(FAB), "run", "--inventory", str(inventory), "--plan", str(plan), "--skip-health", "--quiet"]
    return subprocess.run([*argv, "--run-id", run_id, *extra], cwd=REPO, capture_output=True, text=True, timeout=240)


def _intended_offsets(run_dir: Path, start_at: float) -> dict[int, float]:
    """session index -> its intended start, in seconds after the agreed start."""
    with open(run_dir / "sessions.csv", newline="") as fh:
        return {int(r["session_index"]): float(r["intended_at"]) - start_at for r in csv.DictReader(fh)}


def test_a_three_stage_poisson_plan_follows_its_stages_and_its_seed_repeats_the_schedule(inventory, run_ids, tmp_path):
    plan = tmp_path / "three.yml"
    plan.write_text(PLAN)
    first = run_ids("a")
    res = _fab_run(inventory, plan, first, "--tag", "env=ci")
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    out = RESULTS / first
    summary = json.loads((out / "summary.json").read_text())
    run = json.loads((out / "run.json").read_text())
    assert summary["tags"] == {"scenario": "three-stages", "env": "ci"}  # the command line's tag wins on env
    assert (out / "plan.yml").read_text() == PLAN and run["plan"]["values"]["queries"] == 1000
    assert summary["failed_sessions"] == 0 and summary["lost_tokens"] == 0

    stages = summary["stages"]
    assert [(s["start_s"], s["end_s"], s["target_to"]) for s in stages] == [(0, 4, 30), (4, 9, 30), (9, 13, 0)]
    for s in stages:
        assert s["tokens_per_s"] > 0 and s["delivery_p99_ms"] is not None and s["latency_p50_ms"] is not None
    # the active sessions per second follow the target curve within 5 % of the peak
    start_at = run["start_at"]
    with open(out / "timeline.csv", newline="") as fh:
        active = {int(r["second"]) - int(start_at): float(r["active_sessions"]) for r in csv.DictReader(fh)}
    hold = [active[t] for t in range(5, 9) if t in active]
    assert len(hold) >= 3 and all(abs(a - 30) <= 1.5 for a in hold), active
    assert active.get(2, 0) < 25 and active.get(11, 30) < 25, active  # it ramped, up and down
    assert max(active.values()) <= 30 * 1.05, active

    # the same seed draws the same arrival schedule
    second = run_ids("b")
    res = _fab_run(inventory, plan, second)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    run_b = json.loads((RESULTS / second / "run.json").read_text())
    a, b = _intended_offsets(out, start_at), _intended_offsets(RESULTS / second, run_b["start_at"])
    assert sorted(a) == sorted(b)  # the same sessions
    # each process times its schedule from the instant it actually started: a few ms after the agreed one, more
    # on a loaded machine (start_skew_s says how much); session g is process g % processes's, so per process the
    # two schedules are the same up to one constant, the difference of that process's two start skews
    skews = [summary["start_skew_s"], json.loads((RESULTS / second / "summary.json").read_text())["start_skew_s"]]
    processes = len(skews[0]["per_process"])
    assert processes >= 1
    bound = skews[0]["max_abs"] + skews[1]["max_abs"] + 0.03
    for proc in range(processes):
        mine = sorted(g for g in a if g % processes == proc)
        shift = b[mine[0]] - a[mine[0]]
        assert abs(shift) <= bound, (proc, shift, skews)
        assert max(abs(b[g] - a[g] - shift) for g in mine) < 0.03, [(g, a[g], b[g]) for g in mine]


def test_a_plan_whose_threshold_fails_with_abort_stops_the_run_early(inventory, run_ids, tmp_path):
    plan = tmp_path / "doomed.yml"
    plan.write_text(
        "clients: 4\nqueries: 1000\nthink_time: 0.1\ntokens: 3\ntoken_delay: 5\nmax_duration: 60\n"
        "thresholds: ['p99<1us']\nabort_on_fail: true\nabort_grace: 1\n"
    )
    rid = run_ids("abort")
    res = _fab_run(inventory, plan, rid, "--json")
    assert res.returncode == 1, (res.stdout + res.stderr)[-3000:]
    doc = json.loads(res.stdout)
    assert doc["outcome"] == "aborted" and doc["aborted"]["threshold"] == "p99<1us"
    assert doc["aborted"]["at_s"] < 20
