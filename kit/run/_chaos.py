"""Faults on purpose (``fab run --chaos SPEC``): the spec, its targets and its effect on the run (pure).

A spec is ``ACTION:TARGET@AT[+FOR][=ARG]``::

    kill:wsproxy@20s            SIGKILL one wsproxy instance 20 s after the agreed start
    restart:redis@30s           graceful restart through the service manager
    pause:wsproxy[1]@15s+5s     SIGSTOP the second wsproxy instance, SIGCONT 5 s later
    partition:wsproxy@40s+3s    drop traffic between the first wsproxy host and every other host
    delay:wsproxy@10s+20s=50ms  add 50 ms to the first wsproxy host's outgoing traffic for 20 s
    kill:wsproxy[all]@20s       every instance of the group at once

TARGET is ``NAME`` or ``NAME[SEL]``: NAME an inventory group or a host name, SEL an index (0-based),
``all``, or (for a group) a host name.  What the index counts depends on the action: the process
actions (kill, restart, pause) count the service instances of the group (``wsproxy-0``,
``wsproxy-1`` of each host of the group, hosts in inventory order; a host name: that host's kit
services); the network actions (partition, delay) count the group's hosts.  Without SEL the fault
hits one unit, the first.  Times take ``ms``, ``s`` or ``m`` (bare numbers are seconds).

:func:`recovery` reads the merged per-second timeline on two measures, each against the 10 s before
the fault: the tokens each active session received per second back to 90 % of their median there
(per session, so that a ramp before or sessions ending after the fault are not mistaken for the
fault), and the token delivery p99 back within 1.5x (or 10 ms) of their median there; each must hold for
:data:`RECOVERY_HOLD_S` whole seconds in a row (or, when the
load ends sooner, for every second it lasted: ``held_s`` says how long), counted from the second after
the one holding the fault's end (that second mixes before and after).  Tokens are judged on the mean of
those seconds, each of them at least half the baseline: a fault that stalls every session lines their
queries up, and then every second holding their think times dips together (20, 20, 15 tokens per session
and second), so a second-by-second test reported a 2 s Redis pause as recovered only after 20 s, when
the sessions drifted apart again (a CI run, 2026-12-05).  The baseline is likewise the median of the
means of RECOVERY_HOLD_S seconds.  The run has
recovered when both have (1 s resolution); a measure that cannot be judged (no load before the fault,
no delivery figures in an old run, the load ended first) says why in ``note`` and gives no number.
What is attributed to a fault is what happened from its start to its recovery: reconnect attempts,
failed queries (timeline) and lost tokens (queries that were in flight then).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from kit.inventory import Inventory

__all__ = [
    "ACTIONS",
    "PROCESS_ACTIONS",
    "NETWORK_ACTIONS",
    "ChaosError",
    "ChaosSpec",
    "FaultTarget",
    "parse_chaos",
    "resolve_targets",
    "recovery",
    "attribute",
    "BASELINE_S",
    "RECOVERED_SHARE",
    "P99_RECOVERED_FACTOR",
    "P99_RECOVERED_SLACK_MS",
    "RECOVERY_HOLD_S",
    "RECOVERED_FLOOR_SHARE",
]

PROCESS_ACTIONS = ("kill", "restart", "pause")
NETWORK_ACTIONS = ("partition", "delay")
ACTIONS = PROCESS_ACTIONS + NETWORK_ACTIONS
#: actions that last (FOR required) and those that are instantaneous (FOR refused)
_LASTING = ("pause", "partition", "delay")
#: seconds of timeline before a fault that make its baseline
BASELINE_S = 10
#: share of the baseline tokens/s that counts as recovered
RECOVERED_SHARE = 0.9
#: the delivery p99 counts as recovered within this factor of its baseline, or within this many ms of
#: it (a 1 ms baseline on a quiet machine would otherwise ask for 1.5 ms: noise, not a fault)
P99_RECOVERED_FACTOR = 1.5
P99_RECOVERED_SLACK_MS = 10.0
#: whole seconds in a row a measure must stay recovered
RECOVERY_HOLD_S = 3
#: within those seconds, no second's tokens per session below this share of the baseline (their mean is
#: judged against RECOVERED_SHARE: a burst of catching up must not hide a second with nothing)
RECOVERED_FLOOR_SHARE = 0.5
#: the largest delay the kit injects (ms)
MAX_DELAY_MS = 10_000.0

_SPEC = re.compile(
    r"^(?P<action>[a-z]+):(?P<name>[A-Za-z0-9_.-]+)(?:\[(?P<sel>[A-Za-z0-9_.-]+)\])?"
    r"@(?P<at>[0-9.]+[a-z]*)(?:\+(?P<for>[0-9.]+[a-z]*))?(?:=(?P<arg>[0-9.]+[a-z]*))?$"
)
_TIME = re.compile(r"^(?P<n>[0-9]+(?:\.[0-9]+)?)(?P<unit>ms|s|m)?$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}
FORMAT = "ACTION:TARGET@AT[+FOR][=ARG], e.g. kill:wsproxy@20s, pause:redis@15s+5s, delay:wsproxy@10s+20s=50ms"


class ChaosError(ValueError):
    """A --chaos spec that cannot be run; the message is one line naming the spec and the fix."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class ChaosSpec:
    text: str
    action: str
    name: str
    #: None (one unit: the first), an index, "all", or a host name (for a group)
    select: int | str | None
    at_s: float
    for_s: float = 0.0
    #: delay: milliseconds added
    arg_ms: float | None = None


