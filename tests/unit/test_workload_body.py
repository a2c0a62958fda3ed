"""/run's workload fields: bounded in one place (WORKLOAD_BOUNDS), 422 details naming field and bounds."""

from __future__ import annotations

import pytest

from kit.sim import BodyError, RunRequest, parse_run
from kit.wire import WORKLOAD_BOUNDS


def test_a_body_with_only_query_and_max_tokens_parses_as_before():
    assert parse_run(b'{"query": "q", "max_tokens": 3}') == RunRequest(query="q", max_tokens=3)
    r = parse_run(b'{"query": "q"}')
    assert (r.max_tokens, r.token_delay_ms, r.ttft_ms, r.token_jitter_ms) == (None, None, None, None)


def test_the_workload_fields_are_read_from_the_body():
    r = parse_run(b'{"query": "q", "max_tokens": 400, "token_delay_ms": 12.5, "ttft_ms": 300, "token_jitter_ms": 0}')
    assert (r.max_tokens, r.token_delay_ms, r.ttft_ms, r.token_jitter_ms) == (400, 12.5, 300, 0)


def test_null_means_the_simulators_default():
    r = parse_run(b'{"query": "q", "token_delay_ms": null, "ttft_ms": null}')
    assert r.token_delay_ms is None and r.ttft_ms is None


@pytest.mark.parametrize("field", sorted(WORKLOAD_BOUNDS))
def test_each_bound_is_inclusive(field):
    lo, hi, _ = WORKLOAD_BOUNDS[field]
    for v in (lo, hi):
        raw = b'{"query": "q", "%s": %s}' % (field.encode(), str(int(v) if field == "max_tokens" else v).encode())
        assert getattr(parse_run(raw), field) == v


@pytest.mark.parametrize(
    "field, value",
    [
        ("token_delay_ms", "-1"),
        ("token_delay_ms", "60000.5"),
        ("token_delay_ms", '"50"'),
        ("token_delay_ms", "true"),
        ("ttft_ms", "-0.1"),
        ("ttft_ms", "600001"),
        ("token_jitter_ms", "1e9"),
        ("token_jitter_ms", "[1]"),
        ("max_tokens", "0"),
        ("max_tokens", "100001"),
        ("max_tokens", "2.5"),
        ("max_tokens", "true"),
    ],
)
def test_out_of_range_or_mistyped_values_are_refused_naming_the_field_and_its_bounds(field, value):
    with pytest.raises(BodyError) as info:
        parse_run(b'{"query": "q", "%s": %s}' % (field.encode(), value.encode()))
    lo, hi, _ = WORKLOAD_BOUNDS[field]
    assert info.value.field == field
    assert info.value.detail.startswith(f"{field} must be") and f"from {lo:g} to {hi:g}" in info.value.detail
    assert "\n" not in info.value.detail


def test_a_query_is_bounded_as_a_whole_not_only_field_by_field():
    from kit.wire import MAX_QUERY_MS, query_duration_ms, query_duration_problem

    hi = {name: WORKLOAD_BOUNDS[name][1] for name in WORKLOAD_BOUNDS}
    # every field at its maximum: 100,000 tokens x 60 s + 600 s TTFT + 60 s jitter, a 69-day query
    days = query_duration_ms(hi["max_tokens"], hi["token_delay_ms"], hi["ttft_ms"], hi["token_jitter_ms"]) / 86.4e6
    assert 69 < days < 70
    problem = query_duration_problem(hi["max_tokens"], hi["token_delay_ms"], hi["ttft_ms"], hi["token_jitter_ms"])
    assert problem is not None and "69.5 days" in problem and "15 min" in problem and "\n" not in problem
    # each field alone at its maximum is still a query within minutes
    assert query_duration_problem(hi["max_tokens"], 0.0, 0.0) is None
    assert query_duration_problem(1, hi["token_delay_ms"], hi["ttft_ms"], hi["token_jitter_ms"]) is None
    # the bound is inclusive; a field left out counts as the least it can be
    assert query_duration_problem(1001, 900.0, 0.0) is None and MAX_QUERY_MS == 900_000.0
    assert query_duration_problem(1002, 900.0, 0.0) is not None
    assert query_duration_problem(None, None, None, None) is None
    assert query_duration_problem(20_000, None, None) is None
