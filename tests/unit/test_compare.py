"""kit.compare: the bootstrap noise test, --fail-if rules, the side-by-side settings and the exit status."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest

from kit._charts import RunData
from kit.compare import (
    CompareError,
    bootstrap_diff_ci,
    compare_runs,
    evaluate_fail_if,
    format_table,
    parse_fail_if,
    run_compare,
    side_by_side,
)
from kit.metrics import Histogram


def _latencies(n: int, shift: float, seed: int) -> list[float]:
    rng = random.Random(seed)
    return [round(100.0 + shift + rng.expovariate(1 / 20.0), 3) for _ in range(n)]


def _summary(
    run_id: str, lat: list[float], *, tokens: int = 1000, lost: int = 0, clients: int = 10, build: dict | None = None
) -> dict:
    s = sorted(lat)

    def pct(p: float) -> float:
        return s[max(0, -(-len(s) * p // 100) - 1)]

    run = {
        "run_id": run_id,
        "start_at": 1000.0,
        "config": {"clients": clients, "queries": 3, "chaos": None},
        "versions": {"kit_controller": "0.1.0", "argv": ["fab", run_id]},
    }
    if build:
        run["build"] = build
    return {
        "run_id": run_id,
        "started_at": 1000.0,
        "success_rate": 100.0,
        "total_queries": len(lat),
        "total_tokens": tokens,
        "tps": tokens / 10,
        "qps": len(lat) / 10,
        "lost_tokens": lost,
        "total_errors": 0,
        "total_reconnect_attempts": 0,
        "latency_ms": {"p50": pct(50), "p95": pct(95), "p99": pct(99)},
        "ttft_ms": {"p50": 5.0, "p99": 9.0},
        "delivery_latency_ms": {"p50": 1.0, "p99": 3.0},
        "components": [
            {"component": "wsproxy", "host": "h1", "us_per_token": 20.0},
            {"component": "wsproxy", "host": "h2", "us_per_token": 5.0},
        ],
        "run": run,
    }


def _run(run_id: str, lat: list[float], **kw) -> RunData:
    queries = [
        {"intended_at": f"{1000 + i * 0.01:.3f}", "latency_ms": str(v), "ttft_ms": "5.0", "status": "ok"}
        for i, v in enumerate(lat)
    ]
    queries.append({"intended_at": "1000", "latency_ms": "", "ttft_ms": "", "status": "timeout"})
    return RunData(Path(run_id), _summary(run_id, lat, **kw), [], queries, {}, {})


# -- the bootstrap --------------------------------------------------------------------------------------


def test_bootstrap_interval_contains_zero_for_two_samples_of_one_distribution():
    lo, hi = bootstrap_diff_ci(_latencies(2000, 0, 1), _latencies(2000, 0, 2), 99)
    assert lo < 0 < hi


def test_bootstrap_interval_excludes_zero_for_a_real_shift_and_brackets_it():
    lo, hi = bootstrap_diff_ci(_latencies(2000, 0, 1), _latencies(2000, 15, 2), 50)
    assert 0 < lo < 15 < hi < 30


def test_bootstrap_is_seeded_and_reproducible():
    a, b = _latencies(500, 0, 3), _latencies(500, 2, 4)
    assert bootstrap_diff_ci(a, b, 95) == bootstrap_diff_ci(a, b, 95)
    assert bootstrap_diff_ci(a, b, 95, seed=1) != bootstrap_diff_ci(a, b, 95, seed=2)


def test_beta_order_statistic_matches_a_brute_force_bootstrap():
    """The O(1) draw of a resample's percentile has the distribution of resampling n values for real."""
    values = sorted(_latencies(300, 0, 5))
    n, k = len(values), 297  # p99 by nearest rank
    rng = random.Random(7)
    brute = sorted(sorted(rng.choice(values) for _ in range(n))[k - 1] for _ in range(1500))
    lo, hi = bootstrap_diff_ci([0.0], values, 99, resamples=1500)  # a constant baseline: the CI is b's own
    assert lo == pytest.approx(brute[int(0.025 * 1500)], rel=0.05)
    assert hi == pytest.approx(brute[int(0.975 * 1500) - 1], rel=0.05)


