"""Pure planning for ``fab run``: presets, the client split, thresholds, clock offsets, run ids.

Nothing here does I/O; ``_run`` feeds it facts gathered from the hosts.

Thresholds are ``<metric><op><value>[unit]``: ``p99<2s``, ``p50<=500ms``,
``success>=99.9%``, ``lost==0``, ``ttft_p99<300ms``, ``tps>=300``.  A time
metric is ``[<histogram>_]<stat>`` with histogram one of :data:`TIME_HISTOGRAMS`
(default ``latency``) and stat one of :data:`TIME_STATS`; its value needs a
unit (``us``, ``ms``, ``s``, ``m``).  ``success`` (sessions) and
``query_success`` are percentages; :data:`COUNT_METRICS` and :data:`RATE_METRICS`
are bare numbers; ``generator_ok`` (:data:`FLAG_METRICS`) is written bare.  A malformed threshold raises :class:`PlanError` saying how
to write it.

A run is always judged: :data:`DEFAULT_THRESHOLDS` (``success>=99%``, ``lost==0``) apply to every
run unless ``--no-default-thresholds`` is given, and a ``--threshold`` on the same metric replaces
the default for that metric (``success>=95%`` instead of ``success>=99%``); see
:func:`judged_thresholds`.
"""

from __future__ import annotations

import dataclasses
import math
import operator
import re
from collections.abc import Mapping, Sequence

from kit import contract

__all__ = [
    "PlanError",
    "PRESETS",
    "Preset",
    "Threshold",
    "parse_threshold",
    "split_clients",
    "plan_generators",
    "GeneratorSlot",
    "clock_offset",
    "make_run_id",
    "TIME_HISTOGRAMS",
    "TIME_STATS",
    "COUNT_METRICS",
    "RATE_METRICS",
    "FLAG_METRICS",
    "DEFAULT_THRESHOLDS",
    "judged_thresholds",
]


class PlanError(ValueError):
    """A run option is malformed or impossible; the message says which and how to fix it."""


# -- presets -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Preset:
    clients: int
    queries: int
    ramp: float | None
    note: str


#: The seed kit's scenarios.  A ramp (sessions started per second) replaces the seed's all-at-once
#: burst for the big ones, since that burst is what caused its failures; --ramp overrides it.
PRESETS: dict[str, Preset] = {
    "smoke": Preset(10, 1, None, "quick validation (the seed's smoke: 10 clients x 1 query)"),
    "standard": Preset(20, 3, None, "the seed's standard test: 20 clients x 3 queries"),
    "load": Preset(1000, 10, 200.0, "moderate load: 1000 clients x 10 queries"),
    "stress": Preset(5000, 20, 500.0, "high load: 5000 clients x 20 queries"),
    "soak": Preset(100, 100, 20.0, "long-running: 100 clients x 100 queries"),
}


# -- thresholds ----------------------------------------------------------------------------------

TIME_HISTOGRAMS = ("latency", "service_latency", "ttft", "inter_token", "delivery", "create", "connect")
TIME_STATS = ("p50", "p90", "p95", "p99", "p99_9", "p999", "min", "max", "avg")
PERCENT_METRICS = ("success", "query_success")
COUNT_METRICS = (
    "lost",
    "duplicated",
    "out_of_order",
    "errors",
    "failed_sessions",
    "failed_queries",
    "reconnect_attempts",
    "reconnects",
)
RATE_METRICS = ("qps", "tps")
#: yes/no figures, written bare: ``generator_ok`` passes when no generator process was overloaded (its
#: CPU or event-loop lag: the run then measured the kit, not the system under test)
FLAG_METRICS = ("generator_ok",)

_OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge, "==": operator.eq, "!=": operator.ne}
_TIME_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}
_RE = re.compile(
    r"^\s*(?P<metric>[a-z][a-z0-9_]*)\s*(?P<op><=|>=|==|!=|<|>)\s*"
    r"(?P<value>[0-9]+(?:\.[0-9]+)?)\s*(?P<unit>us|ms|s|m|%)?\s*$"
)
_HELP = "write e.g. 'p99<2s', 'p50<=500ms', 'success>=99.9%', 'lost==0', 'tps>=300'"


@dataclasses.dataclass(frozen=True)
class Threshold:
    """One pass/fail rule; ``value`` is in base units (seconds, fraction 0..1, count, per second)."""

    text: str
    metric: str
    kind: str  # time | percent | count | rate
    op: str
    value: float
    histogram: str | None = None
    stat: str | None = None
    #: one of DEFAULT_THRESHOLDS, applied because the user named no threshold on its metric
    default: bool = False

    def check(self, actual: float | None) -> bool:
        return actual is not None and _OPS[self.op](actual, self.value)


