"""Reading numbers out of the client's summaries and live status files (pure).

:func:`metric_value` maps a parsed threshold onto the merged ``summary.json``
that ``kit.client.merge_outputs`` writes (latency histograms in ms, rates in %,
counts); :func:`evaluate_thresholds` checks them all (each check says whether its threshold was a
default; ``kit.report`` writes them out).  :func:`aggregate_status`
adds up the live ``status.json`` of every generator for the live view: totals, and the rates and
latency percentiles of the last interval (the difference of two cumulative histograms).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from kit.client import STATUS_COUNTERS, STATUS_HISTOGRAMS
from kit.metrics import Histogram

from ._plan import Threshold

__all__ = ["metric_value", "evaluate_thresholds", "aggregate_status", "format_live_line", "live_failures"]

_HIST_KEYS = {
    "latency": "latency_ms",
    "service_latency": "service_latency_ms",
    "ttft": "ttft_ms",
    "inter_token": "inter_token_ms",
    "delivery": "delivery_latency_ms",
    "create": "create_ms",
    "connect": "connect_ms",
}
_COUNT_KEYS = {
    "lost": "lost_tokens",
    "duplicated": "duplicated_tokens",
    "out_of_order": "out_of_order_tokens",
    "errors": "total_errors",
    "failed_sessions": "failed_sessions",
    "failed_queries": "failed_queries",
    "reconnect_attempts": "total_reconnect_attempts",
    "reconnects": "total_successful_reconnects",
}


def metric_value(summary: Mapping[str, Any], t: Threshold) -> float | None:
    """The summary's value for *t* in the threshold's base unit, or None when the summary lacks it."""
    if t.kind == "time":
        hist = summary.get(_HIST_KEYS[t.histogram or "latency"]) or {}
        if not hist.get("count"):
            return None
        v = hist.get(t.stat)
        return None if v is None else float(v) / 1000.0
    if t.kind == "percent":
        key = "success_rate" if t.metric == "success" else "query_success_rate"
        # an empty run has no successes to speak of: it fails a success threshold
        denom = summary.get("total_sessions" if t.metric == "success" else "total_queries")
        v = summary.get(key)
        return None if v is None or not denom else float(v) / 100.0
    if t.kind == "count":
        v = summary.get(_COUNT_KEYS[t.metric])
        return None if v is None else float(v)
    if t.kind == "flag":  # generator_ok
        gen = summary.get("generator")
        return None if not isinstance(gen, Mapping) else (0.0 if gen.get("generator_overloaded") else 1.0)
    v = summary.get(t.metric)
    return None if v is None else float(v)


def evaluate_thresholds(summary: Mapping[str, Any], thresholds: Sequence[Threshold]) -> list[dict[str, Any]]:
    out = []
    for t in thresholds:
        actual = metric_value(summary, t)
        out.append(
            {
                "threshold": t.text,
                "metric": t.metric,
                "actual": actual,
                "passed": t.check(actual),
                "unit": {"time": "s", "percent": "fraction", "count": "", "rate": "/s", "flag": ""}[t.kind],
                "default": t.default,
            }
        )
    return out


#: the status counters the client writes (one definition, beside the snapshot it writes)
_SUM_KEYS = STATUS_COUNTERS
#: the cumulative histograms of status.json whose last interval the live view shows (query latency, delivery,
#: time to first token); a status without one (an older client) gives no figure for it, never a wrong one
_LIVE_HISTOGRAMS = STATUS_HISTOGRAMS
#: counters whose change over the last interval the live view shows as a rate
_RATE_KEYS = {"qps": "queries_ok", "tps": "tokens", "errors_per_s": "errors", "reconnects_per_s": "reconnect_attempts"}


def _p_ms(h: Histogram, p: float) -> float | None:
    """*h*'s (microseconds) *p*-th percentile in milliseconds; None when it is empty."""
    v = h.percentile(p)
    return None if v is None else v / 1000


def _num(v: Any) -> float:
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else 0