def test_bootstrap_over_a_histogram_agrees_with_raw_values():
    a, b = _latencies(3000, 0, 8), _latencies(3000, 10, 9)
    ha, hb = Histogram("us"), Histogram("us")
    ha.record_many(int(v * 1000) for v in a)
    hb.record_many(int(v * 1000) for v in b)
    raw = bootstrap_diff_ci(a, b, 50)
    hist = bootstrap_diff_ci(ha, hb, 50)
    assert hist[0] == pytest.approx(raw[0], abs=0.5) and hist[1] == pytest.approx(raw[1], abs=0.5)


def test_bootstrap_without_values_is_none():
    assert bootstrap_diff_ci([], [1.0], 50) is None
    assert bootstrap_diff_ci(Histogram("us"), [1.0], 50) is None


# -- the comparison ------------------------------------------------------------------------------------


def test_compare_marks_a_real_latency_regression_worse_and_counts_as_not_testable():
    base = _run("a", _latencies(1500, 0, 1))
    slow = _run("b", _latencies(1500, 40, 2), tokens=1200)
    same = _run("c", _latencies(1500, 0, 3))
    res = compare_runs([base, slow, same])
    rows = {r["key"]: r for r in res["rows"]}
    assert res["labels"] == ["a", "b", "c"]
    assert rows["p50"]["runs"][0]["verdict"] == "worse" and rows["p50"]["runs"][0]["ci"][0] > 0
    assert rows["p99"]["runs"][1]["verdict"] == "noise"
    assert rows["tokens"]["runs"][0] == {"value": 1200.0, "diff": 200.0, "rel": 0.2, "ci": None, "verdict": "n/a"}
    assert rows["tokens"]["testable"] is False and rows["p99"]["testable"] is True
    # CPU per token adds the component's hosts
    assert rows["cpu_wsproxy"]["base"] == 25.0
    # a figure a run lacks is "no data", not a crash
    assert rows["delivery_p50"]["runs"][0]["verdict"] == "no data"
    text = format_table(res)
    assert "latency p50" in text and "worse [" in text and "not testable" in text


def test_compare_needs_two_runs():
    with pytest.raises(CompareError, match="at least two runs"):
        compare_runs([_run("a", [1.0])])


def test_side_by_side_highlights_only_real_differences():
    a = _run(
        "a",
        [1.0],
        clients=10,
        build={"wsproxy": {"kind": "artifact", "sha256": ["ab" * 32], "versions": ["1.2"], "commands": ["/x"]}},
    )
    b = _run("b", [1.0], clients=20)
    b.summary["run"]["config"]["chaos"] = []  # unset vs empty: the same
    rows = {r["key"]: r for r in side_by_side([a, b])}
    assert rows["config.clients"]["differs"] and rows["config.clients"]["values"] == [10, 20]
    assert not rows["config.chaos"]["differs"]
    assert not rows["config.queries"]["differs"]
    assert rows["build.wsproxy"]["differs"]
    assert rows["build.wsproxy"]["values"] == ["artifact 1.2 sha256:abababababab", "not recorded"]
    assert not any(k.endswith("argv") or k.endswith("run_id") for k in rows)


# -- --fail-if -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, base, value, failed",
    [
        ("p99>+10%", 100.0, 111.0, True),
        ("p99>+10%", 100.0, 109.0, False),
        ("tps<-5%", 1000.0, 940.0, True),
        ("tps<-5%", 1000.0, 960.0, False),
        ("lost>0", 0.0, 3.0, True),
        ("lost>0", 5.0, 0.0, False),
        ("p99>+20ms", 100.0, 121.0, True),
        ("p99>2s", 100.0, 1999.0, False),
        ("success<99.9%", 100.0, 99.5, True),
        ("errors>+0%", 0.0, 1.0, True),
    ],
)
def test_fail_if_rules(text, base, value, failed):
    assert parse_fail_if(text).check(base, value)[0] is failed