def _split_time_metric(metric: str) -> tuple[str | None, str | None]:
    """``p99`` -> (latency, p99); ``ttft_p99`` -> (ttft, p99); ``p999`` means ``p99_9``; else (None, None)."""
    for stat in sorted(TIME_STATS, key=len, reverse=True):
        if metric == stat:
            return "latency", "p99_9" if stat == "p999" else stat
        if metric.endswith("_" + stat) and metric[: -len(stat) - 1] in TIME_HISTOGRAMS:
            return metric[: -len(stat) - 1], "p99_9" if stat == "p999" else stat
    return None, None


def parse_threshold(text: str) -> Threshold:
    bare = (text or "").strip()
    if bare in FLAG_METRICS or bare.replace(" ", "") in (f + "==1" for f in FLAG_METRICS):
        return Threshold(text, bare.split("=")[0].strip(), "flag", "==", 1.0)
    m = _RE.match(text or "")
    if not m:
        raise PlanError(f"threshold {text!r} is not <metric><op><value>: {_HELP}")
    metric, op, value, unit = m["metric"], m["op"], float(m["value"]), m["unit"]
    if metric in PERCENT_METRICS:
        if unit != "%":
            raise PlanError(f"threshold {text!r}: {metric} is a percentage, write e.g. '{metric}>=99.9%'")
        if value > 100:
            raise PlanError(f"threshold {text!r}: a percentage cannot exceed 100%")
        return Threshold(text, metric, "percent", op, value / 100.0)
    if metric in COUNT_METRICS or metric in RATE_METRICS:
        if unit is not None:
            raise PlanError(f"threshold {text!r}: {metric} is a plain number, write e.g. '{metric}{op}{m['value']}'")
        return Threshold(text, metric, "count" if metric in COUNT_METRICS else "rate", op, value)
    hist, stat = _split_time_metric(metric)
    if stat is not None:
        if unit not in _TIME_UNITS:
            raise PlanError(f"threshold {text!r}: {metric} is a time, give a unit: e.g. '{metric}{op}{m['value']}ms'")
        return Threshold(text, metric, "time", op, value * _TIME_UNITS[unit], hist, stat)
    if metric in FLAG_METRICS:
        raise PlanError(f"threshold {text!r}: {metric} is yes/no, write it bare: '{metric}'")
    known = ", ".join(
        [*TIME_STATS[:6], "ttft_p99", "delivery_p99", *PERCENT_METRICS, *COUNT_METRICS, *RATE_METRICS, *FLAG_METRICS]
    )
    raise PlanError(f"threshold {text!r} names unknown metric {metric!r}: use one of {known}")


#: What every run is judged by unless ``--no-default-thresholds``: a run in which sessions failed or tokens
#: were lost does not pass because no one asked (issue 14: 5 of 20,000 sessions succeeded and ``fab run``
#: exited 0).  99 % leaves room for a rare session a real network drops; a lost token means a stream broke
#: (what was published while a socket was down), which a healthy system under a load it carries never shows.
DEFAULT_THRESHOLDS = ("success>=99%", "lost==0")


def judged_thresholds(given: Sequence[Threshold], *, defaults: bool = True) -> list[Threshold]:
    """The thresholds a run is judged by: *given* (the user's, in their order), then, with *defaults*, each
    of :data:`DEFAULT_THRESHOLDS` whose metric no given threshold names (marked ``default``)."""
    named = {t.metric for t in given}
    out = list(given)
    if defaults:
        out += [
            dataclasses.replace(d, default=True)
            for d in map(parse_threshold, DEFAULT_THRESHOLDS)
            if d.metric not in named
        ]
    return out


# -- the client split ------------------------------------------------------------------------------


def split_clients(total: int, weights: Mapping[str, int]) -> dict[str, int]:
    """Split *total* over hosts in proportion to *weights* (cores); exact, deterministic (largest remainder)."""
    if total < 0:
        raise PlanError(f"--clients {total}: give a number >= 0")
    if not weights:
        raise PlanError("no generator hosts: add hosts to the inventory's generators group")
    bad = [h for h, w in weights.items() if w < 1]
    if bad:
        raise PlanError(f"generator host(s) {', '.join(bad)} report no cores: check `nproc` there")
    wsum = sum(weights.values())
    exact = {h: total * w / wsum for h, w in weights.items()}
    share = {h: math.floor(x) for h, x in exact.items()}
    left = total - sum(share.values())
    for h in sorted(weights, key=lambda h: (-(exact[h] - share[h]), -weights[h], h))[:left]:
        share[h] += 1
    return share