@dataclasses.dataclass(frozen=True)
class FaultTarget:
    """One unit a fault hits: a host, and for process actions one of its programs."""

    host: str
    program: str | None = None

    def label(self) -> str:
        return f"{self.host}:{self.program}" if self.program else self.host


def _seconds(raw: str, what: str, spec: str) -> float:
    m = _TIME.match(raw)
    if not m:
        raise ChaosError(f"--chaos {spec!r}: {what} {raw!r} is not a time (e.g. 20s, 500ms, 1.5m)")
    return float(m["n"]) * _UNIT[m["unit"]]


def parse_chaos(text: str) -> ChaosSpec:
    """The spec in *text*; raises ChaosError with one line naming what is wrong."""
    raw = text.strip()
    m = _SPEC.match(raw)
    if not m:
        raise ChaosError(f"--chaos {raw!r}: not {FORMAT}")
    action = m["action"]
    if action not in ACTIONS:
        raise ChaosError(f"--chaos {raw!r}: unknown action {action!r}: choose one of {', '.join(ACTIONS)}")
    at = _seconds(m["at"], "AT", raw)
    dur = _seconds(m["for"], "FOR", raw) if m["for"] else 0.0
    if action in _LASTING and dur <= 0:
        raise ChaosError(f"--chaos {raw!r}: {action} lasts: give +FOR, e.g. {action}:{m['name']}@{m['at']}+5s")
    if action not in _LASTING and m["for"]:
        raise ChaosError(f"--chaos {raw!r}: {action} is instantaneous: drop +{m['for']}")
    arg_ms = None
    if action == "delay":
        if not m["arg"]:
            raise ChaosError(f"--chaos {raw!r}: delay needs =MS, e.g. delay:{m['name']}@{m['at']}+{m['for']}=50ms")
        arg_ms = _seconds(m["arg"] if m["arg"][-1].isalpha() else m["arg"] + "ms", "ARG", raw) * 1000.0
        if not 0 < arg_ms <= MAX_DELAY_MS:
            raise ChaosError(f"--chaos {raw!r}: give a delay above 0 and at most {MAX_DELAY_MS:g} ms")
    elif m["arg"]:
        raise ChaosError(f"--chaos {raw!r}: {action} takes no =ARG")
    sel_raw = m["sel"]
    select: int | str | None
    if sel_raw is None:
        select = None
    elif sel_raw.isdigit():
        select = int(sel_raw)
    else:
        select = sel_raw
    return ChaosSpec(text=raw, action=action, name=m["name"], select=select, at_s=at, for_s=dur, arg_ms=arg_ms)