@pytest.mark.parametrize(
    "text, says",
    [
        ("p99 bigger 3", "is not <figure><op><value>"),
        ("p42>+10%", "unknown figure 'p42'"),
        ("p99>10", "is a time, give a unit"),
        ("lost>3ms", "not a time"),
        ("tps<5%", "not a percentage"),
        ("success<99", "is a percentage"),
    ],
)
def test_bad_fail_if_rules_say_how_to_write_them(text, says):
    with pytest.raises(CompareError, match=says.replace("(", r"\(")):
        parse_fail_if(text)


def test_a_missing_figure_fails_the_rule_rather_than_passing_it():
    res = compare_runs([_run("a", [1.0, 2.0]), _run("b", [1.0, 2.0])])
    res["rows"][[r["key"] for r in res["rows"]].index("lost")]["runs"][0]["value"] = None
    checks = evaluate_fail_if(res, [parse_fail_if("lost>0")])
    assert checks[0]["failed"] is None


def _write_run(d: Path, run: RunData) -> Path:
    d.mkdir(parents=True)
    (d / "summary.json").write_text(json.dumps(run.summary))
    with open(d / "queries.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["intended_at", "latency_ms", "ttft_ms", "status"])
        w.writeheader()
        w.writerows(run.queries)
    return d


def test_run_compare_exit_status_and_page(tmp_path):
    a = _write_run(tmp_path / "a", _run("a", _latencies(400, 0, 1)))
    b = _write_run(tmp_path / "b", _run("b", _latencies(400, 50, 2), lost=2))
    lines: list[str] = []
    page = tmp_path / "cmp.html"
    assert run_compare([str(a), str(b)], ["p99>+1000%"], page, say=lines.append) == 0
    assert page.exists() and "<canvas" not in page.read_text() and 'id="chart-specs"' in page.read_text()
    assert run_compare([str(a), str(b)], ["lost>0"], page, say=lines.append) == 1
    assert any(line.startswith("FAIL") and "lost>0" in line for line in lines)
    with pytest.raises(CompareError, match="not <figure><op><value>"):
        run_compare([str(a), str(b)], ["p99 > ten"], page, say=lines.append)
    with pytest.raises(CompareError, match="no run"):
        run_compare([str(a), str(tmp_path / "missing")], [], page, say=lines.append)


def test_runs_sharing_a_run_id_are_labelled_apart_and_drawn_as_two_series(tmp_path):
    """A run against a copy of itself (or one run id in two results directories) is two runs, not one."""
    from kit._charts import compare_chart_specs
    from kit.compare import run_labels, write_compare_html

    a = _run("run-a", _latencies(200, 0, 1))
    copy = _run("run-a", _latencies(200, 0, 1))
    b = _run("run-b", _latencies(200, 0, 2))
    assert run_labels([a, copy, b]) == ["run-a (1)", "run-a (2)", "run-b"]
    assert run_labels([a, b]) == ["run-a", "run-b"]
    res = compare_runs([a, copy])
    assert res["labels"] == ["run-a (1)", "run-a (2)"]
    assert "run-a (1)  run-a (2)" in format_table(res)
    specs = compare_chart_specs(list(zip(res["labels"], [a, copy])))
    assert specs and all([z["label"] for z in s["series"]] == ["run-a (1)", "run-a (2)"] for s in specs)
    # even when a caller passes one label twice, each run keeps its own series
    assert all(len(s["series"]) == 2 for s in compare_chart_specs([("x", a), ("x", copy)]))
    page = write_compare_html(tmp_path / "cmp.html", res, [a, copy]).read_text()
    assert "<th>run-a (1)</th>" in page and "<th>run-a (2)</th>" in page
