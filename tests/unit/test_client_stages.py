"""Stages and Poisson arrivals (kit.client._stages): parsing, the open and closed schedules, their seeds and
their split over processes; the slot runner (kit.client._load.run_slot) and the options' rules."""

from __future__ import annotations

import math
import statistics

import pytest
import trio

from kit.client import (
    Stage,
    closed_slots,
    format_stages,
    open_arrivals,
    parse_stages,
    peak_target,
    rate_integral,
    scale_stages,
    slot_count,
    stage_records,
    stages_length,
)
from kit.client._load import LoadConfig, run_slot
from kit.client._output import load_shape
from kit.client._session import SessionConfig
from kit.config import ConfigError
from kit.options import check, declared, default


def _intervals(text: str, **kw) -> dict[int, tuple[tuple[float, float], ...]]:
    return {k: tuple((round(a, 6), round(b, 6)) for a, b in iv) for k, iv in closed_slots(parse_stages(text), **kw)}


# -- parsing ------------------------------------------------------------------------------------------------


def test_stages_parse_with_units_and_per_stage_arrivals():
    assert parse_stages("30:100, 1m:100 ,30s:0:poisson,0.5h:2.5:EVEN") == (
        Stage(30.0, 100.0),
        Stage(60.0, 100.0),
        Stage(30.0, 0.0, "poisson"),
        Stage(1800.0, 2.5, "even"),
    )


@pytest.mark.parametrize(
    "text, says",
    [
        ("30:x", "--stages item 1 '30:x': TARGET must be a number >= 0, e.g. 30:100"),
        ("30:100,60:100,30:x", "--stages item 3 '30:x': TARGET must be a number >= 0, e.g. 30:100"),
        ("30:-1", "item 1 '30:-1': TARGET must be a number >= 0"),
        ("30:inf", "item 1 '30:inf': TARGET must be a number >= 0"),
        ("x:10", "item 1 'x:10': DURATION must be seconds >= 0"),
        ("-5:10", "item 1 '-5:10': DURATION must be seconds >= 0"),
        ("10d:10", "item 1 '10d:10': DURATION must be seconds >= 0"),
        ("30", "item 1 '30': a stage is DURATION:TARGET[:ARRIVALS]"),
        ("30:1:even:x", "item 1 '30:1:even:x': a stage is DURATION:TARGET[:ARRIVALS]"),
        ("30:10,", "item 2 '': a stage is DURATION:TARGET[:ARRIVALS]"),
        ("30:10:fast", "item 1 '30:10:fast': ARRIVALS must be even or poisson, e.g. 20:50:poisson"),
        ("", "give at least one stage"),
        ("0:10,0:0", "the stages last 0 s: give a stage a DURATION > 0"),
    ],
)
def test_a_bad_stage_is_one_line_naming_the_item(text, says):
    with pytest.raises(ConfigError) as exc:
        parse_stages(text)
    msg = str(exc.value)
    assert says in msg and "\n" not in msg


@pytest.mark.parametrize("text", ["30:100,60:100,30:0", "20:50:poisson,10:0", "0.1:0.3,7.25:1e-05:even,1:123456789"])
def test_format_stages_round_trips(text):
    stages = parse_stages(text)
    assert parse_stages(format_stages(stages)) == stages
    assert format_stages(parse_stages(format_stages(stages))) == format_stages(stages)
    assert format_stages(parse_stages("1m:100,30s:0")) == "60:100,30:0"


def test_length_peak_slots_and_integral():
    stages = parse_stages("10:10,20:10,10:0")
    assert stages_length(stages) == 40
    assert peak_target(stages) == 10 and slot_count(stages) == 10
    assert slot_count(parse_stages("5:2.5")) == 3  # slots 0, 1, 2 (2 while the target is above 2)
    assert rate_integral(stages, 0.0) == 50 + 200 + 50
    assert rate_integral(parse_stages("10:0"), 4.0) == 20  # the open model starts from --arrival-rate


def test_scale_stages_gives_a_share_without_a_hair_above_it():
    stages = parse_stages("30:100:poisson,60:100,30:0")
    share = scale_stages(stages, 0.34)
    assert [s.target for s in share] == [34.0, 34.0, 0.0] and slot_count(share) == 34
    assert [s.duration for s in share] == [30.0, 60.0, 30.0] and share[0].arrivals == "poisson"
    assert scale_stages(stages, 1 / 3)[0].target == pytest.approx(33.333333333)
    with pytest.raises(ValueError):
        scale_stages(stages, -1)


