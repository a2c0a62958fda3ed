"""--chaos specs, their targets, and the recovery/attribution arithmetic (pure)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from kit.inventory import parse_inventory_json
from kit.run._chaos import ChaosError, FaultTarget, attribute, parse_chaos, recovery, resolve_targets

REPO = Path(__file__).resolve().parents[2]


def _inv():
    hv = {n: {"ansible_host": f"10.0.0.{i}"} for i, n in enumerate(("r1", "w1", "w2", "g1"), 1)}
    hv["w1"]["wsproxy_instances_per_host"] = 2
    data = {
        "_meta": {"hostvars": hv},
        "all": {"children": ["redis", "haproxy", "wsproxy", "sim", "generators"]},
        "redis": {"hosts": ["r1"]},
        "haproxy": {"hosts": ["r1"]},
        "sim": {"hosts": ["r1"]},
        "wsproxy": {"hosts": ["w1", "w2"]},
        "generators": {"hosts": ["g1"]},
    }
    return parse_inventory_json(data, Path("x.yml"))


PROGRAMS = {
    "r1": [("redis", "redis"), ("haproxy", "haproxy"), ("sim", "sim")],
    "w1": [("wsproxy", "wsproxy-0"), ("wsproxy", "wsproxy-1")],
    "w2": [("wsproxy", "wsproxy-0")],
    "g1": [],
}


@pytest.mark.parametrize(
    "text, want",
    [
        ("kill:wsproxy@20s", ("kill", "wsproxy", None, 20.0, 0.0, None)),
        ("restart:redis@1.5m", ("restart", "redis", None, 90.0, 0.0, None)),
        ("pause:wsproxy[1]@15s+500ms", ("pause", "wsproxy", 1, 15.0, 0.5, None)),
        ("partition:wsproxy[all]@40+3", ("partition", "wsproxy", "all", 40.0, 3.0, None)),
        ("delay:wsproxy[w2]@10s+20s=50ms", ("delay", "wsproxy", "w2", 10.0, 20.0, 50.0)),
        ("delay:w1@0s+1s=20", ("delay", "w1", None, 0.0, 1.0, 20.0)),
    ],
)
def test_specs_parse(text, want):
    s = parse_chaos(text)
    assert (s.action, s.name, s.select, s.at_s, s.for_s, s.arg_ms) == want


@pytest.mark.parametrize(
    "text, says",
    [
        ("kill:wsproxy", "not ACTION:TARGET@AT"),
        ("explode:wsproxy@1s", "unknown action 'explode'"),
        ("pause:redis@3s", "pause lasts: give +FOR"),
        ("kill:redis@3s+2s", "kill is instantaneous"),
        ("delay:wsproxy@1s+2s", "delay needs =MS"),
        ("kill:redis@3s=5ms", "takes no =ARG"),
        ("kill:redis@3 s", "not ACTION"),
        ("delay:w1@1s+1s=0ms", "above 0"),
    ],
)
def test_bad_specs_are_one_line(text, says):
    with pytest.raises(ChaosError) as info:
        parse_chaos(text)
    assert says in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    "text, want",
    [
        ("kill:wsproxy@1s", [FaultTarget("w1", "wsproxy-0")]),
        ("kill:wsproxy[2]@1s", [FaultTarget("w2", "wsproxy-0")]),
        (
            "kill:wsproxy[all]@1s",
            [FaultTarget("w1", "wsproxy-0"), FaultTarget("w1", "wsproxy-1"), FaultTarget("w2", "wsproxy-0")],
        ),
        ("pause:wsproxy[w2]@1s+1s", [FaultTarget("w2", "wsproxy-0")]),
        ("restart:r1[all]@1s", [FaultTarget("r1", p) for p in ("redis", "haproxy", "sim")]),
        ("partition:wsproxy[1]@1s+1s", [FaultTarget("w2")]),
        ("delay:wsproxy[all]@1s+1s=5ms", [FaultTarget("w1"), FaultTarget("w2")]),
        ("partition:g1@1s+1s", [FaultTarget("g1")]),
    ],
)
def test_targets_count_instances_for_process_faults_and_hosts_for_network_faults(text, want):
    assert resolve_targets(parse_chaos(text), _inv(), PROGRAMS) == want


@pytest.mark.parametrize(
    "text, says",
    [
        ("kill:nosuch@1s", "neither a group"),
        ("kill:wsproxy[3]@1s", "index 3 but wsproxy has 3 instance(s)"),
        ("partition:wsproxy[2]@1s+1s", "2 host(s)"),
        ("kill:generators@1s", "runs no kit service"),
        ("kill:wsproxy[r1]@1s", "not a host of group wsproxy"),
        ("kill:g1@1s", "host g1 runs no kit service"),
    ],
)
def test_bad_targets_are_one_line(text, says):
    with pytest.raises(ChaosError, match=None) as info:
        resolve_targets(parse_chaos(text), _inv(), PROGRAMS)
    assert says in str(info.value)


def _timeline(tokens: dict[int, int], **extra: dict[int, int]) -> list[dict]:
    return [
        {"second": s, "tokens": n, "active_sessions": 10, **{k: v.get(s, 0) for k, v in extra.items()}}
        for s, n in tokens.items()
    ]


def _with_p99(tokens: dict[int, int], p99: dict[int, float | None], active: dict[int, int] | None = None) -> list[dict]:
    return [
        {
            "second": s,
            "tokens": n,
            "active_sessions": (active or {}).get(s, 10),
            "delivery_p99_ms": "" if p99.get(s) is None else p99[s],
        }
        for s, n in tokens.items()
    ]


def test_recovery_is_when_tokens_and_delivery_p99_are_back_and_stay_back_for_3_s():
    tl = {s: 100 for s in range(0, 20)} | {20: 60, 21: 0, 22: 30, 23: 89, 24: 95, 25: 100, 26: 100, 27: 100, 28: 100}
    p99 = {s: 20.0 for s in range(0, 20)} | {
        20: 25.0,
        21: None,
        22: 900.0,
        23: 400.0,
        24: 29.0,
        25: 31.0,
        26: 25.0,
        27: 20.0,
        28: 20.0,
    }
    r = recovery(_with_p99(tl, p99), 20.4, 20.4)
    # tokens/s back to 90 % on the mean of 3 s from 23 on (89, 95, 100); delivery p99 within 1.5x (30 ms) at 24,
    # not at 25, then from 26 on (second by second)
    assert r["tokens"]["recovered_at"] == 23.0 and r["delivery_p99"]["recovered_at"] == 26.0
    assert r["baseline_tps"] == 100.0 and r["baseline_delivery_p99_ms"] == 20.0
    assert r["recovered_at"] == 26.0 and r["recovery_s"] == pytest.approx(5.6) and r["note"] == ""
    # a pause: counted from its end
    assert recovery(_with_p99(tl, p99), 18.0, 22.5)["recovery_s"] == pytest.approx(3.5)


def test_sessions_lined_up_by_the_fault_dip_together_and_are_still_recovered_but_a_burst_hides_no_empty_second():
    # before: sessions spread out, 18 tokens each and second; after a stall that lined their queries up, every
    # third second holds all their think times (20, 20, 15: a mean of 18.3). Second by second, 15 < 90 % of 18
    # said "not recovered" for as long as they stayed lined up (a 2 s Redis pause judged recovered after 20 s).
    before = {s: 180 for s in range(10)}  # 10 active sessions
    lined_up = {10: 0, 11: 0} | {s: (150 if s % 3 == 0 else 200) for s in range(12, 40)}
    r = recovery(_with_p99(before | lined_up, {s: 5.0 for s in range(40)} | {10: None, 11: None}), 10.0, 11.5)
    assert r["tokens"]["baseline"] == 18.0 and r["tokens"]["recovered_at"] == 12.0 and r["recovery_s"] == 0.5
    # a burst of catching up (40, 40) after an empty second has the mean but not the floor: recovered after it
    burst = {12: 400, 13: 0, 14: 400} | {s: 180 for s in range(15, 30)}
    r = recovery(_with_p99(before | {10: 0, 11: 0} | burst, {s: 5.0 for s in range(30)}), 10.0, 11.5)
    assert r["tokens"]["recovered_at"] == 14.0


def test_tokens_are_judged_per_active_session_so_a_ramp_or_sessions_ending_are_not_the_fault():
    # a ramp before the fault (5, 10 sessions), then sessions ending after it: tokens/s falls, per session it does not
    active = {0: 5, 1: 10, 2: 20, 3: 20, 4: 20, 5: 20, 6: 20, 7: 15, 8: 10, 9: 5}
    tokens = {s: 10 * a for s, a in active.items()} | {5: 0}  # the fault: nothing in second 5
    r = recovery(_with_p99(tokens, {s: 20.0 for s in active} | {5: None}, active), 5.2, 5.2)
    assert (
        r["tokens"]["baseline"] == 10.0 and r["tokens"]["recovered_at"] == 6.0 and r["recovery_s"] == pytest.approx(0.8)
    )


def test_a_recovery_that_cannot_be_judged_says_why_instead_of_a_number():
    flat = {s: 100 for s in range(30)}
    # a blip of one good second is not a recovery; a good run that lasts to the end of the load is, held that long
    r = recovery(_timeline({s: 100 for s in range(10)} | {10: 0, 11: 95, 12: 0}), 10.0, 10.0)
    assert (
        r["recovery_s"] is None
        and r["tokens"]["note"] == "tokens/s per active session was not back before the load ended"
    )
    r = recovery(
        _with_p99({s: 100 for s in range(10)} | {10: 0, 11: 95, 12: 96}, {s: 5.0 for s in range(13)}), 10.0, 10.0
    )
    assert (
        r["tokens"]["recovered_at"] == 11.0 and r["tokens"]["held_s"] == 2 and "back for the 2 s" in r["tokens"]["note"]
    )
    # no load before the fault; a run without delivery figures (older results)
    assert recovery(_timeline({5: 100, 6: 100}), 3.0, 3.0)["note"].startswith(
        "no tokens/s per active session in the 10 s before"
    )
    old = recovery(_timeline(flat), 15.0, 15.0)
    assert old["tokens"]["recovery_s"] == 0 and old["recovery_s"] is None
    assert old["note"] == "no delivery p99 in the 10 s before the fault: no baseline"


def test_attribution_sums_the_window_and_the_lost_tokens_of_queries_in_flight():
    rows = _timeline({s: 100 for s in range(10)}, reconnect_attempts={4: 3, 5: 2, 9: 7}, queries_failed={5: 1})
    queries = [
        {"submit_at": "3.0", "latency_ms": "1500", "lost": "4"},  # in flight at 4.2: counted
        {"submit_at": "1.0", "latency_ms": "1000", "lost": "9"},  # done before: not counted
        {"submit_at": "5.5", "latency_ms": "", "lost": "2"},
    ]  # never done: counted
    a = attribute(rows, queries, 4.2, 6.0)
    assert (a["tokens_lost"], a["reconnect_attempts"], a["queries_failed"]) == (6, 5, 1)


def test_fab_run_refuses_a_bad_chaos_spec_with_one_line_and_exit_2():
    r = subprocess.run(
        [str(REPO / ".venv" / "bin" / "fab"), "run", "--clients", "1", "--chaos", "pause:redis@3s"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    assert r.stderr.strip() == "run: --chaos 'pause:redis@3s': pause lasts: give +FOR, e.g. pause:redis@3s+5s"


def test_a_tiny_delivery_baseline_allows_10_ms_of_noise():
    tl = {s: 100 for s in range(0, 30)}
    p99 = {s: 1.0 for s in range(0, 20)} | {20: 500.0} | {s: 4.0 for s in range(21, 30)}
    r = recovery(_with_p99(tl, p99), 20.2, 20.2)
    # 4 ms is 4x a 1 ms baseline, yet within 10 ms of it: recovered from 21 on
    assert r["delivery_p99"]["recovered_at"] == 21.0
