"""fab plan's arithmetic: hosts per group for a number of sessions, against the inventory (pure)."""

from __future__ import annotations

import pytest

from kit.run._sizing import HostFacts, format_plan, offered_tokens_per_s, size_fleet


def _fleet(gens=2, lbs=1, ws=2, cores=2, sessions_max=9_900, ports=(10240, 65535), addresses=1):
    def hosts(prefix, n):
        return [
            HostFacts(f"{prefix}{i}", cores, sessions_max, ports, wsproxy_instances=2, source_addresses=addresses)
            for i in range(n)
        ]

    return {
        "generators": hosts("gen", gens),
        "haproxy": hosts("lb", lbs),
        "wsproxy": hosts("ws", ws),
        "sim": hosts("sim", 1),
        "redis": hosts("redis", 1),
    }


def test_the_10000_session_lab_needs_two_balancers_and_says_so():
    needs = {n.group: n for n in size_fleet(10_000, _fleet(lbs=1))}
    assert (needs["haproxy"].needed, needs["haproxy"].have, needs["haproxy"].ok) == (2, 1, False)
    assert "9,900 sessions per host (one HAProxy process)" in needs["haproxy"].limit
    assert needs["generators"].ok and needs["wsproxy"].ok
    text = format_plan(10_000, list(needs.values()))
    assert "TOO FEW" in text and "add 1 host(s) to the haproxy group" in text


def test_local_ports_limit_a_generator_host_per_balancer_and_source_addresses_lift_it():
    # 200 ports: 200 sessions per balancer address and source address
    one = {n.group: n for n in size_fleet(500, _fleet(gens=1, ports=(20000, 20199)))}
    assert one["generators"].needed == 3 and "by local ports (1 source address(es))" in one["generators"].limit
    three = {n.group: n for n in size_fleet(500, _fleet(gens=1, ports=(20000, 20199), addresses=3))}
    assert three["generators"].needed == 1 and three["generators"].ok


def test_cpu_from_a_previous_runs_cost_per_token():
    rate = offered_tokens_per_s(10_000, tokens=43, token_delay_ms=50, think_time_s=40)  # the chat-like run
    assert rate == pytest.approx(10_000 * 43 / 42.1, rel=1e-3)
    needs = {
        n.group: n
        for n in size_fleet(
            10_000, _fleet(gens=2, lbs=2, ws=2), {"client": 26.0, "sim": 33.0, "wsproxy": 15.0, "redis": 7.0}, rate
        )
    }
    # client: 26 us x 10,214 tokens/s = 0.27 cores; 1.4 usable per 2-core host: 1 host
    assert needs["generators"].needed == 1  # 2 processes x 9,900 sessions hold 10,000
    assert needs["sim"].needed == 1 and needs["redis"].ok
    hot = {n.group: n for n in size_fleet(10_000, _fleet(), {"redis": 100.0}, 10_000.0)}
    assert not hot["redis"].ok and "one Redis process uses one core" in hot["redis"].line()


def test_an_unknown_limit_is_said_not_guessed():
    needs = size_fleet(100, _fleet(sessions_max=None))
    assert all(n.needed is None for n in needs if n.group in ("generators", "haproxy", "wsproxy"))
    assert "no tuning report: run `fab deploy`" in format_plan(100, needs)
