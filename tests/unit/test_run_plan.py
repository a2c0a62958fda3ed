"""fab run's pure planning: thresholds, the client split, balancer assignment, clock offsets, ids."""

from __future__ import annotations

import pytest

from kit.run._plan import (
    DEFAULT_THRESHOLDS,
    PRESETS,
    PlanError,
    clock_offset,
    judged_thresholds,
    make_run_id,
    parse_threshold,
    plan_generators,
    split_clients,
)


@pytest.mark.parametrize(
    "text, metric, kind, op, value",
    [
        ("p99<2s", "p99", "time", "<", 2.0),
        ("p50<=500ms", "p50", "time", "<=", 0.5),
        ("  p95 < 1.5 s ", "p95", "time", "<", 1.5),
        ("ttft_p99<300ms", "ttft_p99", "time", "<", 0.3),
        ("delivery_p99_9<20ms", "delivery_p99_9", "time", "<", 0.02),
        ("max<2m", "max", "time", "<", 120.0),
        ("success>=99.9%", "success", "percent", ">=", 0.999),
        ("lost==0", "lost", "count", "==", 0.0),
        ("tps>=300", "tps", "rate", ">=", 300.0),
    ],
)
def test_thresholds_parse_to_base_units(text, metric, kind, op, value):
    t = parse_threshold(text)
    assert (t.metric, t.kind, t.op) == (metric, kind, op)
    assert t.value == pytest.approx(value)


def test_a_run_is_judged_by_the_default_thresholds_when_none_is_given():
    assert DEFAULT_THRESHOLDS == ("success>=99%", "lost==0")
    judged = judged_thresholds([])
    assert [(t.text, t.default) for t in judged] == [("success>=99%", True), ("lost==0", True)]
    assert judged[0].value == pytest.approx(0.99) and not parse_threshold("success>=99%").default


def test_a_threshold_on_a_defaults_metric_replaces_that_default_only():
    judged = judged_thresholds([parse_threshold("success>=95%"), parse_threshold("p99<2s")])
    assert [(t.text, t.default) for t in judged] == [("success>=95%", False), ("p99<2s", False), ("lost==0", True)]
    # query_success is another metric: it leaves the sessions' success default in place
    assert [t.text for t in judged_thresholds([parse_threshold("query_success>=90%")])] == [
        "query_success>=90%",
        "success>=99%",
        "lost==0",
    ]


def test_without_the_defaults_only_the_given_thresholds_judge():
    assert judged_thresholds([], defaults=False) == []
    assert [t.text for t in judged_thresholds([parse_threshold("lost<=5")], defaults=False)] == ["lost<=5"]


def test_a_time_threshold_knows_its_histogram_and_statistic():
    t = parse_threshold("inter_token_p999<1s")
    assert (t.histogram, t.stat) == ("inter_token", "p99_9")
    assert parse_threshold("p99<2s").histogram == "latency"


@pytest.mark.parametrize(
    "text, says",
    [
        ("p99<2", "give a unit"),
        ("success>=99.9", "percentage"),
        ("success>=120%", "cannot exceed"),
        ("lost==0ms", "plain number"),
        ("latency<2s", "unknown metric"),
        ("p99 2s", "<metric><op><value>"),
        ("p99=<2s", "<metric><op><value>"),
        ("", "<metric><op><value>"),
    ],
)
def test_a_bad_threshold_is_refused_with_how_to_write_it(text, says):
    with pytest.raises(PlanError, match=says):
        parse_threshold(text)


def test_threshold_check_compares_and_treats_a_missing_value_as_failure():
    t = parse_threshold("p99<2s")
    assert t.check(1.99) and not t.check(2.0) and not t.check(None)
    assert parse_threshold("lost==0").check(0) and not parse_threshold("lost==0").check(1)


def test_clients_split_in_proportion_to_cores_and_add_up_exactly():
    share = split_clients(1000, {"g1": 2, "g2": 4, "g3": 2})
    assert share == {"g1": 250, "g2": 500, "g3": 250}
    odd = split_clients(7, {"a": 1, "b": 1, "c": 1})
    assert sum(odd.values()) == 7 and sorted(odd.values()) == [2, 2, 3]
    assert split_clients(7, {"a": 1, "b": 1, "c": 1}) == odd  # deterministic