def test_stage_records_carry_each_stages_window_targets_and_arrivals():
    recs = stage_records(parse_stages("4:40,4:40:poisson,4:0"), 0.0, "even")
    assert recs == [
        {"index": 0, "start_s": 0.0, "end_s": 4.0, "target_from": 0.0, "target_to": 40.0, "arrivals": "even"},
        {"index": 1, "start_s": 4.0, "end_s": 8.0, "target_from": 40.0, "target_to": 40.0, "arrivals": "poisson"},
        {"index": 2, "start_s": 8.0, "end_s": 12.0, "target_from": 40.0, "target_to": 0.0, "arrivals": "even"},
    ]
    assert stage_records(parse_stages("10:0"), 5.0)[0]["target_from"] == 5.0


# -- open model ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, rate", [("10:10", 0.0), ("10:10,20:10,10:0", 0.0), ("6:4,4:12", 2.0), ("4:0", 5.0)])
def test_even_open_arrivals_start_the_integrals_sessions_on_its_whole_numbers(text, rate):
    stages = parse_stages(text)
    total = rate_integral(stages, rate)
    arrivals = list(open_arrivals(stages, rate))
    assert total == int(total) and len(arrivals) == total
    assert [g for g, _ in arrivals] == list(range(len(arrivals)))
    offsets = [t for _, t in arrivals]
    assert offsets == sorted(offsets) and 0 <= offsets[0] and offsets[-1] <= stages_length(stages) + 1e-9
    # the n-th arrival is where the integral reaches n: count the due sessions at a few instants
    for t in (1.0, 3.5, stages_length(stages) / 2):
        assert sum(1 for x in offsets if x <= t) == math.floor(_integral(stages, rate, t) + 1e-9)


def _integral(stages, rate, t):
    """The rate curve's integral up to *t*, by brute force (the test's own)."""
    n = 100_000
    total, start, level = 0.0, 0.0, rate
    for st in stages:
        for i in range(n):
            x = start + (i + 0.5) * st.duration / n
            if x < t:
                total += (level + (st.target - level) * (i + 0.5) / n) * st.duration / n
        start, level = start + st.duration, st.target
    return round(total, 4)


def test_constant_rate_even_arrivals_are_evenly_spaced():
    offsets = [t for _, t in open_arrivals((Stage(10, 4),), 4.0)]
    assert len(offsets) == 40 and offsets[:3] == pytest.approx([0.25, 0.5, 0.75]) and offsets[-1] == 10


def test_poisson_open_arrivals_come_from_the_seed():
    stages = parse_stages("20:50:poisson,10:0")
    one = list(open_arrivals(stages, 0.0, seed=7))
    assert one == list(open_arrivals(stages, 0.0, seed=7))
    assert one != list(open_arrivals(stages, 0.0, seed=8))
    offsets = [t for _, t in one]
    assert offsets == sorted(offsets) and offsets[-1] <= 30
    # --arrivals poisson applies to a stage without its own mode; :even overrides it
    assert list(open_arrivals(parse_stages("10:10:even"), 0.0, arrivals="poisson", seed=1)) == list(
        open_arrivals(parse_stages("10:10"), 0.0)
    )


def test_poisson_open_arrivals_average_the_integral():
    stages = parse_stages("10:40,10:40,10:0")  # integral 200 + 400 + 200 = 800
    counts = [len(list(open_arrivals(stages, 0.0, arrivals="poisson", seed=s))) for s in range(40)]
    # each count is Poisson(800) (sd 28.3): the mean of 40 is within 5 standard errors (4.5) of 800
    assert abs(statistics.mean(counts) - 800) < 5 * math.sqrt(800 / 40)
    assert statistics.pstdev(counts) > 5  # random counts, not the even schedule's 800 each time
    # and in time: the first stage (a ramp from 0) holds about a quarter of them
    early = [sum(1 for _, t in open_arrivals(stages, 0.0, arrivals="poisson", seed=s) if t < 10) for s in range(40)]
    assert abs(statistics.mean(early) - 200) < 5 * math.sqrt(200 / 40)


