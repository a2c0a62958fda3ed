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


# -- tags: select and label runs ------------------------------------------------------------------------


def _tagged(run_id: str, tags: dict | None, started: float, shift: float = 0.0, *, in_record: bool = False) -> RunData:
    """A run started at *started* carrying *tags* at summary.json's top level (or only in its run record)."""
    run = _run(run_id, _latencies(300, shift, int(started)))
    run.summary["started_at"] = started
    if tags is not None:
        run.summary["run"]["tags"] = dict(tags)
        if not in_record:
            run.summary["tags"] = dict(tags)
    return run


def test_a_tag_filter_is_key_value_and_anything_else_is_refused_in_one_line():
    from kit.compare import parse_tag_filter

    assert parse_tag_filter(["build=abc", " env = lab ", "note=a=b", "empty="]) == {
        "build": "abc",
        "env": "lab",
        "note": "a=b",
        "empty": "",
    }
    assert parse_tag_filter([]) == {}
    for bad in ("build", "=abc", " =x"):
        with pytest.raises(CompareError) as info:
            parse_tag_filter(["env=lab", bad])
        assert str(info.value) == f"--tag {bad!r}: write key=value (e.g. --tag build=1.4.2)"


def test_a_runs_tags_come_from_its_summary_else_its_run_record():
    from kit.compare import run_tags

    assert run_tags(_tagged("a", {"build": "1"}, 1.0).summary) == {"build": "1"}
    assert run_tags(_tagged("a", {"build": 2}, 1.0, in_record=True).summary) == {"build": "2"}
    assert run_tags(_tagged("a", None, 1.0).summary) == {}
    assert run_tags({"tags": ["not", "a", "mapping"]}) == {}


def test_select_runs_keeps_those_carrying_every_tag_oldest_first(tmp_path):
    from kit.compare import select_runs

    results = tmp_path / "results"
    _write_run(results / "newest", _tagged("newest", {"build": "abc", "env": "lab"}, 3000.0))
    _write_run(results / "oldest", _tagged("oldest", {"build": "abc"}, 1000.0))
    _write_run(results / "other-build", _tagged("other-build", {"build": "def"}, 500.0))
    _write_run(results / "untagged", _tagged("untagged", None, 100.0))
    _write_run(results / "record-only", _tagged("record-only", {"build": "abc"}, 2000.0, in_record=True))
    (results / "logs-20260101").mkdir()  # no summary.json: not a run
    (results / "damaged").mkdir()
    (results / "damaged" / "summary.json").write_text("{not json")
    (results / "newest.tar.gz").write_bytes(b"")  # a tarball is not read
    (results / "cap.json").write_text(json.dumps({"tags": {"build": "abc"}}))
    assert [p.name for p in select_runs({"build": "abc"}, results)] == ["oldest", "record-only", "newest"]
    assert [p.name for p in select_runs({"build": "abc", "env": "lab"}, results)] == ["newest"]
    assert select_runs({"build": "zzz"}, results) == []
    assert select_runs({"build": "abc"}, tmp_path / "no-such-folder") == []
    # no tags wanted: every run, oldest first
    assert [p.name for p in select_runs({}, results)][:2] == ["untagged", "other-build"]


def test_label_names_each_column_by_a_tag_and_falls_back_to_the_run_id():
    from kit.compare import run_labels

    a = _tagged("run-a", {"build": "abc"}, 1.0)
    b = _tagged("run-b", {"build": "def"}, 2.0)
    c = _tagged("run-c", {"build": "abc"}, 3.0)
    d = _tagged("run-d", None, 4.0)
    assert run_labels([a, b, c, d], "build") == ["abc (1)", "def", "abc (2)", "run-d"]
    assert run_labels([a, b, c, d]) == ["run-a", "run-b", "run-c", "run-d"]
    res = compare_runs([a, b], label_tag="build")
    assert res["labels"] == ["abc", "def"] and res["tags"] == [{"build": "abc"}, {"build": "def"}]
    text = format_table(res)
    assert "Tags:\n  abc: build=abc\n  def: build=def\n" in text
    assert "tags.build: abc=abc | def=def" in text  # a tag that differs is a setting that differs
    untagged = format_table(compare_runs([_tagged("x", None, 1.0), _tagged("y", None, 2.0)]))
    assert "Tags:" not in untagged


