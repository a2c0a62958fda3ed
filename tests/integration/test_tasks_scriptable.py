"""Every fab task as a script sees it, through the real ``fab`` command (kit.fab, the kit's entry point).

``--help`` on each task (after a run name too), a mistyped option or task exit 2 with one line naming it and
the task's usage, ``--json`` on ``fab analyze`` and ``fab compare`` (stdout holds exactly one JSON document,
every human line is on stderr), and runs selected and labelled by their tags.  The runs are synthetic
(devkit.synthrun: the client's own output code, no load, no services), written under ``results/`` with a tag
of this test process's own so no other run is selected, and removed afterwards.  fab capacity's document is
tested at unit level (tests/unit/test_fabfile.py, test_capacity.py): a real search takes minutes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from devkit.synthrun import add_run_record, write_generator_output

pytestmark = pytest.mark.timeout(300)

REPO = Path(__file__).resolve().parents[2]
FAB = REPO / ".venv" / "bin" / "fab"
RESULTS = REPO / "results"
TASKS = ["analyze", "capacity", "compare", "deploy", "down", "lab-down", "lab-up", "logs", "plan", "run", "status"]
#: this process's tag: selects the runs written here and no other
SUITE = f"scriptable-{os.getpid()}"


def fab(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(FAB), *argv], cwd=REPO, capture_output=True, text=True, timeout=120)


def one_document(res: subprocess.CompletedProcess) -> dict:
    """The JSON document that is the whole of *res*'s stdout (as --json prints it: indented, one newline)."""
    doc = json.loads(res.stdout)
    assert res.stdout == json.dumps(doc, indent=2, default=str) + "\n", res.stdout[:500]
    return doc


@pytest.fixture(scope="module")
def runs():
    """Three tagged synthetic runs under results/, oldest first: (run id, tags) each."""
    made = []
    specs = [("b1", {"env": "lab"}), ("b2", {}), ("b1", {})]
    try:
        for i, (build, extra) in enumerate(specs):
            rid = f"test-scriptable-{os.getpid()}-{i}"
            d = RESULTS / rid
            made.append(d)
            write_generator_output(d, sessions=20, queries=2, tokens=5, think_s=0.5, ramp=20, run_id=rid, seed=i)
            summary = add_run_record(d, run_id=rid)
            tags = {"suite": SUITE, "build": build, **extra}
            summary["tags"] = summary["run"]["tags"] = tags
            summary["started_at"] += 60 * i  # the synthetic runs share one start: set them apart, in this order
            (d / "summary.json").write_text(json.dumps(summary))
        yield [(d.name, json.loads((d / "summary.json").read_text())["tags"]) for d in made]
    finally:
        for d in made:
            shutil.rmtree(d, ignore_errors=True)


# -- --help ------------------------------------------------------------------------------------------------


def test_the_tasks_are_the_ones_tested_here():
    res = fab("--list")
    assert res.returncode == 0, res.stderr
    listed = [m[1] for m in re.finditer(r"^  (\S+)", res.stdout, re.M)]  # continuation lines are indented more
    assert sorted(listed) == TASKS


@pytest.mark.parametrize("task", TASKS)
def test_help_after_any_task_prints_its_usage_and_options(task):
    res = fab(task, "--help")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(f"Usage: fab [--core-opts] {task} ") and "\nOptions:\n" in res.stdout
    assert res.stderr == ""


@pytest.mark.parametrize(
    "argv, shows",
    [
        (["analyze", "some-run", "--help"], "--tag"),
        (["compare", "a,b", "-h"], "--label=STRING"),
        (["plan", "500", "--help"], "--from-run=STRING"),
        (["--help", "capacity"], "--slo"),
    ],
)
def test_help_after_a_positional_value_is_still_the_tasks_help(argv, shows):
    res = fab(*argv)
    assert res.returncode == 0 and shows in res.stdout, res.stdout + res.stderr


def test_the_load_clients_analyze_has_help_and_refuses_an_unknown_option_with_exit_2():
    ok = subprocess.run(
        [sys.executable, "-m", "kit.client", "analyze", "--help"], capture_output=True, text=True, timeout=60
    )
    assert ok.returncode == 0 and ok.stdout.startswith("usage: python -m kit.client analyze") and "PATH" in ok.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "kit.client", "analyze", "--nope", "x"], capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--nope" in bad.stderr, bad.stderr