@dataclasses.dataclass(frozen=True)
class GeneratorSlot:
    """One ``python -m kit.client`` invocation: on *host*, against balancer *haproxy*."""

    host: str
    haproxy: str
    processes: int
    clients: int
    arrival_rate: float | None
    label: str  # unique per run: "<host>" or "<host>-<i>"


def plan_generators(
    total: int, cores: Mapping[str, int], haproxies: Sequence[str], arrival_rate: float | None = None
) -> list[GeneratorSlot]:
    """Split clients over hosts by cores and over one process per core; give each process a balancer.

    Processes are numbered across all hosts and take the balancers round-robin; on one host the
    processes of one balancer form one invocation (``--processes k``).  The clients are split evenly over
    the balancers that got a process, then over each balancer's processes: every balancer carries its
    even share even when the processes do not divide among them (4 processes over 3 balancers: 2 of
    the processes share one balancer's share; a balancer given two shares would pass its ~9,900-session
    cap first).  Hosts whose share is 0 clients get no slot.  The arrival rate (open model) is split in
    proportion to the clients.
    """
    if not haproxies:
        raise PlanError("no haproxy hosts: add at least one host to the inventory's haproxy group")
    per_host = split_clients(total, cores)
    procs: list[tuple[str, str]] = []  # (host, balancer) per process
    for host in sorted(cores):
        for _ in range(min(cores[host], per_host[host])):
            procs.append((host, haproxies[len(procs) % len(haproxies)]))
    used = {lb: sum(1 for _, b in procs if b == lb) for lb in haproxies if any(b == lb for _, b in procs)}
    per_lb = split_clients(total, {lb: 1 for lb in used})
    by_slot: dict[tuple[str, str], list[int]] = {}
    seen: dict[str, int] = {}
    # each balancer's share over its processes; the remainder goes one per process taking the hosts in
    # turn (first process of each host, then the second ...), so hosts keep shares as even as their cores
    rank = [sum(1 for h, _ in procs[:i] if h == procs[i][0]) for i in range(len(procs))]
    for i in sorted(range(len(procs)), key=lambda i: (rank[i], procs[i][0])):
        host, lb = procs[i]
        k = seen[lb] = seen.get(lb, 0) + 1
        n = per_lb[lb] // used[lb] + (1 if k <= per_lb[lb] % used[lb] else 0)
        by_slot.setdefault((host, lb), []).append(n)
    slots: list[GeneratorSlot] = []
    for host in sorted(cores):
        mine = [(lb, ns) for (h, lb), ns in by_slot.items() if h == host and sum(ns) > 0]
        for i, (lb, ns) in enumerate(mine):
            rate = None if arrival_rate is None else arrival_rate * sum(ns) / total
            label = host if len(mine) == 1 else f"{host}-{i + 1}"
            slots.append(GeneratorSlot(host, lb, len(ns), sum(ns), rate, label))
    return slots


# -- clocks ---------------------------------------------------------------------------------------


def clock_offset(samples: Sequence[tuple[int, int, int]]) -> dict[str, float]:
    """Offset of a remote clock from (local send ns, remote clock ns, local receive ns) samples.

    The sample with the smallest round trip wins (least queueing); the remote reading is assumed
    taken half-way, so ``offset = remote - (t0 + t1) / 2`` with an uncertainty of half the round
    trip.  Returns seconds: ``offset_s`` (positive: remote ahead), ``uncertainty_s``, ``rtt_s``.
    """
    if not samples:
        raise PlanError("no clock samples")
    t0, remote, t1 = min(samples, key=lambda s: s[2] - s[0])
    if t1 < t0:
        raise PlanError("clock sample with negative round trip: local clock went backwards")
    rtt = t1 - t0
    return {
        "offset_s": (remote - (t0 + t1) / 2) / 1e9,
        "uncertainty_s": rtt / 2 / 1e9,
        "rtt_s": rtt / 1e9,
        "samples": len(samples),
    }


def make_run_id(clients: int, now: float | None = None, taken: Sequence[str] = ()) -> str:
    """``20261128-101500-c500``; a suffix ``-2``, ``-3`` ... when that id is taken."""
    base = contract.run_id(clients, now)
    run_id, n = base, 1
    while run_id in taken:
        n += 1
        run_id = f"{base}-{n}"
    return run_id