def resolve_targets(
    spec: ChaosSpec, inv: Inventory, programs: Mapping[str, Sequence[tuple[str, str]]]
) -> list[FaultTarget]:
    """The units *spec* hits in *inv*; *programs* maps each host to its ``(component, program)`` list.

    Raises ChaosError naming the groups/hosts there are when the target does not exist.
    """
    network = spec.action in NETWORK_ACTIONS
    name = spec.name
    if name in inv.groups:
        hosts = list(inv.groups[name])
        if network:
            units = [FaultTarget(h) for h in hosts]
        else:
            units = [FaultTarget(h, p) for h in hosts for comp, p in programs.get(h, ()) if comp == name]
            if not units:
                raise ChaosError(
                    f"--chaos {spec.text!r}: group {name!r} runs no kit service to {spec.action} "
                    "(kill/restart/pause hit redis, haproxy, sim or wsproxy)"
                )
    elif name in inv.hosts:
        if isinstance(spec.select, str) and spec.select != "all":
            raise ChaosError(f"--chaos {spec.text!r}: [{spec.select}] selects a host of a group; {name} is a host")
        units = [FaultTarget(name)] if network else [FaultTarget(name, p) for _, p in programs.get(name, ())]
        if not units:
            raise ChaosError(f"--chaos {spec.text!r}: host {name} runs no kit service to {spec.action}")
    else:
        raise ChaosError(
            f"--chaos {spec.text!r}: {name!r} is neither a group ({', '.join(sorted(inv.groups))}) "
            f"nor a host of the inventory"
        )
    units = _select(spec, units, network)
    if network:
        for u in units:
            if inv.hosts[u.host].local:
                raise ChaosError(
                    f"--chaos {spec.text!r}: {spec.action} needs hosts with their own network "
                    f"(a lab or real hosts): {u.host} is this machine (ansible_connection: local)"
                )
    return units


def _select(spec: ChaosSpec, units: list[FaultTarget], network: bool) -> list[FaultTarget]:
    name, sel = spec.name, spec.select
    if sel is None:
        return units[:1]
    if sel == "all":
        return units
    if isinstance(sel, int):
        if sel >= len(units):
            raise ChaosError(
                f"--chaos {spec.text!r}: index {sel} but {name} has {len(units)} "
                f"{'host' if network else 'instance'}(s) (0..{len(units) - 1})"
            )
        return [units[sel]]
    mine = [u for u in units if u.host == sel]
    if not mine:
        raise ChaosError(
            f"--chaos {spec.text!r}: {sel!r} is not a host of group {name} "
            f"({', '.join(sorted({u.host for u in units}))})"
        )
    return mine[:1]


def _per_second(rows: Iterable[Mapping[str, Any]], field: str) -> dict[int, float | None]:
    out: dict[int, float | None] = {}
    for r in rows:
        v = r.get(field)
        out[int(r["second"])] = None if v in (None, "") else float(v)
    return out


def _held(series: Mapping[int, float | None], first: int, ok: Any, mean_ok: Any = None) -> tuple[int, int] | None:
    """``(second, seconds held)``: the first second from *first* on that starts RECOVERY_HOLD_S known seconds in a
    row, each satisfying *ok* and, given *mean_ok*, their mean satisfying it; or, when the load ended sooner,
    fewer such seconds that last to the last second with a value (held as long as there was load to hold it)."""
    known = [s for s, v in series.items() if v is not None]
    last = max(known, default=first - 1)
    for s in range(first, last + 1):
        vals = [series.get(t) for t in range(s, min(s + RECOVERY_HOLD_S, last + 1))]
        good = [v for v in vals if v is not None and ok(v)]
        if len(good) == len(vals) and (mean_ok is None or mean_ok(sum(good) / len(good))):
            return s, len(good)
    return None


def _window_means(values: Sequence[float]) -> list[float]:
    """The means of every RECOVERY_HOLD_S consecutive *values* (the values themselves when fewer)."""
    w = RECOVERY_HOLD_S
    if len(values) < w:
        return list(values)
    return [sum(values[i : i + w]) / w for i in range(len(values) - w + 1)]