# -- a bad command line: exit 2, one line -------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, line",
    [
        (
            ["run", "--think-tim", "5"],
            "run: no option '--think-tim' (did you mean --think-time?); usage: fab run [--options]",
        ),
        (["analyze", "--tags", "a=b"], "analyze: no option '--tags' (did you mean --tag?); usage: fab analyze [RUN]"),
        (
            ["compare", "a,b", "--fail", "x"],
            "compare: no option '--fail' (did you mean --fail-if?); usage: fab compare",
        ),
        (["capacity", "--clients", "5"], "capacity: no option '--clients'; usage: fab capacity [--options]"),
        (["run", "--clients"], "run: --clients needs a value; usage: fab run [--options]"),
        (["compre", "a,b"], "fab: no task 'compre' (did you mean compare?): fab --list lists the tasks"),
        (["--help", "nosuch"], "fab: no task 'nosuch': fab --list lists the tasks"),
    ],
)
def test_an_unknown_option_or_task_exits_2_with_one_line_and_the_usage(argv, line):
    res = fab(*argv)
    assert res.returncode == 2, res.stderr
    assert res.stderr.startswith(line) and res.stderr.count("\n") == 1, res.stderr
    assert res.stdout == "" and "Traceback" not in res.stderr


@pytest.mark.parametrize(
    "argv, line",
    [
        (["analyze", "--tag", "build"], "analyze: --tag 'build': write key=value"),
        (["compare", "--tag", "build"], "compare: --tag 'build': write key=value"),
        (["compare"], "compare: give the runs to compare"),
        (["analyze"], "analyze: give a run"),
        (["analyze", "no-such-run-anywhere", "--json"], "analyze: no run 'no-such-run-anywhere'"),
        (["plan"], "plan: --clients: give the sessions to plan for"),
    ],
)
def test_bad_values_and_missing_runs_exit_2_with_one_line_and_nothing_on_stdout(argv, line):
    res = fab(*argv)
    assert res.returncode == 2 and res.stderr.startswith(line) and res.stderr.count("\n") == 1, res.stderr
    assert res.stdout == ""


# -- --json and tags ----------------------------------------------------------------------------------------


def test_analyze_json_of_the_newest_run_carrying_the_tags(runs):
    res = fab("analyze", "--tag", f"suite={SUITE}", "--tag", "build=b1", "--json")
    assert res.returncode == 0, res.stderr
    doc = one_document(res)
    newest, tags = runs[2]
    assert doc["exit_status"] == 0 and doc["run_id"] == newest and doc["tags"] == tags
    assert doc["results_dir"] == str(RESULTS / newest) and doc["status"] == "passed"
    assert doc["analysis"]["queries"] == 40 and doc["analysis"]["latency_ms"]["p99"] > 0
    assert "_latencies" not in doc["analysis"] and doc["summary"]["tags"] == tags
    # the same run by name; without --json the report and the analysis, with the run's tags shown
    text = fab("analyze", newest)
    assert text.returncode == 0, text.stderr
    assert f"tags: build=b1, suite={SUITE}" in text.stdout and "Latency histogram" in text.stdout
    # a run named with a tag it does not carry
    bad = fab("analyze", newest, "--tag", "build=b2")
    assert bad.returncode == 2 and f"run {newest!r} does not carry --tag build=b2" in bad.stderr


def test_compare_json_selects_the_tagged_runs_oldest_first_and_labels_them_by_a_tag(runs, tmp_path):
    page = tmp_path / "cmp.html"
    res = fab("compare", "--tag", f"suite={SUITE}", "--label", "build", "--html", str(page), "--json")
    assert res.returncode == 0, res.stderr
    doc = one_document(res)
    assert [r["run_id"] for r in doc["runs"]] == [rid for rid, _ in runs]  # oldest first: the baseline
    assert [r["label"] for r in doc["runs"]] == ["b1 (1)", "b2", "b1 (2)"] and doc["baseline"] == "b1 (1)"
    assert [r["tags"] for r in doc["runs"]] == [tags for _, tags in runs]
    assert doc["outcome"] == "pass" and doc["failed_rules"] == [] and doc["html_file"] == str(page)
    assert {f["key"] for f in doc["figures"]} >= {"p99", "tps", "lost"}
    # the human lines went to stderr: the table with the tags
    assert "figure" in res.stderr and "Tags:\n  b1 (1): build=b1, env=lab" in res.stderr
    assert f"tags: build=b1, env=lab, suite={SUITE}" in page.read_text()


def test_compare_json_of_a_failed_rule_exits_1_with_the_document(runs, tmp_path):
    names = ",".join(rid for rid, _ in runs[:2])
    res = fab("compare", names, "--fail-if", "tokens>-100%", "--html", str(tmp_path / "c.html"), "--json")
    assert res.returncode == 1, res.stderr
    doc = one_document(res)
    assert doc["exit_status"] == 1 and doc["outcome"] == "regression"
    assert doc["failed_rules"] == [f"tokens>-100% on {runs[1][0]}"]
    assert "FAIL" in res.stderr


def test_compare_refuses_tags_too_few_runs_carry(runs):
    res = fab("compare", "--tag", f"suite={SUITE}", "--tag", "build=b2")
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.startswith(
        f"compare: --tag build=b2, suite={SUITE}: 1 run(s) under {RESULTS}/ carry it ({runs[1][0]})"
    )