def test_split_refuses_no_hosts_and_hosts_without_cores():
    with pytest.raises(PlanError, match="generators group"):
        split_clients(10, {})
    with pytest.raises(PlanError, match="no cores"):
        split_clients(10, {"a": 0})


def test_each_generator_process_gets_a_balancer_round_robin_across_hosts():
    slots = plan_generators(500, {"g1": 2, "g2": 2}, ["lb1", "lb2"])
    assert sum(s.clients for s in slots) == 500
    assert sum(s.processes for s in slots) == 4
    per_lb = {}
    for s in slots:
        per_lb[s.haproxy] = per_lb.get(s.haproxy, 0) + s.processes
    assert per_lb == {"lb1": 2, "lb2": 2}
    assert len({s.label for s in slots}) == len(slots)


def test_one_process_per_core_unless_a_host_has_fewer_clients_than_cores():
    slots = plan_generators(5, {"big": 8, "small": 2}, ["lb"])
    by_host = {s.host: s for s in slots}
    assert by_host["big"].clients == 4 and by_host["big"].processes == 4
    assert by_host["small"].clients == 1 and by_host["small"].processes == 1


def test_arrival_rate_is_split_with_the_clients():
    slots = plan_generators(100, {"a": 1, "b": 3}, ["lb"], arrival_rate=40.0)
    assert sum(s.arrival_rate for s in slots) == pytest.approx(40.0)
    assert {s.host: s.arrival_rate for s in slots} == {"a": pytest.approx(10.0), "b": pytest.approx(30.0)}


def test_clock_offset_uses_the_fastest_round_trip_and_halves_it():
    # remote clock is 5 ms ahead; the second sample had a 2 ms round trip, the others were slow
    samples = [
        (0, 30_000_000, 50_000_000),
        (100_000_000, 106_000_000, 102_000_000),
        (200_000_000, 240_000_000, 260_000_000),
    ]
    off = clock_offset(samples)
    assert off["offset_s"] == pytest.approx(0.005)
    assert off["uncertainty_s"] == pytest.approx(0.001)
    assert clock_offset([(0, -3_000_000, 2_000_000)])["offset_s"] == pytest.approx(-0.004)


def test_clock_offset_refuses_a_clock_that_went_backwards():
    with pytest.raises(PlanError):
        clock_offset([(10, 5, 9)])
    with pytest.raises(PlanError):
        clock_offset([])


def test_run_id_names_the_time_and_clients_and_avoids_taken_ids():
    rid = make_run_id(500, now=0)
    assert rid.endswith("-c500") and len(rid) == len("19700101-000000-c500")
    assert make_run_id(500, now=0, taken=[rid]) == rid + "-2"


def test_presets_are_the_seed_scenarios():
    assert {k: (p.clients, p.queries) for k, p in PRESETS.items()} == {
        "smoke": (10, 1),
        "standard": (20, 3),
        "load": (1000, 10),
        "stress": (5000, 20),
        "soak": (100, 100),
    }


def test_every_balancer_carries_its_even_share_when_processes_do_not_divide_among_them():
    """The 25,000-session lab run: 4 generator processes over 3 balancers gave one balancer 12,500 sessions,
    past its ~9,900 cap (2,521 sessions never connected). Each balancer now carries a third."""
    from kit.run._plan import plan_generators

    slots = plan_generators(25_000, {"g7": 2, "g8": 2}, ["h2", "h3", "h4"])
    per_lb: dict[str, int] = {}
    for s in slots:
        per_lb[s.haproxy] = per_lb.get(s.haproxy, 0) + s.clients
    assert per_lb == {"h2": 8334, "h3": 8333, "h4": 8333}
    assert sum(s.processes for s in slots) == 4 and sum(s.clients for s in slots) == 25_000
    assert max(s.clients // s.processes for s in slots) <= 8334