def _interval(
    st: Mapping[str, Any], t: float | None, before: Mapping[str, Any] | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """One generator's last interval (rates and its latency histogram) and the snapshot to keep.

    *before* is its previous snapshot; without one the interval runs from its start (``elapsed_s``
    before *t*; no rates when that is unknown).  A histogram that is not a later state of the previous
    one (a process of the generator restarted) gives no latency for this interval, never a wrong one.
    """
    hists = {
        name: Histogram.from_dict(st[f"{name}_histogram"]) if st.get(f"{name}_histogram") else Histogram("us")
        for name in _LIVE_HISTOGRAMS
    }
    out: dict[str, Any] = {}
    if before is None:
        t0 = t - st["elapsed_s"] if t is not None and _num(st.get("elapsed_s")) > 0 else None
        base: Mapping[str, Any] = dict.fromkeys(_RATE_KEYS.values(), 0)
        out.update(hists)
    else:
        t0, base = before["time"], before
        for name, h in hists.items():
            try:
                out[name] = h.copy().subtract(before["hists"][name])
            except ValueError:
                out[name] = None
    dt = t - t0 if t is not None and t0 is not None and t > t0 else None
    out["dt"] = dt
    for rate, key in _RATE_KEYS.items():
        out[rate] = None if dt is None else max(0.0, (_num(st.get(key)) - _num(base.get(key))) / dt)
    return out, {"time": t, "hists": hists, **{k: _num(st.get(k)) for k in _RATE_KEYS.values()}}


def aggregate_status(
    statuses: Mapping[str, Mapping[str, Any] | None], prev: Mapping[str, Any] | None = None, now: float | None = None
) -> dict[str, Any]:
    """Add up the live ``status.json`` of every generator (label -> status, None when not readable yet).

    Counters add (totals since the start).  The rates (``qps``, ``tps``, ``errors_per_s``,
    ``reconnects_per_s``), ``p50_ms``/``p99_ms`` (query latency), ``delivery_p50_ms``/``delivery_p99_ms`` and
    ``ttft_p50_ms``/``ttft_p99_ms`` are of the LAST INTERVAL: per generator, between
    its previous snapshot (kept in *prev*, the previous aggregate) and this one, timed by the
    snapshot's own ``time`` (else *now*); p50/p99 come from the merged interval histograms (each the
    difference of two cumulative ones: exact, not averaged).  A generator whose status did not
    change since the last poll keeps its last interval.
    """
    agg: dict[str, Any] = {k: 0 for k in _SUM_KEYS}
    agg.update({"generators": len(statuses), "reporting": 0, "time": now, "per_generator": {}, "_gens": {}})
    prev_gens: Mapping[str, Any] = (prev or {}).get("_gens") or {}
    merged = {name: Histogram("us") for name in _LIVE_HISTOGRAMS}
    rates: dict[str, float | None] = dict.fromkeys(_RATE_KEYS)
    for label, st in statuses.items():
        if not st:
            agg["per_generator"][label] = None
            continue
        agg["reporting"] += 1
        for k in _SUM_KEYS:
            agg[k] += _num(st.get(k))
        t = st.get("time") if isinstance(st.get("time"), (int, float)) else now
        mine = prev_gens.get(label)
        if mine is not None and mine["snap"]["time"] == t:  # not rewritten since the last poll
            iv, snap = mine["interval"], mine["snap"]
        else:
            iv, snap = _interval(st, t, None if mine is None else mine["snap"])
        agg["_gens"][label] = {"snap": snap, "interval": iv}
        for name, h in merged.items():
            if iv[name] is not None:
                h.merge(iv[name])
        for r in rates:
            if iv[r] is not None:
                rates[r] = (rates[r] or 0.0) + iv[r]
        agg["per_generator"][label] = {
            "cpu_percent": st.get("cpu_percent"),
            "loop_lag_ms": st.get("loop_lag_p99_ms"),
            "active_sessions": st.get("active_sessions"),
            "done": st.get("done"),
            "qps": iv["qps"],
            "tps": iv["tps"],
        }
    agg.update(rates)
    # since the start, merged over generators (what --abort-on-fail judges a latency threshold on)
    agg["_cumulative"] = {name: Histogram("us") for name in _LIVE_HISTOGRAMS}
    for g in agg["_gens"].values():
        for name, h in g["snap"]["hists"].items():
            agg["_cumulative"][name].merge(h)
    agg["interval_queries"] = merged["latency"].count
    for name, h in merged.items():
        pre = "" if name == "latency" else f"{name}_"
        for p in (50, 99):
            agg[f"{pre}p{p}_ms"] = _p_ms(h, p)
    return agg


def format_live_line(agg: Mapping[str, Any], elapsed: float) -> str:
    """The plain live line (stdout not a terminal): rates and p50/p99 of the last interval, totals."""

    def f(v: float | None, fmt: str = "{:.0f}") -> str:
        return "-" if v is None else fmt.format(v)

    gens = " ".join(
        f"{label}[cpu {f(g['cpu_percent'])}% lag {f(g['loop_lag_ms'], '{:.1f}')}ms]" if g else f"{label}[-]"
        for label, g in agg["per_generator"].items()
    )
    return (
        f"t={elapsed:4.0f}s active={agg['active_sessions']} qps={f(agg['qps'], '{:.1f}')} "
        f"tok/s={f(agg['tps'])} p50={f(agg['p50_ms'])}ms p99={f(agg['p99_ms'])}ms "
        f"delivery_p99={f(agg.get('delivery_p99_ms'), '{:.1f}')}ms "
        f"errors={agg['errors']} reconnects={agg['reconnect_attempts']} "
        f"gens {agg['reporting']}/{agg['generators']}: {gens}"
    )


#: the live counters (status.json) a count threshold reads while the run goes
_LIVE_COUNTS = {
    "lost": "lost_tokens",
    "errors": "errors",
    "failed_queries": "queries_failed",
    "failed_sessions": "sessions_failed",
    "reconnect_attempts": "reconnect_attempts",
    "reconnects": "reconnects_ok",
}
_LIVE_TIME_STATS = (50, 90, 95, 99, 99.9)


def live_failures(
    agg: Mapping[str, Any], thresholds: Sequence[Threshold], *, sessions: int | None = None, queries: int | None = None
) -> list[dict[str, Any]]:
    """The thresholds the run so far has failed for good, judged on the live merge (``--abort-on-fail``).

    * a count only grows: once past an upper bound (``lost==0``, ``errors<10``) it has failed;
    * a success rate has failed when it could not be reached even if every session (query) still to
      come succeeded: the failures so far against the *sessions* (*queries*) the run plans;
    * a latency bound (``p99<2s``, ``delivery_p99<50ms``) is judged on the histograms merged since the
      start, as k6 judges thresholds during a run (the caller waits out a grace period first).

    Lower bounds on counts, rates (``tps>=300``) and ``generator_ok`` can only be judged at the end.
    Each failure: ``{"threshold", "actual", "unit"}`` (the unit as :func:`evaluate_thresholds` gives it).
    """
    out = []
    cumulative: Mapping[str, Histogram] = agg.get("_cumulative") or {}
    for t in thresholds:
        actual: float | None = None
        if t.kind == "count" and t.op in ("<", "<=", "==") and _LIVE_COUNTS.get(t.metric) in agg:
            actual = float(_num(agg.get(_LIVE_COUNTS[t.metric])))
        elif t.kind == "percent" and t.op in (">", ">="):
            planned, failed = (
                (sessions, agg.get("sessions_failed"))
                if t.metric == "success"
                else (queries, agg.get("queries_failed"))
            )
            if planned and failed is not None:
                actual = max(0.0, (planned - _num(failed)) / planned)  # the best the run can still end with
        elif t.kind == "time" and t.op in ("<", "<=") and t.stat != "min":
            h = cumulative.get(t.histogram or "latency")
            if h is not None and h.count:
                actual = metric_value({_HIST_KEYS[t.histogram or "latency"]: h.summary(_LIVE_TIME_STATS, 1000.0)}, t)
        if actual is not None and not t.check(actual):
            out.append(
                {
                    "threshold": t.text,
                    "actual": actual,
                    "unit": {"time": "s", "percent": "fraction", "count": ""}[t.kind],
                }
            )
    return out
