"""--abort-on-fail: which thresholds the live merge shows failed for good, and generator_ok."""

from __future__ import annotations

import pytest

from kit.metrics import Histogram
from kit.run._plan import PlanError, parse_threshold
from kit.run._summary import aggregate_status, evaluate_thresholds, live_failures


def _st(*, lost=0, errors=0, failed_sessions=None, queries_failed=0, delivery_us=(), latency_us=()):
    d, lat = Histogram("us"), Histogram("us")
    d.record_many(delivery_us)
    lat.record_many(latency_us)
    st = {
        "time": 100.0,
        "elapsed_s": 10.0,
        "lost_tokens": lost,
        "errors": errors,
        "queries_failed": queries_failed,
        "tokens": 100,
        "latency_histogram": lat.to_dict(),
        "delivery_histogram": d.to_dict(),
    }
    if failed_sessions is not None:
        st["sessions_failed"] = failed_sessions
    return st


def _failed(statuses, *texts, sessions=None, queries=None):
    agg = aggregate_status(statuses, None, 100.0)
    if any("sessions_failed" in s for s in statuses.values()):  # a client that reports it
        agg["sessions_failed"] = sum(s.get("sessions_failed", 0) for s in statuses.values())
    return [
        f["threshold"]
        for f in live_failures(agg, [parse_threshold(t) for t in texts], sessions=sessions, queries=queries)
    ]


def test_a_count_past_its_upper_bound_has_failed_for_good_and_lower_bounds_wait_for_the_end():
    assert _failed({"a": _st(lost=0), "b": _st(lost=3)}, "lost==0", "errors<5", "lost>=10") == ["lost==0"]
    assert _failed({"a": _st(errors=3), "b": _st(errors=3)}, "errors<5") == ["errors<5"]
    assert _failed({"a": _st()}, "lost==0", "errors<5") == []


def test_a_success_rate_fails_only_when_the_sessions_left_cannot_bring_it_back():
    # 1,000 sessions planned, 99 % wanted: 10 may fail
    assert _failed({"a": _st(failed_sessions=6), "b": _st(failed_sessions=4)}, "success>=99%", sessions=1000) == []
    assert _failed({"a": _st(failed_sessions=6), "b": _st(failed_sessions=5)}, "success>=99%", sessions=1000) == [
        "success>=99%"
    ]
    # a client that does not report failed sessions live: not judged live
    assert _failed({"a": _st()}, "success>=99%", sessions=1000) == []
    assert _failed({"a": _st(queries_failed=30)}, "query_success>=99%", queries=2000) == ["query_success>=99%"]


def test_latency_bounds_are_judged_on_the_histograms_merged_since_the_start():
    fast, slow = [4_000] * 98, [900_000] * 2
    assert _failed({"a": _st(delivery_us=fast), "b": _st(delivery_us=[4_000] * 100)}, "delivery_p99<50ms") == []
    # 2 of 200 tokens at 900 ms: p99 is still fast; 3 of 200 and p99 is the stall
    assert _failed({"a": _st(delivery_us=fast + slow), "b": _st(delivery_us=[4_000] * 100)}, "delivery_p99<50ms") == []
    assert _failed(
        {"a": _st(delivery_us=fast + slow), "b": _st(delivery_us=[4_000] * 99 + [900_000])}, "delivery_p99<50ms"
    ) == ["delivery_p99<50ms"]
    # rates and generator_ok are for the end
    assert _failed({"a": _st(latency_us=[5_000_000])}, "tps>=1000000", "generator_ok", "p50<1s") == ["p50<1s"]


def test_generator_ok_is_written_bare_and_reads_the_generators_verdict():
    t = parse_threshold("generator_ok")
    assert (t.metric, t.kind) == ("generator_ok", "flag")
    assert parse_threshold("generator_ok == 1").kind == "flag"
    with pytest.raises(PlanError, match="is yes/no, write it bare"):
        parse_threshold("generator_ok>0")
    ok, over = ({"generator": {"generator_overloaded": v}} for v in (False, True))
    assert [c["passed"] for c in evaluate_thresholds(ok, [t])] == [True]
    assert [c["passed"] for c in evaluate_thresholds(over, [t])] == [False]
    assert [c["passed"] for c in evaluate_thresholds({}, [t])] == [False]  # unknown is not a pass