def test_run_compare_selects_runs_by_tag_oldest_as_baseline_and_documents_them(tmp_path):
    results = tmp_path / "results"
    _write_run(results / "late", _tagged("late", {"build": "b2", "suite": "s"}, 2000.0, shift=40))
    _write_run(results / "early", _tagged("early", {"build": "b1", "suite": "s"}, 1000.0))
    _write_run(results / "stranger", _tagged("stranger", {"build": "b3"}, 1500.0))
    docs: list[dict] = []
    lines: list[str] = []
    rc = run_compare(
        [],
        ["p50>+10%"],
        None,
        results=results,
        say=lines.append,
        tags=["suite=s"],
        label="build",
        on_result=docs.append,
    )
    assert rc == 1 and len(docs) == 1
    doc = json.loads(json.dumps(docs[0]))  # what --json prints: plain JSON
    assert list(doc) == [
        "exit_status",
        "outcome",
        "failed_rules",
        "baseline",
        "runs",
        "figures",
        "fail_if",
        "settings",
        "method",
        "html_file",
    ]
    assert doc["exit_status"] == 1 and doc["outcome"] == "regression" and doc["failed_rules"] == ["p50>+10% on b2"]
    assert doc["baseline"] == "b1"
    assert [(r["run_id"], r["label"], r["baseline"], r["tags"]) for r in doc["runs"]] == [
        ("early", "b1", True, {"build": "b1", "suite": "s"}),
        ("late", "b2", False, {"build": "b2", "suite": "s"}),
    ]
    p50 = next(f for f in doc["figures"] if f["key"] == "p50")
    assert p50["runs"][0]["run"] == "b2" and p50["runs"][0]["verdict"] == "worse" and p50["runs"][0]["diff"] > 30
    assert (results / "compare-b1-vs-b2.html").is_file() and doc["html_file"] == str(results / "compare-b1-vs-b2.html")
    assert "tags: build=b1, suite=s" in (results / "compare-b1-vs-b2.html").read_text()
    assert any(line.startswith("FAIL") and "p50>+10%" in line for line in lines)


def test_run_compare_refuses_too_few_tagged_runs_an_unknown_label_and_nothing_to_compare(tmp_path):
    results = tmp_path / "results"
    a = _write_run(results / "a", _tagged("a", {"build": "b1"}, 1000.0))
    b = _write_run(results / "b", _tagged("b", {"build": "b2"}, 2000.0))
    quiet = {"results": results, "say": lambda _line: None}
    with pytest.raises(CompareError) as info:
        run_compare([], [], None, tags=["build=b1"], **quiet)
    assert str(info.value).startswith(f"--tag build=b1: 1 run(s) under {results}/ carry it (a): compare needs two")
    with pytest.raises(CompareError, match=r"1 run\(s\) of the runs named carry it \(b\)"):
        run_compare([str(a), str(b)], [], None, tags=["build=b2"], **quiet)  # named runs are filtered too
    with pytest.raises(CompareError, match=r"--label env: no run carries the tag 'env'.*\(build\)"):
        run_compare([str(a), str(b)], [], None, label="env", **quiet)
    with pytest.raises(CompareError, match="give the runs to compare"):
        run_compare([], [], None, **quiet)
    with pytest.raises(CompareError, match="--tag 'b1': write key=value"):
        run_compare([], [], None, tags=["b1"], **quiet)
    assert not list(results.glob("compare-*.html"))  # refused before any work


def test_idle_cpu_per_session_is_compared_when_a_run_has_it_and_left_out_when_none_has():
    def with_idle(run: RunData, per_host: float | None) -> RunData:
        for e in run.summary["components"]:
            e["idle_us_per_session_s"] = per_host
        return run

    lat = _latencies(300, 0, 1)
    plain = compare_runs([_run("a", lat), _run("b", lat)])
    assert not [r for r in plain["rows"] if r["key"].startswith("idle_")]  # no idle window in either run
    [rule] = [parse_fail_if("idle_wsproxy>+10%")]
    assert [v["failed"] for v in evaluate_fail_if(plain, [rule])] == [None]  # figure missing, not a crash
    res = compare_runs([with_idle(_run("a", lat), 1.5), with_idle(_run("b", lat), 2.0), _run("c", lat)])
    row = {r["key"]: r for r in res["rows"]}["idle_wsproxy"]
    assert row["base"] == 3.0 and row["unit"] == "us/s/session"  # the two wsproxy hosts added
    assert row["runs"][0]["value"] == 4.0 and row["runs"][1]["value"] is None
    assert [v["failed"] for v in evaluate_fail_if(res, [rule])] == [True, None]
    assert "idle CPU wsproxy" in format_table(res)
