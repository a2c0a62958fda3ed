"""Stages (k6's ``stages``) and Poisson arrivals: the schedules of a staged or Poisson run.  Pure: no I/O.

``--stages DURATION:TARGET[:ARRIVALS],...`` (e.g. ``30:100,60:100,30:0``) is a piecewise-linear curve: each
stage moves its target linearly from the previous stage's target to its own over its duration.

- Closed model (no ``--arrival-rate``): the target is concurrent sessions, from 0.  Slot *k* (0-based) is
  active while ``target(t) > k``; :func:`closed_slots` gives each slot's active intervals (a spike can
  activate a slot twice).  A slot runs sessions back to back while it is active (kit.client._load).
- Open model (``--arrival-rate R``): the target is sessions started per second, from R.  :func:`open_arrivals`
  gives the arrival instants over the rate curve ``r(t)``, whose integral ``L(t)`` counts the sessions due.

Arrivals (``--arrivals``, or a stage's own ``:even`` / ``:poisson``):

- ``even``: open, the *n*-th arrival (n = 1, 2, ...) where ``L(t)`` reaches n, so a run starts exactly the
  integral's sessions (rounded down); closed, slot *k* starts where the target crosses *k*.
- ``poisson``: open, a Poisson process of rate ``r(t)`` by time-rescaling: cumulative sums of Exp(1) draws
  on the ``L`` axis, mapped back through ``L``'s inverse; closed, the slots a ramp-up stage starts begin at
  the sorted draws of as many uniforms over the stage (a Poisson process conditioned on the stage's count:
  the same mean curve, with the bunching and gaps of real arrivals).  Retirement on a ramp-down stays at the
  crossing: a Poisson process describes arrivals, not departures.

Every draw comes from a ``random.Random`` seeded with the run's seed and the stage's index, so one seed gives
one schedule, in every process: each process walks the whole global schedule and takes its share, arrival
(or slot) *g* going to process ``g % processes`` like :func:`kit.client._load.schedule` does.  The open
schedule is a lazy generator (a run can have 100,000+ sessions); the closed one is one entry per slot.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Iterator, Sequence
from typing import Any

from kit.config import ConfigError
from kit.options import ARRIVALS

__all__ = [
    "ARRIVALS",
    "Stage",
    "parse_stages",
    "format_stages",
    "scale_stages",
    "stages_length",
    "peak_target",
    "slot_count",
    "rate_integral",
    "stage_records",
    "open_arrivals",
    "closed_slots",
]

#: seconds in a duration's unit suffix (a bare number is seconds)
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
#: slack on a cumulative count: 0.1 + 0.2 sessions must still make 0.3 (float sums are not exact)
_EPS = 1e-9

_FORM = "a stage is DURATION:TARGET[:ARRIVALS], e.g. 30:100 or 20:50:poisson"


@dataclasses.dataclass(frozen=True)
class Stage:
    """One stage: *duration* seconds ending at *target* (closed: sessions; open: sessions per second);
    *arrivals*: ``even`` or ``poisson`` for this stage alone (None: the run's ``--arrivals``)."""

    duration: float
    target: float
    arrivals: str | None = None


def _duration(word: str) -> float | None:
    """Seconds of a DURATION (``30``, ``30s``, ``2m``, ``1h``); None when it is not one (or negative)."""
    word = word.strip()
    unit = _UNITS.get(word[-1:].lower(), 0.0) if word else 0.0
    try:
        v = float(word[:-1] if unit else word) * (unit or 1.0)
    except ValueError:
        return None
    return v if math.isfinite(v) and v >= 0 else None


def _number(word: str) -> float | None:
    """A finite number >= 0, else None."""
    try:
        v = float(word)
    except ValueError:
        return None
    return v if math.isfinite(v) and v >= 0 else None


def _stage(n: int, item: str) -> Stage:
    """Item *n* (1-based) of a ``--stages`` value; ConfigError naming it."""
    where = f"--stages item {n} {item.strip()!r:.40}"
    parts = item.split(":")
    if len(parts) not in (2, 3):
        raise ConfigError(f"{where}: {_FORM}")
    duration, target = _duration(parts[0]), _number(parts[1].strip())
    if duration is None:
        raise ConfigError(f"{where}: DURATION must be seconds >= 0 (a number, or with s, m or h), e.g. 30, 30s or 2m")
    if target is None:
        raise ConfigError(f"{where}: TARGET must be a number >= 0, e.g. 30:100")
    arrivals = parts[2].strip().lower() if len(parts) == 3 else None
    if arrivals is not None and arrivals not in ARRIVALS:
        raise ConfigError(f"{where}: ARRIVALS must be {' or '.join(ARRIVALS)}, e.g. 20:50:poisson")
    return Stage(duration, target, arrivals)


def parse_stages(text: str) -> tuple[Stage, ...]:
    """The stages of a ``--stages`` value (``DURATION:TARGET[:ARRIVALS],...``); ConfigError, one line naming
    the item that is wrong and how to write it."""
    items = text.split(",")
    if not text.strip():
        raise ConfigError(f"--stages {text!r:.40}: give at least one stage: {_FORM}")
    stages = tuple(_stage(n, item) for n, item in enumerate(items, 1))
    length = stages_length(stages)
    if not math.isfinite(length) or length <= 0:
        raise ConfigError(f"--stages {text!r:.40}: the stages last {length:g} s: give a stage a DURATION > 0")
    return stages


def _num(v: float) -> str:
    """*v* as text that reads back as the same float (whole numbers without a point)."""
    return str(int(v)) if v.is_integer() and abs(v) < 1e15 else repr(v)


def format_stages(stages: Sequence[Stage]) -> str:
    """*stages* as a ``--stages`` value (:func:`parse_stages` reads it back as the same stages)."""
    return ",".join(
        f"{_num(st.duration)}:{_num(st.target)}" + (f":{st.arrivals}" if st.arrivals else "") for st in stages
    )


def scale_stages(stages: Sequence[Stage], factor: float) -> tuple[Stage, ...]:
    """*stages* with every target times *factor*: a generator's share of a run's stages.  Rounded to 1e-9,
    so that a share meant to be whole (34 of 100 is 0.34) does not come out a hair above it and hold one
    more slot (a closed slot k is active while the target is above k)."""
    if not (math.isfinite(factor) and factor >= 0):
        raise ValueError(f"scale_stages: factor {factor!r} must be a finite number >= 0")
    return tuple(dataclasses.replace(st, target=round(st.target * factor, 9)) for st in stages)


def stages_length(stages: Sequence[Stage]) -> float:
    """Seconds from the first stage's start to the last one's end."""
    return math.fsum(st.duration for st in stages)


def peak_target(stages: Sequence[Stage], start: float = 0.0) -> float:
    """The highest target the curve reaches (closed: concurrent sessions), from *start* (closed: 0)."""
    return max([start, *(st.target for st in stages)])


def slot_count(stages: Sequence[Stage]) -> int:
    """The closed model's slots: every k with the peak target above it."""
    return math.ceil(peak_target(stages))


def _segments(stages: Sequence[Stage], start: float) -> Iterator[tuple[int, Stage, float, float, float]]:
    """(index, stage, its start offset, its level from, its level to) of each stage."""
    t, level = 0.0, start
    for i, st in enumerate(stages):
        yield i, st, t, level, st.target
        t, level = t + st.duration, st.target


def rate_integral(stages: Sequence[Stage], start_rate: float) -> float:
    """The open model's sessions due over the whole curve (its rate's integral), from *start_rate*: what
    even arrivals start (rounded down), and the mean of what Poisson arrivals do."""
    return math.fsum((a + b) / 2 * st.duration for _, st, _, a, b in _segments(stages, start_rate))


def stage_records(stages: Sequence[Stage], start: float = 0.0, arrivals: str = ARRIVALS[0]) -> list[dict[str, Any]]:
    """The run record's ``stages``: ``index``, ``start_s`` / ``end_s`` (seconds from the run's start),
    ``target_from`` / ``target_to`` (from *start*: 0 closed, the arrival rate open) and the ``arrivals`` the
    stage used (its own, else the run's *arrivals*)."""
    return [
        {
            "index": i,
            "start_s": round(t, 6),
            "end_s": round(t + st.duration, 6),
            "target_from": a,
            "target_to": b,
            "arrivals": st.arrivals or arrivals,
        }
        for i, st, t, a, b in _segments(stages, start)
    ]


def _rng(seed: int, index: int) -> random.Random:
    """Stage *index*'s draws: the same in every process, and apart from every other stage's."""
    return random.Random(f"{seed}:stage:{index}")


def _inverse(u: float, a: float, b: float, d: float) -> float:
    """The offset in a stage (rate *a* to *b* over *d* s) where its rate's integral reaches *u*: the root of
    ``a t + (b - a) t^2 / 2d = u`` in the form that stays exact as the slope goes to 0, within [0, d]."""
    if d <= 0 or u <= 0:
        return 0.0
    m = (b - a) / d
    root = math.sqrt(max(0.0, a * a + 2 * m * u))
    return min(d, 2 * u / (a + root)) if a + root > 0 else d


def open_arrivals(
    stages: Sequence[Stage],
    start_rate: float,
    *,
    arrivals: str = ARRIVALS[0],
    seed: int = 0,
    process_index: int = 0,
    processes: int = 1,
) -> Iterator[tuple[int, float]]:
    """(global session index, seconds after t0) of this process's arrivals, in time order, over the rate
    curve of *stages* from *start_rate* (lazy).  Stage by stage on the integral's axis: even arrivals at each
    whole number it passes, Poisson ones at Exp(1) steps from where the stage starts (memoryless, so a stage
    boundary changes nothing but the rate)."""
    g, done = 0, 0.0  # arrivals so far; the integral at the stage's start
    for i, st, t, a, b in _segments(stages, start_rate):
        d, area = st.duration, (a + b) / 2 * st.duration
        if (st.arrivals or arrivals) == "poisson":
            rng = _rng(seed, i)
            u = rng.expovariate(1.0)
            while u <= area:
                if g % processes == process_index:
                    yield g, t + _inverse(u, a, b, d)
                g += 1
                u += rng.expovariate(1.0)
        else:
            for n in range(math.floor(done + _EPS) + 1, math.floor(done + area + _EPS) + 1):
                if g % processes == process_index:
                    yield g, t + _inverse(n - done, a, b, d)
                g += 1
        done += area


def _crossings(i: int, st: Stage, a: float, b: float, poisson: bool, seed: int) -> Iterator[tuple[int, float]]:
    """(slot, offset in the stage) of each slot the stage's target crosses: upward from *a* to *b* (the slot
    starts; Poisson: at the sorted uniform draws), downward (the slot retires), in slot order."""
    d = st.duration
    if b > a:
        ks = range(math.ceil(a), math.ceil(b))  # a <= k < b
        if poisson:
            rng = _rng(seed, i)
            yield from zip(ks, sorted(rng.random() * d for _ in ks))
        else:
            yield from ((k, d * (k - a) / (b - a)) for k in ks)
    elif b < a:
        yield from ((k, d * (a - k) / (a - b)) for k in range(math.ceil(b), math.ceil(a)))  # b <= k < a


def closed_slots(
    stages: Sequence[Stage],
    *,
    arrivals: str = ARRIVALS[0],
    seed: int = 0,
    process_index: int = 0,
    processes: int = 1,
) -> list[tuple[int, tuple[tuple[float, float], ...]]]:
    """(slot, its active intervals as (start, end) seconds after t0) of this process's slots, in slot order.
    Slot k is active while the target (from 0) is above k; whatever is active at the end of the last stage
    retires there.  An interval of no length (a stage of no duration) is left out."""
    starts: dict[int, float] = {}
    out: dict[int, list[tuple[float, float]]] = {}
    end = 0.0
    for i, st, t, a, b in _segments(stages, 0.0):
        poisson = (st.arrivals or arrivals) == "poisson"
        for k, off in _crossings(i, st, a, b, poisson, seed):
            if k % processes != process_index:
                continue
            if b > a:
                starts[k] = t + off
            elif k in starts:
                on = starts.pop(k)
                if t + off > on:
                    out.setdefault(k, []).append((on, t + off))
        end = t + st.duration
    for k, on in starts.items():
        if end > on:
            out.setdefault(k, []).append((on, end))
    return [(k, tuple(out[k])) for k in sorted(out)]
