"""``python -m kit.client analyze PATH...``: percentiles, a histogram and the error breakdown.

Like the seed's ``analyze_results.py``, but it reads result folders (their
``queries.csv``) or CSV files, several at once.  Percentiles here are exact
(computed from the raw per-query values), with the nearest-rank method.
The seed's column name ``latency`` (seconds) is accepted besides ours.
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["analyze", "collect_rows", "exact_percentile", "text_histogram", "format_report", "AnalyzeError"]

PERCENTILES = (10, 25, 50, 75, 90, 95, 99)


class AnalyzeError(ValueError):
    """An input path is missing or not a result; the message names it."""


def collect_rows(paths: Iterable[Path]) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            f = p / "queries.csv"
            if not f.exists():
                raise AnalyzeError(f"{p} has no queries.csv: pass a folder written by `python -m kit.client`")
        elif p.is_file():
            f = p
        else:
            raise AnalyzeError(f"{p} does not exist")
        with open(f, newline="") as fh:
            reader = csv.DictReader(fh)
            if not reader.fieldnames:
                raise AnalyzeError(f"{f} is empty")
            rows.extend(reader)
    return rows


def exact_percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of an ascending list (the same rule as kit.metrics.Histogram)."""
    if not sorted_values:
        raise ValueError("no values")
    rank = max(1, -(-(round(p * 1000) * len(sorted_values)) // 100000))  # ceil(p/100*n), exact
    return sorted_values[rank - 1]


def _latency_ms(row: dict[str, str]) -> float | None:
    v = row.get("latency_ms")
    if v:
        return float(v)
    v = row.get("latency")  # the seed's CSV: seconds
    if v:
        return float(v) * 1000.0
    return None


def text_histogram(values: Sequence[float], bins: int = 20, width: int = 50) -> list[str]:
    if not values:
        return []
    lo, hi = min(values), max(values)
    step = (hi - lo) / bins if hi > lo else 1.0
    counts = [0] * bins
    for v in values:
        counts[min(bins - 1, int((v - lo) / step))] += 1
    top = max(counts)
    return [f"{lo + i * step:10.1f} - {lo + (i + 1) * step:10.1f} ms | {'#' * round(width * n / top):<{width}} {n}"
            for i, n in enumerate(counts)]


def _error_key(error: str) -> str:
    """Group errors that differ only in numbers or ids."""
    return re.sub(r"[0-9a-f]{8,}|\d+(\.\d+)?", "N", error)[:120]


def analyze(paths: Iterable[Path]) -> dict[str, Any]:
    rows = collect_rows(paths)
    lat = sorted(v for v in (_latency_ms(r) for r in rows) if v is not None)
    ttft = sorted(float(r["ttft_ms"]) for r in rows if r.get("ttft_ms"))
    statuses = Counter(r.get("status") or ("ok" if not r.get("error") else "error") for r in rows)
    errors = Counter(_error_key(r["error"]) for r in rows if r.get("error"))
    out: dict[str, Any] = {
        "sessions": len({r.get("session_id") for r in rows}),
        "queries": len(rows),
        "statuses": dict(statuses),
        "tokens": sum(int(r.get("tokens") or 0) for r in rows),
        "lost_tokens": sum(int(r.get("lost") or 0) for r in rows),
        "latency_ms": {f"p{p}": exact_percentile(lat, p) for p in PERCENTILES} if lat else {},
        "ttft_ms": {f"p{p}": exact_percentile(ttft, p) for p in PERCENTILES} if ttft else {},
        "errors": dict(errors.most_common()),
        "_latencies": lat,
    }
    if lat:
        out["latency_ms"].update({"min": lat[0], "max": lat[-1], "avg": sum(lat) / len(lat)})
    return out


def format_report(a: dict[str, Any]) -> str:
    lines = [f"Sessions: {a['sessions']}   Queries: {a['queries']}   Tokens: {a['tokens']}   "
             f"Lost tokens: {a['lost_tokens']}",
             "Statuses: " + ", ".join(f"{k} {v}" for k, v in sorted(a["statuses"].items()))]
    for name in ("latency_ms", "ttft_ms"):
        d = a[name]
        if d:
            lines.append(f"{name.replace('_ms', '')} percentiles (ms): "
                         + "  ".join(f"p{p} {d[f'p{p}']:.1f}" for p in PERCENTILES))
    if a["latency_ms"]:
        d = a["latency_ms"]
        lines.append(f"latency min {d['min']:.1f}  max {d['max']:.1f}  avg {d['avg']:.1f} ms")
        lines.append("")
        lines.append("Latency histogram:")
        lines.extend(text_histogram(a["_latencies"]))
    lines.append("")
    if a["errors"]:
        lines.append("Errors:")
        lines.extend(f"  {n:>8}  {k}" for k, n in a["errors"].items())
    else:
        lines.append("Errors: none")
    return "\n".join(lines)