@pytest.mark.parametrize("arrivals", ["even", "poisson"])
def test_processes_split_the_open_arrivals_each_exactly_once(arrivals):
    stages = parse_stages("5:30,5:30:poisson,5:0")
    whole = list(open_arrivals(stages, 3.0, arrivals=arrivals, seed=11))
    parts = [
        list(open_arrivals(stages, 3.0, arrivals=arrivals, seed=11, process_index=i, processes=3)) for i in range(3)
    ]
    assert sorted(a for p in parts for a in p) == whole
    assert all(g % 3 == i for i, p in enumerate(parts) for g, _ in p)


# -- closed model -------------------------------------------------------------------------------------------


def test_closed_slots_ramp_up_hold_and_down_at_the_crossings():
    slots = _intervals("4:4,4:4,4:0")
    assert slots == {0: ((0.0, 12.0),), 1: ((1.0, 11.0),), 2: ((2.0, 10.0),), 3: ((3.0, 9.0),)}
    # active count just after t is the target rounded up
    for t in (0.5, 2.5, 6.0, 9.5, 11.5):
        active = sum(1 for iv in slots.values() for a, b in iv if a <= t < b)
        target = min(t, 4) if t < 8 else 4 - (t - 8)
        assert active == math.ceil(target), t


def test_a_spike_activates_a_slot_twice_and_a_hold_ends_with_the_last_stage():
    slots = _intervals("2:4,2:1,2:4,2:0")
    assert slots[0] == ((0.0, 8.0),)
    assert slots[1] == ((0.5, 4.0), (4.0, 7.5))  # the target touches 1 at t=4: the slot retires and returns
    assert slots[2] == ((1.0, 3.333333), (4.666667, 7.0))
    assert slots[3] == ((1.5, 2.666667), (5.333333, 6.5))
    assert _intervals("3:3") == {0: ((0.0, 3.0),), 1: ((1.0, 3.0),), 2: ((2.0, 3.0),)}
    assert _intervals("0:2,5:2") == {0: ((0.0, 5.0),), 1: ((0.0, 5.0),)}  # a step: all at once


def test_poisson_closed_ramp_starts_at_seeded_order_statistics_and_retires_at_the_crossings():
    text = "10:20:poisson,5:20,10:0"
    one = _intervals(text, seed=3)
    assert one == _intervals(text, seed=3) and one != _intervals(text, seed=4)
    starts = [one[k][0][0] for k in sorted(one)]
    assert starts == sorted(starts) and 0 <= starts[0] and starts[-1] < 10
    assert starts != [k / 2 for k in range(20)]  # not the even crossings
    assert [one[k][0][1] for k in sorted(one)] == [round(25 - k / 2, 6) for k in range(20)]
    # --arrivals poisson applies to the ramp-up; the ramp-down is the crossing either way
    assert _intervals("10:20,5:20,10:0", arrivals="poisson", seed=3) == one
    # the mean start of slot k over seeds is its order statistic's mean: 10 (k + 1) / 21
    means = [statistics.mean(_intervals(text, seed=s)[k][0][0] for s in range(200)) for k in (0, 9, 19)]
    assert means == pytest.approx([10 / 21, 100 / 21, 200 / 21], abs=0.35)


@pytest.mark.parametrize("arrivals", ["even", "poisson"])
def test_processes_split_the_slots_each_exactly_once(arrivals):
    stages = parse_stages("3:10,2:3,3:12,2:0")
    whole = closed_slots(stages, arrivals=arrivals, seed=5)
    parts = [closed_slots(stages, arrivals=arrivals, seed=5, process_index=i, processes=4) for i in range(4)]
    assert sorted(s for p in parts for s in p) == whole
    assert [k for k, _ in whole] == list(range(12))
    assert all(k % 4 == i for i, p in enumerate(parts) for k, _ in p)


# -- the slot runner ----------------------------------------------------------------------------------------


