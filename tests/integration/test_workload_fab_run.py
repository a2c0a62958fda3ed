"""``fab run`` carries the run's workload to its generators and records it (a real run through the real
``fab`` command on local processes, as tests/integration/test_fab_run_json.py: Redis, the simulator and
the wsproxy from devkit.localstack stand in for the deployed stack on a one-host inventory)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from localinv import local_fab_inventory

pytestmark = pytest.mark.timeout(240)

REPO = Path(__file__).resolve().parents[2]
FAB = REPO / ".venv" / "bin" / "fab"
RESULTS = REPO / "results"


@pytest.fixture(scope="module")
def inventory(tmp_path_factory):
    with local_fab_inventory(tmp_path_factory.mktemp("fabworkload")) as inventory:
        yield inventory


@pytest.fixture
def run_id(request):
    rid = f"test-workload-{request.node.name[:40]}-{os.getpid()}"
    yield rid
    shutil.rmtree(RESULTS / rid, ignore_errors=True)
    (RESULTS / f"{rid}.tar.gz").unlink(missing_ok=True)


def test_fab_run_sends_its_workload_options_and_mix_and_records_them(inventory, run_id, tmp_path):
    mix = tmp_path / "mix.yml"
    mix.write_text("seed: 3\nclasses:\n  short: {weight: 1, tokens: 4}\n  long: {weight: 1, tokens: 45, ttft_ms: 10}\n")
    res = subprocess.run(
        [
            str(FAB),
            "run",
            "--inventory",
            str(inventory),
            "--clients",
            "6",
            "--queries",
            "1",
            "--skip-health",
            "--max-duration",
            "60",
            "--run-id",
            run_id,
            "--token-delay",
            "2",
            "--max-reconnect-attempts",
            "1",
            "--workload",
            str(mix),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=200,
    )
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    out = RESULTS / run_id
    run = json.loads((out / "run.json").read_text())
    argv = [a for s in run["slots"] for a in s["argv"]]
    assert "--workload" in argv and "--settings" in argv and run["config"]["token_delay_ms"] == 2.0
    for s in run["slots"]:  # each generator's settings file, collected with its output
        settings = json.loads((out / "generators" / s["label"] / "client-settings.json").read_text())
        assert settings["token_delay_ms"] == 2.0 and settings["max_reconnect_attempts"] == 1
        assert settings["clients"] == s["clients"] and "workload_seed" in settings
    s = json.loads((out / "summary.json").read_text())
    w = s["workload"]
    assert w["source"] == str(mix) and w["seed"] == 3 and w["sessions"] == 6
    counts = {n: c["sessions"] for n, c in w["classes"].items()}
    with open(out / "queries.csv", newline="") as fh:
        assert Counter(q["tokens"] for q in csv.DictReader(fh)) == Counter({"4": counts["short"], "45": counts["long"]})
    for c in w["classes"].values():  # the run's pace, the class's length; the simulator's jitter default
        if c["sessions"]:
            assert c["effective"]["token_delay_ms"] == 2.0 and c["effective"]["token_jitter_ms"] == 0.0
    assert json.loads((out / "meta.json").read_text())["workload"] == w
    assert (out / "workload.yml").read_text() == mix.read_text()
    report = (out / "report.txt").read_text()
    assert "Workload      short (50% by weight)" in report and f"Workload file {mix} (seed 3)" in report
    assert "<h2>Workload</h2>" in (out / "report.html").read_text()
