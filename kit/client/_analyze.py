"""``python -m kit.client analyze PATH...``: percentiles, a histogram and the error breakdown.

Like the seed's ``analyze_results.py``, but it reads result folders (their
``queries.csv``) or CSV files, several at once.  Percentiles here are exact
(computed from the raw per-query values), with the nearest-rank method.
The seed's column name ``latency`` (seconds) is accepted besides ours.

A CSV whose header is neither (:data:`QUERY_COLUMNS`, or the seed's ``latency``) is refused with the
columns it lacks, and so is a value that is not a finite number: :class:`AnalyzeError`, one line naming
the file (and the line).
"""

from __future__ import annotations

import csv
import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["analyze", "collect_rows", "exact_percentile", "text_histogram", "format_report", "AnalyzeError"]

PERCENTILES = (10, 25, 50, 75, 90, 95, 99)
#: the columns of the kit's queries.csv that analyze reads (kit.client._output.QUERY_FIELDS holds them all)
QUERY_COLUMNS = ("session_id", "latency_ms", "ttft_ms", "tokens", "lost", "status", "error")
#: the numeric ones, each checked on every row
_NUMBERS = ("latency_ms", "latency", "ttft_ms", "tokens", "lost")


class AnalyzeError(ValueError):
    """An input path is missing or not a result; the message names it."""


def _check_header(f: Path, fields: Sequence[str]) -> None:
    """AnalyzeError unless *fields* are those of a kit queries.csv (or the seed's CSV)."""
    have = set(fields)
    if "latency" in have and "latency_ms" not in have:  # the seed's CSV
        return
    missing = [c for c in QUERY_COLUMNS if c not in have]
    if not missing:
        return
    shown = ",".join(fields)
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    what = (
        "a sessions.csv (one row per session)"
        if {"session_index", "queries_ok"} <= have
        else f"not a queries.csv of `python -m kit.client` (header: {shown})"
    )
    lacks = f" (it lacks {', '.join(missing)})" if len(missing) < len(QUERY_COLUMNS) else ""
    raise AnalyzeError(
        f"{f}: {what}: expected the columns {', '.join(QUERY_COLUMNS)}{lacks}: pass a result folder or its queries.csv"
    )


def _check_row(f: Path, line: int, row: dict[str, str | None]) -> None:
    """AnalyzeError unless each numeric value of *row* is empty or a finite number."""
    if None in row or any(v is None for v in row.values()):  # more or fewer cells than the header
        raise AnalyzeError(
            f"{f}: line {line} has more or fewer cells than the header: the file is damaged "
            "(a run that did not finish writing it?)"
        )
    for k in _NUMBERS:
        v = row.get(k)
        if v:
            whole = k in ("tokens", "lost")
            try:
                ok = int(v) >= 0 if whole else math.isfinite(float(v))
            except ValueError:
                ok = False
            if not ok:
                raise AnalyzeError(
                    f"{f}: line {line}: {k} {v[:40]!r} is not "
                    f"{'a whole number >= 0' if whole else 'a finite number'}: the file is damaged"
                )


def collect_rows(paths: Iterable[Path]) -> list[dict[str, str]]:
    """The rows of every queries.csv in *paths* (result folders or CSV files), each checked."""
    rows: list[dict[str, str]] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            f = p / "queries.csv"
            if not f.is_file():
                raise AnalyzeError(f"{p} has no queries.csv: pass a folder written by `python -m kit.client`")
        elif p.is_file():
            f = p
        else:
            raise AnalyzeError(
                f"{p} does not exist"
                if not p.exists()
                else f"{p} is not a regular file: pass a result folder or its queries.csv"
            )
        try:
            with open(f, newline="", encoding="utf-8") as fh:
                reader = csv.DictReader(fh)
                if not reader.fieldnames:
                    raise AnalyzeError(f"{f} is empty: pass a result folder or its queries.csv")
                _check_header(f, reader.fieldnames)
                for row in reader:
                    _check_row(f, reader.line_num, row)
                    rows.append(row)
        except UnicodeDecodeError as exc:
            raise AnalyzeError(
                f"{f}: not UTF-8 text (byte {exc.start}): pass a result folder or its queries.csv"
            ) from None
        except csv.Error as exc:
            raise AnalyzeError(f"{f}: not a readable CSV ({exc}): pass a result folder or its queries.csv") from None
        except OSError as exc:
            raise AnalyzeError(f"{f}: cannot read it ({exc.strerror or exc})") from None
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
    return [
        f"{lo + i * step:10.1f} - {lo + (i + 1) * step:10.1f} ms | {'#' * round(width * n / top):<{width}} {n}"
        for i, n in enumerate(counts)
    ]


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
    lines = [
        f"Sessions: {a['sessions']}   Queries: {a['queries']}   Tokens: {a['tokens']}   "
        f"Lost tokens: {a['lost_tokens']}",
        "Statuses: " + ", ".join(f"{k} {v}" for k, v in sorted(a["statuses"].items())),
    ]
    for name in ("latency_ms", "ttft_ms"):
        d = a[name]
        if d:
            lines.append(
                f"{name.replace('_ms', '')} percentiles (ms): "
                + "  ".join(f"p{p} {d[f'p{p}']:.1f}" for p in PERCENTILES)
            )
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