async def test_a_slot_runs_sessions_back_to_back_and_retires_them_at_its_end(autojump_clock):
    t0 = trio.current_time()
    runs = []

    async def one(n, intended, retire):
        start = trio.current_time() - t0
        with trio.move_on_after(3.0):  # a session of 3 s that leaves early when retired
            await retire.wait()
        runs.append((n, intended, round(start, 6), round(trio.current_time() - t0, 6)))
        return 0.5  # think time before the next

    await run_slot(((1.0, 6.0), (10.0, 11.0)), t0, one)
    assert runs == [
        (0, 1.0, 1.0, 4.0),  # intended at its interval's start
        (1, None, 4.5, 6.0),  # after the think time; retired at the interval's end, it left then
        (2, 10.0, 10.0, 11.0),  # the slot's next interval: its session numbers go on
    ]


async def test_a_slot_starts_no_session_once_its_interval_is_over(autojump_clock):
    t0 = trio.current_time()
    runs = []

    async def one(n, intended, retire):
        await trio.sleep(2.5)
        runs.append(n)
        return 0.5

    await run_slot(((0.0, 3.0),), t0, one)  # 2.5 + 0.5 think reaches the end exactly
    assert runs == [0] and trio.current_time() - t0 == pytest.approx(3.0)


# -- config and options -------------------------------------------------------------------------------------


def _options(**given):
    return {f.name: default(f.name) for f in declared()} | given


def test_total_sessions_sizes_a_staged_run():
    sess = SessionConfig(api_url="http://h", ws_url="ws://h")
    assert LoadConfig(session=sess, stages=parse_stages("4:40,4:40,4:0")).total_sessions == 40
    open_cfg = LoadConfig(session=sess, arrival_rate=0.0, stages=parse_stages("10:10"))
    assert open_cfg.model == "open" and open_cfg.total_sessions == 50
    assert LoadConfig(session=sess, clients=7).total_sessions == 7


@pytest.mark.parametrize(
    "given, says",
    [
        ({"stages": "30:x"}, "--stages item 1 '30:x': TARGET must be a number >= 0"),
        ({"stages": "10:10", "arrival_rate": 5.0, "duration": 10.0}, "--duration 10 with --stages"),
        ({"stages": "10:10", "duration": 10.0}, "--duration 10 with --stages"),
        ({"stages": "10:0"}, "--stages 10:0 never sets a target above 0 sessions"),
        ({"stages": "1:0.5", "arrival_rate": 0.0}, "--stages 1:0.5 from --arrival-rate 0 starts no session"),
        ({"stages": "700:10", "max_duration": 600.0}, "--stages last 700 s, above --max-duration 600"),
        ({"arrivals": "poisson"}, "--arrivals poisson applies to the open model or to --stages"),
        ({"arrivals": "bursty"}, "--arrivals 'bursty' is not even or poisson"),
    ],
)
def test_the_options_rules_of_stages_and_arrivals(given, says):
    with pytest.raises(ConfigError, match=f"^{_re(says)}"):
        check(_options(**given))


def _re(text: str) -> str:
    import re

    return re.escape(text)


def test_stages_replace_duration_and_clients():
    check(_options(stages="10:10,10:0"))  # closed: no --clients needed (its default is ignored)
    check(_options(stages="10:10:poisson", arrival_rate=0.0))  # open: from rate 0, no --duration
    check(_options(arrival_rate=5.0, duration=10.0, arrivals="poisson"))
    check(_options(stages="10:10", arrivals="poisson"))


def test_the_summary_adds_the_generators_stage_targets_once_per_generator():
    recs = stage_records(parse_stages("4:20,4:0"))
    half = stage_records(scale_stages(parse_stages("4:20,4:0"), 0.5))
    runs = [
        {"start": 100.0, "process_index": 0, "seed": 1, "arrivals": "even", "stages": half},
        {"start": 100.0, "process_index": 1, "seed": 1, "arrivals": "even", "stages": half},  # same generator
        {"start": 100.2, "process_index": 0, "seed": 2, "arrivals": "even", "stages": half},  # another one
    ]
    shape = load_shape(runs)
    assert shape["seed"] == [1, 2] and shape["arrivals"] == "even"
    assert [(s["start_s"], s["end_s"], s["target_from"], s["target_to"]) for s in shape["stages"]] == [
        (r["start_s"], r["end_s"], r["target_from"], r["target_to"]) for r in recs
    ]
    assert load_shape([{"start": 1.0, "seed": 3, "arrivals": "even", "stages": []}]) == {
        "seed": 3,
        "arrivals": "even",
        "stages": [],
    }
