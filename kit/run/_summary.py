"""Reading numbers out of the client's summaries and live status files (pure).

:func:`metric_value` maps a parsed threshold onto the merged ``summary.json``
that ``kit.client.merge_outputs`` writes (latency histograms in ms, rates in %,
counts); :func:`evaluate_thresholds` checks them all.  :func:`aggregate_status`
adds up the live ``status.json`` of every generator for the one live line.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from kit.metrics import Histogram

from ._plan import Threshold

__all__ = ["metric_value", "evaluate_thresholds", "aggregate_status", "format_live_line"]

_HIST_KEYS = {"latency": "latency_ms", "service_latency": "service_latency_ms", "ttft": "ttft_ms",
              "inter_token": "inter_token_ms", "delivery": "delivery_latency_ms", "create": "create_ms",
              "connect": "connect_ms"}
_COUNT_KEYS = {"lost": "lost_tokens", "duplicated": "duplicated_tokens", "out_of_order": "out_of_order_tokens",
               "errors": "total_errors", "failed_sessions": "failed_sessions", "failed_queries": "failed_queries",
               "reconnect_attempts": "total_reconnect_attempts", "reconnects": "total_successful_reconnects"}


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
    v = summary.get(t.metric)
    return None if v is None else float(v)


def evaluate_thresholds(summary: Mapping[str, Any], thresholds: Sequence[Threshold]) -> list[dict[str, Any]]:
    out = []
    for t in thresholds:
        actual = metric_value(summary, t)
        out.append({"threshold": t.text, "metric": t.metric, "actual": actual, "passed": t.check(actual),
                    "unit": {"time": "s", "percent": "fraction", "count": "", "rate": "/s"}[t.kind]})
    return out


_SUM_KEYS = ("active_sessions", "sessions_started", "sessions_finished", "queries_ok", "queries_failed", "tokens",
             "lost_tokens", "errors", "reconnect_attempts", "reconnects_ok")


def aggregate_status(statuses: Mapping[str, Mapping[str, Any] | None], prev: Mapping[str, Any] | None = None,
                     now: float | None = None) -> dict[str, Any]:
    """Add up the live ``status.json`` of every generator (label -> status, None when not readable yet).

    Counters add; p50/p99 so far come from the merged latency histograms (exact, not averaged);
    QPS and tokens/s are the change since *prev* (the previous aggregate) over the time between.
    """
    agg: dict[str, Any] = {k: 0 for k in _SUM_KEYS}
    agg.update({"generators": len(statuses), "reporting": 0, "time": now, "per_generator": {}})
    lat = Histogram("us")
    for label, st in statuses.items():
        if not st:
            agg["per_generator"][label] = None
            continue
        agg["reporting"] += 1
        for k in _SUM_KEYS:
            v = st.get(k)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                agg[k] += v
        if st.get("latency_histogram"):
            lat.merge(Histogram.from_dict(st["latency_histogram"]))
        agg["per_generator"][label] = {"cpu_percent": st.get("cpu_percent"), "loop_lag_ms": st.get("loop_lag_p99_ms"),
                                       "active_sessions": st.get("active_sessions"), "done": st.get("done")}
    agg["p50_ms"] = None if lat.count == 0 else lat.percentile(50) / 1000
    agg["p99_ms"] = None if lat.count == 0 else lat.percentile(99) / 1000
    agg["qps"] = agg["tps"] = None
    if prev and now is not None and prev.get("time") is not None and now > prev["time"]:
        dt = now - prev["time"]
        agg["qps"] = max(0.0, (agg["queries_ok"] - prev["queries_ok"]) / dt)
        agg["tps"] = max(0.0, (agg["tokens"] - prev["tokens"]) / dt)
    return agg


def format_live_line(agg: Mapping[str, Any], elapsed: float) -> str:
    def f(v: float | None, fmt: str = "{:.0f}") -> str:
        return "-" if v is None else fmt.format(v)

    gens = " ".join(
        f"{label}[cpu {f(g['cpu_percent'])}% lag {f(g['loop_lag_ms'], '{:.1f}')}ms]" if g else f"{label}[-]"
        for label, g in agg["per_generator"].items())
    return (f"t={elapsed:4.0f}s active={agg['active_sessions']} qps={f(agg['qps'], '{:.1f}')} "
            f"tok/s={f(agg['tps'])} p50={f(agg['p50_ms'])}ms p99={f(agg['p99_ms'])}ms "
            f"errors={agg['errors']} reconnects={agg['reconnect_attempts']} "
            f"gens {agg['reporting']}/{agg['generators']}: {gens}")
