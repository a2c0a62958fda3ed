"""fab plan's arithmetic: hosts per group for a number of sessions, against the inventory (pure)."""

from __future__ import annotations

import json

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


def test_idle_sessions_add_their_own_cpu_to_the_per_token_need():
    # descriptors out of the way (100,000 sessions per process): only the CPU decides
    fleet = _fleet(gens=2, lbs=2, ws=2, sessions_max=100_000)
    per_token = {"wsproxy": 15.0}
    # 15 us x 4,000 tokens/s = 0.06 cores: one wsproxy host
    alone = {n.group: n for n in size_fleet(50_000, fleet, per_token, 4_000.0)}
    assert alone["wsproxy"].needed == 1
    # + 30 us/s for each of 50,000 connected sessions = 1.56 cores: 1.4 usable per host, 2 hosts
    both = {n.group: n for n in size_fleet(50_000, fleet, per_token, 4_000.0, {"wsproxy": 30.0})}
    assert both["wsproxy"].needed == 2
    assert "15 us/token x 4,000 tokens/s + 30 us/s x 50,000 sessions = 1.56 cores" in both["wsproxy"].limit
    # a component the run measured no idle cost for is sized per token only
    other = {n.group: n for n in size_fleet(50_000, fleet, per_token, 4_000.0, {"client": 30.0})}
    assert other["wsproxy"].needed == 1


def test_a_run_with_an_idle_window_gives_the_plan_net_per_token_and_per_session_costs(tmp_path):
    from kit.run._fleet import run_costs

    def entry(component, host, us, net=None, idle=None):
        return {
            "component": component,
            "host": host,
            "us_per_token": us,
            "us_per_token_net": net,
            "idle_us_per_session_s": idle,
        }

    config = {"tokens": 43, "think_time": 60.0}
    split = [
        entry("client", "g1", 30.0, 20.0, 2.5),
        entry("client", "g2", 30.0, 21.0, 2.25),
        entry("sim", "s", 25.0, 24.0, 0.0),
    ]
    (tmp_path / "summary.json").write_text(json.dumps({"components": split, "run": {"config": config}}))
    per_token, per_session, got = run_costs(tmp_path)
    # the hosts of a component add up, net of idle; the simulator's idle work is a fixed tick, not per
    # session: it keeps its whole per-token figure and gets no per-session cost
    assert per_token == {"client": 41.0, "sim": 25.0}
    assert per_session == {"client": 4.75}
    assert got == config
    # a run without an idle window: the whole per-token figure, no per-session cost
    (tmp_path / "summary.json").write_text(json.dumps({"components": [entry("client", "g1", 30.0)]}))
    assert run_costs(tmp_path) == ({"client": 30.0}, {}, {})