def _measure(
    series: Mapping[int, float | None],
    start: float,
    end: float,
    what: str,
    baseline_of: Any,
    ok_for: Any,
    mean_ok_for: Any = None,
) -> dict[str, Any]:
    """One measure's recovery: every second of RECOVERY_HOLD_S judged by *ok_for* (of the baseline) and, given
    *mean_ok_for*, their mean by it too (:func:`_held`)."""
    s0 = int(start)
    known = [s for s, v in series.items() if v is not None]
    window = [series[s] for s in range(max(min(known, default=s0), s0 - BASELINE_S), s0) if series.get(s) is not None]
    if not window:
        return {
            "baseline": None,
            "recovered_at": None,
            "recovery_s": None,
            "note": f"no {what} in the {BASELINE_S} s before the fault: no baseline",
        }
    base = baseline_of(window)
    if not base:
        return {
            "baseline": 0.0,
            "recovered_at": None,
            "recovery_s": None,
            "note": f"{what} was 0 in the {BASELINE_S} s before the fault: no baseline",
        }
    found = _held(series, math.ceil(end), ok_for(base), None if mean_ok_for is None else mean_ok_for(base))
    if found is None:
        return {
            "baseline": round(base, 3),
            "recovered_at": None,
            "recovery_s": None,
            "note": f"{what} was not back before the load ended",
        }
    s, held = found
    return {
        "baseline": round(base, 3),
        "recovered_at": float(max(s, end)),
        "recovery_s": round(max(0.0, s - end), 3),
        "held_s": held,
        "note": "" if held >= RECOVERY_HOLD_S else f"{what} back for the {held} s the load lasted",
    }


def _median(values: Sequence[float]) -> float:
    return sorted(values)[len(values) // 2]


def recovery(rows: Sequence[Mapping[str, Any]], start: float, end: float) -> dict[str, Any]:
    """Recovery of the run after a fault from *start* to *end* (epoch seconds), on tokens/s per active session
    and delivery p99 (``baseline_tps``: the mean tokens/s of the 10 s before, for the report).

    ``{tokens, delivery_p99, baseline_tps, recovered_at, recovery_s, note}``: each measure as
    ``{baseline, recovered_at, recovery_s, note}``; the run's recovery is the later of the two, None
    (with the reason in ``note``) when either could not be judged.
    """
    tokens, active = _per_second(rows, "tokens"), _per_second(rows, "active_sessions")
    per_session = {s: (n or 0.0) / a if (a := active.get(s)) else None for s, n in tokens.items()}
    tps = _measure(
        per_session,
        start,
        end,
        "tokens/s per active session",
        lambda values: _median(_window_means(values)),
        lambda base: lambda v: v >= RECOVERED_FLOOR_SHARE * base,
        lambda base: lambda v: v >= RECOVERED_SHARE * base,
    )
    p99 = _measure(
        _per_second(rows, "delivery_p99_ms"),
        start,
        end,
        "delivery p99",
        _median,
        lambda base: lambda v: v <= max(P99_RECOVERED_FACTOR * base, base + P99_RECOVERED_SLACK_MS),
    )
    s0 = int(start)
    before = [n for s, n in tokens.items() if s0 - BASELINE_S <= s < s0 and n is not None]
    both = (tps, p99)
    notes = [m["note"] for m in both if m["note"] and m["recovered_at"] is None]
    done = all(m["recovered_at"] is not None for m in both)
    return {
        "tokens": tps,
        "delivery_p99": p99,
        "baseline_tps": round(sum(before) / len(before), 2) if before else None,
        "baseline_delivery_p99_ms": p99["baseline"],
        "recovered_at": max(m["recovered_at"] for m in both) if done else None,
        "recovery_s": max(m["recovery_s"] for m in both) if done else None,
        "note": "; ".join(notes),
    }


def attribute(
    rows: Sequence[Mapping[str, Any]], queries: Iterable[Mapping[str, Any]], start: float, until: float
) -> dict[str, Any]:
    """What happened from a fault's *start* to *until* (its recovery, or the end of the timeline).

    Reconnect attempts and successes and failed queries come from the per-second timeline (the
    seconds from the one holding *start* to the one holding *until*); lost tokens from the queries
    (``queries.csv`` rows) in flight in that window.
    """
    lo, hi = int(start), int(until)
    sel = [r for r in rows if lo <= int(r["second"]) <= hi]

    def total(field: str) -> int:
        return sum(int(float(r.get(field) or 0)) for r in sel)

    lost = 0
    for q in queries:
        n = int(float(q.get("lost") or 0))
        if not n:
            continue
        t0 = float(q.get("submit_at") or 0)
        lat = q.get("latency_ms")
        t1 = t0 + float(lat) / 1000.0 if lat not in (None, "") else float("inf")
        if t0 <= until and t1 >= start:
            lost += n
    return {
        "window_s": [round(start, 3), round(until, 3)],
        "tokens_lost": lost,
        "reconnect_attempts": total("reconnect_attempts"),
        "reconnects_ok": total("reconnects_ok"),
        "queries_failed": total("queries_failed"),
        "errors": total("errors"),
    }
