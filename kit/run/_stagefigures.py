"""Each stage of a staged run (``--stages``) judged on its own: summary.json's ``stages``.

A stage is a window of the run's one time axis (seconds after the agreed start).  Its figures come from the
merged per-second rows (timeline.csv: tokens, queries, errors, active sessions) and the merged per-second
histograms (histograms.json's ``timeline_histograms``): the percentiles of a stage are those of its seconds'
histograms added together, never an average of per-second percentiles.  A second belongs to the stage its
middle falls in.  Pure.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from kit.metrics import Histogram, SecondHistograms

__all__ = ["stage_windows", "stage_figures"]

#: the per-second histograms a stage reports p50/p99 of (kit.client's TIMELINE_HISTOGRAMS)
STAGE_HISTOGRAMS = ("delivery", "ttft", "latency")


def stage_windows(stages: str | None, start_rate: float | None = None) -> list[dict[str, Any]]:
    """The stages of a ``--stages`` value as windows: ``index``, ``start_s``, ``end_s`` (after the agreed start),
    ``target_from``, ``target_to`` (closed: sessions; open: sessions per second, from *start_rate*) and
    ``arrivals`` (None: the run's)."""
    from kit.client import parse_stages

    out, t = [], 0.0
    level = start_rate or 0.0
    for i, st in enumerate(parse_stages(stages) if stages else ()):
        out.append(
            {
                "index": i,
                "start_s": round(t, 3),
                "end_s": round(t + st.duration, 3),
                "target_from": level,
                "target_to": st.target,
                "arrivals": st.arrivals,
            }
        )
        t, level = t + st.duration, st.target
    return out


def stage_figures(
    windows: Sequence[Mapping[str, Any]],
    start_at: float,
    timeline: Sequence[Mapping[str, str]],
    seconds: SecondHistograms,
) -> list[dict[str, Any]]:
    """*windows* (:func:`stage_windows`) with each stage's figures: tokens/s, queries done and failed, errors,
    sessions started, mean and last active sessions, and p50/p99 (ms) of delivery, TTFT and latency."""
    rows = {int(r["second"]): r for r in timeline if str(r.get("second", "")).lstrip("-").isdigit()}
    out = []
    for w in windows:
        lo, hi = start_at + w["start_s"], start_at + w["end_s"]
        secs = [s for s in sorted(set(rows) | set(seconds.hists)) if lo <= s + 0.5 < hi]
        mine = [rows[s] for s in secs if s in rows]
        span = max(1e-9, w["end_s"] - w["start_s"])
        active = [_f(r.get("active_sessions")) for r in mine]
        fig: dict[str, Any] = dict(w) | {
            "seconds": len(secs),
            "tokens_per_s": round(sum(_f(r.get("tokens")) for r in mine) / span, 1),
            "queries_done": int(sum(_f(r.get("queries_done")) for r in mine)),
            "queries_failed": int(sum(_f(r.get("queries_failed")) for r in mine)),
            "errors": int(sum(_f(r.get("errors")) for r in mine)),
            "sessions_started": int(sum(_f(r.get("sessions_started")) for r in mine)),
            "active_sessions_mean": round(sum(active) / len(active), 1) if active else None,
            "active_sessions_end": active[-1] if active else None,
        }
        for name in STAGE_HISTOGRAMS:
            h = Histogram("us")
            for s in secs:
                part = seconds.hists.get(s, {}).get(name)
                if part is not None:
                    h.merge(part)
            for p in (50, 99):
                v = h.percentile(p) if h.count else None
                fig[f"{name}_p{p}_ms"] = None if v is None else round(v / 1000, 3)
        out.append(fig)
    return out


def _f(v: Any) -> float:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return 0.0
    return x if math.isfinite(x) else 0.0
