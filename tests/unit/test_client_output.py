"""Result files, the merge proof, analyze, and the overload verdict."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest

from kit.client import merge_outputs, overload_verdict
from kit.client._accounting import Recorder, SessionRecord
from kit.client._analyze import analyze, exact_percentile, format_report
from kit.client._output import reconnect_limit, write_outputs
from kit.metrics import Histogram

MS = 1_000_000


def simulate(recs: list[Recorder], sessions: int, seed: int) -> list[float]:
    """Record the same synthetic sessions into recs (round robin); return every latency in ms."""
    rng = random.Random(seed)
    latencies = []
    for i in range(sessions):
        rec = recs[i % len(recs)]
        s = SessionRecord(i, 0, 0)
        s.session_id = f"s{i}"
        s.create_us = rng.randint(500, 50_000)
        s.connect_us = rng.randint(500, 80_000)
        if i % 7 == 3:
            s.reconnect_attempts, s.reconnects_ok = 2, 1
        for k in range(3):
            submit = rng.randint(0, 10_000) * MS
            q = rec.new_query(s.session_id, k, submit, submit, None)
            q.query_id = f"q{i}-{k}"
            q.expected = n = rng.randint(1, 30)
            t = submit + rng.randint(1, 900) * MS
            seqs = [x for x in range(n) if not (i % 11 == 5 and x == 2)]  # some lost tokens
            for seq in seqs:
                q.token(seq, t - rng.randint(0, 5_000_000), t, t)
                t += rng.randint(10_000, 90_000_000)
            if i % 13 != 4:  # some queries never get done
                q.done(n, t)
                latencies.append((t - submit) / 1e6)
                q.finish()
            else:
                q.finish(status="timeout", error="no done")
                rec.error("query_timeout")
            if q.status == "lost_tokens":
                rec.error("lost_tokens")
            (
                s.__setattr__("queries_ok", s.queries_ok + 1)
                if q.status == "ok"
                else s.__setattr__("queries_failed", s.queries_failed + 1)
            )
            rec.query_finished(q)
        s.status = "ok" if not s.queries_failed else "failed"
        rec.session_finished(s)
    for j, rec in enumerate(recs):
        rec.hists["loop_lag"].record(100 + j)
        rec.sample_timeline(1000)
        rec.cpu_samples.append(10.0)
    return latencies


def run_info(pid: int, start: float = 100.0, end: float = 160.0) -> dict:
    return {
        "host": "h",
        "pid": pid,
        "start": start,
        "end": end,
        "start_skew_s": 0.001,
        "cpu_percent_peak": 10.0,
        "cpu_percent_mean": 10.0,
        "loop_lag_p99_ms": 0.1,
        "loop_lag_max_ms": 0.1,
        "generator_overloaded": False,
        "overload_reason": "",
    }


def comparable(summary: dict) -> dict:
    s = dict(summary)
    s.pop("generator")
    s.pop("start_skew_s")
    return s


def test_merging_three_processes_equals_one_process_recording_everything(tmp_path: Path):
    whole = Recorder()
    lat = simulate([whole], 300, seed=5)
    one = write_outputs(tmp_path / "one", whole, run_info(1), {}, run_id="r", model="closed")

    parts = [Recorder() for _ in range(3)]
    simulate(parts, 300, seed=5)
    dirs = []
    for j, rec in enumerate(parts):
        d = tmp_path / f"proc-{j}"
        # each process ran for part of the window; the union spans all of it
        write_outputs(d, rec, run_info(10 + j, 100.0 + j, 160.0 - 2 * j), {}, run_id="r", model="closed")
        dirs.append(d)
    merged = merge_outputs(dirs, tmp_path / "merged")

    assert comparable(merged) == comparable(one)
    assert merged["total_sessions"] == 300 and merged["total_queries"] == 900
    assert merged["lost_tokens"] > 0 and merged["failed_queries"] > 0 and merged["total_reconnect_attempts"] > 0
    assert merged["generator"]["processes"] == 3 and merged["generator"]["pids"] == [10, 11, 12]
    # percentiles agree with the raw values within histogram precision
    lat.sort()
    for p in (50, 95, 99):
        want = exact_percentile(lat, p)
        assert abs(merged["latency_ms"][f"p{p}"] - want) <= want / 1000 + 0.002
    # written files agree with the returned summary and hold the union
    assert json.loads((tmp_path / "merged" / "summary.json").read_text()) == merged
    with open(tmp_path / "merged" / "queries.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 900
    with open(tmp_path / "merged" / "timeline.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert sum(int(r["tokens"]) for r in rows) == merged["total_tokens"]
    # merging merged folders again (hosts of processes) keeps the same numbers
    again = merge_outputs([tmp_path / "merged"], tmp_path / "again")
    assert comparable(again) == comparable(merged)


def test_reconnect_waits_add_up_apart_and_the_buckets_rate_is_recorded(tmp_path: Path):
    dirs = []
    for j, (waits, bucket_us, backoff_us) in enumerate([(40, 3_000_000, 9_000_000), (2, 500_000, 7_000_000)]):
        rec = Recorder()
        simulate([rec], 10, seed=j)
        c = rec.counters
        c["reconnect_bucket_waits"], c["reconnect_bucket_wait_us"], c["reconnect_backoff_wait_us"] = (
            waits,
            bucket_us,
            backoff_us,
        )
        limit = {"rate": 200.0, "burst": 50, "admitted": 60, "waited": waits, "wait_s": bucket_us / 1e6}
        one = write_outputs(
            tmp_path / f"proc-{j}", rec, run_info(j) | {"reconnect_limit": limit}, {}, run_id="r", model="closed"
        )
        assert one["reconnect_limit"] == {"rate_per_process": 200.0, "burst": 50, "processes": 1, "rate_total": 200.0}
        dirs.append(tmp_path / f"proc-{j}")
    merged = merge_outputs(dirs, tmp_path / "merged")
    assert (
        merged["reconnect_bucket_waits"],
        merged["reconnect_bucket_wait_s"],
        merged["reconnect_backoff_wait_s"],
    ) == (42, 3.5, 16.0)
    assert merged["reconnect_limit"] == {"rate_per_process": 200.0, "burst": 50, "processes": 2, "rate_total": 400.0}
    # unlimited (--reconnect-rate 0): no total rate; results from before the bucket: not recorded
    assert reconnect_limit([{"reconnect_limit": {"rate": 0.0, "burst": 50}}])["rate_total"] is None
    assert reconnect_limit([run_info(1)]) is None


def test_merge_refuses_a_folder_without_results(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="histograms.json"):
        merge_outputs([tmp_path], tmp_path / "out")


def test_summary_has_every_seed_aggregate(tmp_path: Path):
    rec = Recorder()
    simulate([rec], 20, seed=1)
    s = write_outputs(tmp_path, rec, run_info(1), {"argv": []}, run_id="r", model="closed")
    for key in (
        "total_sessions",
        "successful_sessions",
        "failed_sessions",
        "success_rate",
        "total_queries",
        "total_tokens",
        "qps",
        "tps",
        "avg_create_ms",
        "avg_connect_ms",
        "total_reconnect_attempts",
        "total_successful_reconnects",
        "sessions_with_reconnects",
        "lost_tokens",
        "ttft_ms",
        "inter_token_ms",
        "delivery_latency_ms",
        "start_skew_s",
        "started_at",
        "ended_at",
    ):
        assert key in s, key
    for p in ("p50", "p95", "p99", "min", "max", "avg"):
        assert s["latency_ms"][p] is not None
    assert s["generator"]["generator_overloaded"] is False
    for name in ("queries.csv", "sessions.csv", "timeline.csv", "histograms.json", "summary.json", "meta.json"):
        assert (tmp_path / name).exists(), name


def test_analyze_reports_exact_percentiles_and_errors(tmp_path: Path):
    rec = Recorder()
    lat = simulate([rec], 40, seed=3)
    write_outputs(tmp_path / "a", rec, run_info(1), {}, run_id="r", model="closed")
    a = analyze([tmp_path / "a", tmp_path / "a" / "queries.csv"])  # a folder and a CSV: counted twice
    assert a["queries"] == 240
    lat2 = sorted(lat + lat)
    assert a["latency_ms"]["p99"] == pytest.approx(exact_percentile(lat2, 99), abs=0.002)
    assert "no done" in a["errors"]
    text = format_report(a)
    assert "p10" in text and "Latency histogram" in text and "no done" in text


def test_overload_verdict_names_the_reason():
    lag, start = Histogram(), Histogram()
    lag.record_many([100] * 99 + [200_000])
    assert overload_verdict([20.0, 30.0], lag, start) == (False, "")
    over, why = overload_verdict([95.0, 99.0], lag, start)
    assert over and "cpu mean 97%" in why
    lag.record_many([80_000] * 50)
    over, why = overload_verdict([10.0], lag, start)
    assert over and "event-loop lag p99" in why and "(51 probes at or above it)" in why  # 50, and the 200 ms one


def test_one_or_two_hiccups_of_a_short_run_are_not_an_overloaded_loop():
    """100 probes (a 5 s run): p99 is the second-worst, so two 52 ms hiccups put it past 50 ms; a third
    probe at or above 50 ms is a loop that fell behind."""
    start = Histogram()
    lag = Histogram()
    lag.record_many([2_000] * 98 + [52_000] * 2)
    assert lag.percentile(99) >= 50_000
    assert overload_verdict([10.0], lag, start) == (False, "")
    lag.record(51_000)
    over, why = overload_verdict([10.0], lag, start)
    assert over and "(3 probes at or above it)" in why
