"""kit.metrics: histogram precision, merge exactness, serialisation, timeline."""

from __future__ import annotations

import json
import math
import random

import pytest

from kit.metrics import Histogram, SecondHistograms, Timeline, add_counts, bucket_index, bucket_value, coarse_bucket


def exact(values: list[int], p: float) -> int:
    s = sorted(values)
    rank = max(1, -(-(round(p * 1000) * len(s)) // 100000))  # ceil(p/100*n) without float rounding
    return s[rank - 1]


def test_small_values_are_exact():
    for v in range(0, 2048):
        assert bucket_value(bucket_index(v)) == v


def test_bucket_relative_error_is_below_one_in_a_thousand():
    rng = random.Random(1)
    for _ in range(20000):
        v = int(10 ** rng.uniform(0, 12))
        rep = bucket_value(bucket_index(v))
        assert abs(rep - v) <= v / 1000, (v, rep)


def test_bucket_index_is_monotonic():
    prev = bucket_index(-(10**9))
    for v in list(range(-5000, 5000)) + [10**k for k in range(4, 15)]:
        idx = bucket_index(v)
        assert idx >= prev or v < 0
        prev = idx
    assert sorted(range(-3000, 70000), key=bucket_index) == list(range(-3000, 70000))


def test_negative_values_mirror_positive_ones():
    h = Histogram()
    h.record_many([-5000, -3, 0, 7, 5000])
    assert h.min == -5000 and h.max == 5000
    assert h.percentile(1) == -5000
    assert h.percentile(50) == 0
    assert abs(h.percentile(100) - 5000) <= 5


@pytest.mark.parametrize("p", [10, 25, 50, 75, 90, 95, 99, 99.9, 100])
def test_percentiles_match_exact_values_within_precision(p):
    rng = random.Random(p)
    values = [int(rng.lognormvariate(10, 1.5)) for _ in range(5000)]
    h = Histogram()
    h.record_many(values)
    want = exact(values, p)
    assert abs(h.percentile(p) - want) <= want / 1000 + 1


def test_min_max_sum_count_are_exact():
    values = [3, 99999, 123456789, 42]
    h = Histogram()
    h.record_many(values)
    assert (h.count, h.total, h.min, h.max) == (4, sum(values), 3, 123456789)
    assert h.mean() == sum(values) / 4
    assert h.percentile(100) == 123456789  # clamped to the exact max


def test_merge_equals_recording_the_union():
    rng = random.Random(7)
    values = [int(rng.expovariate(1 / 50000)) for _ in range(9000)]
    whole = Histogram()
    whole.record_many(values)
    parts = [Histogram() for _ in range(3)]
    for i, v in enumerate(values):
        parts[i % 3].record(v)
    merged = Histogram()
    for part in parts:
        merged.merge(Histogram.from_dict(json.loads(json.dumps(part.to_dict()))))
    assert merged == whole
    for p in (50, 95, 99):
        assert merged.percentile(p) == whole.percentile(p)


def test_merge_refuses_other_units():
    with pytest.raises(ValueError, match="cannot merge"):
        Histogram("us").merge(Histogram("ms"))


def test_from_dict_detects_damaged_counts():
    d = Histogram().to_dict()
    d["count"] = 3
    with pytest.raises(ValueError, match="damaged"):
        Histogram.from_dict(d)


def test_empty_histogram_has_no_percentile():
    h = Histogram()
    assert h.percentile(50) is None and h.mean() is None
    assert h.summary()["p99"] is None


def test_percentile_out_of_range_is_refused():
    h = Histogram()
    h.record(1)
    with pytest.raises(ValueError):
        h.percentile(101)


def test_timeline_merge_adds_events_and_gauges():
    a, b = Timeline(), Timeline()
    a.add(100, "tokens", 5)
    a.gauge(100, "active_sessions", 3)
    b.add(100, "tokens", 7)
    b.gauge(100, "active_sessions", 4)
    b.add(101, "errors")
    m = Timeline.from_rows(a.to_rows()).merge(Timeline.from_dict(b.to_dict()))
    rows = {r["second"]: r for r in m.to_rows()}
    assert rows[100]["tokens"] == 12 and rows[100]["active_sessions"] == 7
    assert rows[101]["errors"] == 1


def test_add_counts_is_recursive():
    assert add_counts({"a": 1, "n": {"x": 1}}, {"a": 2, "n": {"x": 2, "y": 1}, "s": "text"}) == {
        "a": 3,
        "n": {"x": 3, "y": 1},
    }


def test_subtracting_an_earlier_snapshot_leaves_exactly_the_interval_recorded_since():
    rng = random.Random(7)
    before_vals = [rng.randint(-5_000, 5_000_000) for _ in range(4000)]
    after_vals = [rng.randint(100, 20_000_000) for _ in range(3000)]
    cum = Histogram("us")
    cum.record_many(before_vals)
    earlier = Histogram.from_dict(json.loads(json.dumps(cum.to_dict())))  # a status.json round trip
    cum.record_many(after_vals)
    interval = Histogram.from_dict(cum.to_dict()).subtract(earlier)
    only = Histogram("us")
    only.record_many(after_vals)
    assert interval.counts == only.counts and interval.count == 3000 and interval.total == sum(after_vals)
    for p in (50, 90, 99):
        assert interval.percentile(p) == pytest.approx(only.percentile(p), rel=1e-3)
    # min/max are the remaining buckets' bounds: within one bucket of the true interval extremes
    assert interval.min <= min(after_vals) and interval.min == pytest.approx(min(after_vals), rel=1e-3)
    assert interval.max >= max(after_vals) and interval.max == pytest.approx(max(after_vals), rel=1e-3)


def test_subtract_keeps_exact_small_values_and_clamps_to_the_recorded_range():
    cum = Histogram("us")
    cum.record_many([1, 2, 3])
    earlier = Histogram.from_dict(cum.to_dict())
    cum.record_many([7, 9, 9])
    interval = cum.subtract(earlier)
    assert (interval.min, interval.max, interval.count, interval.total) == (7, 9, 3, 25)
    assert interval.percentile(50) == 9


def test_subtracting_a_snapshot_of_itself_is_empty():
    h = Histogram("us")
    h.record_many([5, 50_000])
    d = Histogram.from_dict(h.to_dict()).subtract(h)
    assert d.count == 0 and d.counts == {} and d.min is None and d.max is None and d.percentile(99) is None


def test_subtract_refuses_what_is_not_an_earlier_state():
    a, b = Histogram("us"), Histogram("us")
    a.record(10)
    b.record_many([10, 11])
    with pytest.raises(ValueError, match="not an earlier state"):
        a.subtract(b)
    assert a.count == 1 and a.counts == {10: 1}  # unchanged after the refusal
    with pytest.raises(ValueError, match="subtract"):
        a.subtract(Histogram("ms"))


def _record_seconds(values_by_second: dict[int, list[int]]) -> SecondHistograms:
    """One process: a cumulative histogram fed second by second, cut once a second as the recorder does."""
    cum, sec = Histogram("us"), SecondHistograms()
    for second in sorted(values_by_second):
        cum.record_many(values_by_second[second])
        sec.close_second(second, {"delivery": cum})
    return sec


def test_per_second_histograms_hold_exactly_what_each_second_recorded_and_merge_like_one_process():
    rng = random.Random(7)
    a = {s: [rng.randrange(1, 400_000) for _ in range(rng.randrange(0, 300))] for s in range(100, 130)}
    b = {s: [rng.randrange(1, 400_000) for _ in range(rng.randrange(0, 300))] for s in range(110, 140)}
    merged = _record_seconds(a).merge(_record_seconds(b))
    for second in range(100, 140):
        values = a.get(second, []) + b.get(second, [])
        h = merged.hists.get(second, {}).get("delivery")
        if not values:
            assert h is None  # nothing recorded: no histogram, a gap in timeline.csv
            continue
        one = Histogram("us")
        one.record_many(values)
        # the second's buckets are the coarse groups of one process's: counts add exactly
        coarse: dict[int, int] = {}
        for idx, n in one.counts.items():
            coarse[coarse_bucket(idx)] = coarse.get(coarse_bucket(idx), 0) + n
        assert h.counts == coarse and h.count == len(values) and h.total == sum(values)
        # percentiles from merged buckets, never averaged, within the coarse buckets' 1/64 (exact below 16 us)
        exact = sorted(values)[math.ceil(0.99 * len(values)) - 1]
        assert abs(h.percentile(99) - exact) <= max(16, exact / 64)
        assert bucket_index(h.max) == bucket_index(one.max)
    rows = merged.rows(["delivery"])
    assert all(set(r) == {"delivery_p50", "delivery_p99", "delivery_max"} for r in rows.values())
    again = SecondHistograms.from_dict(json.loads(json.dumps(merged.to_dict())))
    assert again.rows(["delivery"]) == rows


def test_a_coarse_histogram_keeps_count_sum_min_max_and_later_states_still_subtract():
    """status.json carries coarse cumulative histograms: the live view subtracts two of them (a second's)."""
    rng = random.Random(3)
    h = Histogram("us")
    h.record_many(rng.randrange(1, 3_000_000) for _ in range(5000))
    early = h.coarse()
    h.record_many(rng.randrange(1, 3_000_000) for _ in range(800))
    late = h.coarse()
    assert (late.count, late.total, late.min, late.max) == (h.count, h.total, h.min, h.max)
    assert len(late.counts) * 4 < len(h.counts)
    exact = h.percentile(99)
    assert abs(late.percentile(99) - exact) <= exact / 64
    second = late.copy().subtract(early)
    assert second.count == 800
