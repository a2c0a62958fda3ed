"""Charts for ``report.html``, ``compare.html`` and the capacity search, drawn by uPlot inlined into the page.

Why uPlot: one 51 KB MIT file (``kit/_assets``, vendored from npm, see its README) that draws
time series with axes, units, legends and log scales on a canvas, fast with tens of thousands of
points, with no dependencies and nothing fetched: the page opens from the tarball with no network.

The Python side is pure: it turns a run folder (``summary.json``, ``timeline.csv``,
``queries.csv``, ``histograms.json``, ``hosts/<host>/host.jsonl``) into chart *specs*,
JSON-ready dicts ``{id, title, x, xlabel, ylabel, series: [{label, values, axis}], ...}`` whose
series share one x array (uPlot's aligned data; ``None`` is a gap).  :func:`charts_html` writes
the specs and a small builder script; the builder draws each chart and then marks its ``<div>``
with ``data-rendered="1"`` and ``data-points`` (non-null values drawn), and ``<body>`` with
``data-charts-rendered``; a script error sets ``data-chart-error`` on ``<body>``.  Tests read
these from the DOM that headless Chromium dumps.

Time is run-relative: seconds since the run's agreed start (``run.start_at``, else the
client's ``started_at``).  Per-second latency percentiles are computed here from the raw
``queries.csv`` rows (done time = intended start + latency), bucketed by the second the query
finished: the timeline holds counts only.  Distributions are CDFs over the mergeable
histograms, on a log x axis with 1-2-5 / decade ticks.  Chaos events (``summary["events"]``: ``action``,
``target`` or ``program``, ``host``, ``at_s`` seconds after the start, ``for_s``) and the balancer's DOWN
decisions are drawn on every time axis, each label inside the plot area (right of its line, left of it
when it would overflow, a row lower when it would overlap another).

Every time chart of a page has the same x range (``xrange``: :func:`run_x_range`, from the agreed start
to the end of the run) and one ``sync`` key, so their cursors move together (and a drag-zoom on one
zooms them all; a double click resets them to the run's range).  For the tests the builder also marks
each chart's ``<div>`` with ``data-x-range`` (the drawn x scale), ``data-series``, ``data-ink`` (the
series' painted pixels), on log axes ``data-x-ticks`` (the tick labels) and, on charts with events,
``data-plot`` (the plot box) and ``data-labels`` (each label's line, drawn box and the text pixels
found in that box), in canvas pixels.
"""

from __future__ import annotations

import csv
import html
import json
import logging
import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from kit import contract
from kit.metrics import Histogram

__all__ = [
    "RunData",
    "chart_spec",
    "CsvRows",
    "QUERY_COLUMNS",
    "load_run",
    "run_t0",
    "run_x_range",
    "timeline_series",
    "timeline_percentiles",
    "latency_per_second",
    "cdf",
    "host_cpu_series",
    "component_cpu_series",
    "server_series",
    "chaos_events",
    "run_chart_specs",
    "compare_chart_specs",
    "charts_html",
    "assets_html",
    "nearest_rank",
]

log = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parent / "_assets"
#: series colours (Okabe-Ito, readable for colour-blind readers), in order
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442")
#: the histograms drawn as distributions: (histograms.json key, title)
DISTRIBUTIONS = (
    ("ttft", "Time to first token"),
    ("delivery", "Token delivery latency (publish to receive)"),
    ("latency", "Query latency (intended start to done)"),
    ("inter_token", "Inter-token gap"),
)
TIME_X = "time since start (s)"
#: the cursor-sync key of a page's time charts (uPlot ``cursor.sync.key``)
TIME_SYNC = "run-time"


@dataclass
class RunData:
    """What the charts read of one run folder; missing files are empty, never invented."""

    path: Path
    summary: dict[str, Any] = field(default_factory=dict)
    timeline: list[dict[str, str]] = field(default_factory=list)
    #: queries.csv's rows (:func:`load_run`: a :class:`CsvRows` that reads them from disk at each pass)
    queries: Iterable[Mapping[str, str | None]] = field(default_factory=list)
    histograms: dict[str, Any] = field(default_factory=dict)
    hosts: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    @property
    def t0(self) -> float:
        return run_t0(self.summary, self.timeline)


def _csv(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


#: the columns of ``queries.csv`` the charts and ``fab compare`` read
QUERY_COLUMNS = ("intended_at", "submit_at", "latency_ms", "ttft_ms", "status")


class CsvRows:
    """The rows of a CSV file as ``csv.DictReader`` gives them, limited to *columns*, read from disk again at
    each iteration: a 100,000-session run's 300,000 queries cost one row of memory, not 450 MB of dicts.
    A missing file has no rows."""

    def __init__(self, path: Path, columns: Sequence[str]) -> None:
        self.path = Path(path)
        self.columns = tuple(columns)

    def __iter__(self) -> Iterator[dict[str, str | None]]:
        if not self.path.exists():
            return
        with open(self.path, newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None:
                return
            where = {name: i for i, name in enumerate(header)}  # a repeated column: the last one, as DictReader
            pick = [(c, where[c]) for c in self.columns if c in where]
            for row in reader:
                if row:
                    n = len(row)
                    yield {c: row[i] if i < n else None for c, i in pick}

    def __repr__(self) -> str:
        return f"CsvRows({str(self.path)!r}, {self.columns!r})"


def _jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def load_run(run_dir: Path, summary: Mapping[str, Any] | None = None) -> RunData:
    run_dir = Path(run_dir)
    if summary is None:
        try:
            summary = json.loads((run_dir / "summary.json").read_text())
        except (OSError, ValueError):
            summary = {}
    try:
        hists = json.loads((run_dir / "histograms.json").read_text()).get("histograms", {})
    except (OSError, ValueError):
        hists = {}
    hosts = {f.parent.name: _jsonl(f) for f in sorted((run_dir / "hosts").glob("*/host.jsonl"))}
    queries = CsvRows(run_dir / "queries.csv", QUERY_COLUMNS)
    return RunData(run_dir, dict(summary), _csv(run_dir / "timeline.csv"), queries, hists, hosts)


def run_t0(summary: Mapping[str, Any], timeline: Sequence[Mapping[str, str]] = ()) -> float:
    """The run's zero: the agreed start, else the client's first start, else the first timeline second."""
    for v in ((summary.get("run") or {}).get("start_at"), summary.get("started_at")):
        if isinstance(v, (int, float)) and v > 0:
            return float(v)
    secs = [float(r["second"]) for r in timeline if r.get("second")]
    return min(secs, default=0.0)


def run_x_range(run: RunData) -> tuple[float, float]:
    """The run's time range, in seconds since its agreed start: one x range for every time chart.

    From 0 (or the first timeline second, which holds the start) to the latest of the run's end
    (``ended_at``, else ``duration_s``; no query finishes after it), its last timeline second and the end of
    its events; host samples taken before or after the run fall outside.
    """
    t0 = run.t0
    t = timeline_series(run.timeline, t0)["t"]
    ends = t[-1:]
    ended = _num(run.summary.get("ended_at"))
    if ended is not None and ended > t0:
        ends.append(ended - t0)
    elif _num(run.summary.get("duration_s")) is not None:
        ends.append(float(run.summary["duration_s"]))
    ends += [e["at_s"] + e["for_s"] for e in chaos_events(run.summary)]
    lo = min(0.0, min(t, default=0.0))
    hi = max(ends, default=lo + 1.0)
    return round(lo, 3), round(hi if hi > lo else lo + 1.0, 3)


def _share_time_axis(specs: Sequence[dict[str, Any]], xrange: tuple[float, float]) -> None:
    """Give every time chart of *specs* the page's x range and cursor-sync key."""
    for s in specs:
        if s["xlabel"] == TIME_X and not s["logx"]:
            s["xrange"], s["sync"] = list(xrange), TIME_SYNC


def _num(v: Any) -> float | None:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


# -- series (pure) ---------------------------------------------------------------------------------


def timeline_series(timeline: Sequence[Mapping[str, str]], t0: float) -> dict[str, list[float]]:
    """``{"t": [...], field: [...]}`` per second of ``timeline.csv`` (counts per second; gauges as sampled)."""
    rows = sorted((r for r in timeline if _num(r.get("second")) is not None), key=lambda r: float(r["second"]))
    out: dict[str, list[float]] = {"t": [float(r["second"]) - t0 for r in rows]}
    for k in rows[0].keys() if rows else ():
        if k != "second":
            out[k] = [_num(r.get(k)) or 0.0 for r in rows]
    return out


def timeline_percentiles(timeline: Sequence[Mapping[str, str]], t0: float, name: str) -> dict[str, list[Any]]:
    """``{"t", "p50", "p99", "max"}`` (ms) of histogram *name* per second of ``timeline.csv``; a second in
    which nothing was recorded is a gap (None), not a zero."""
    rows = sorted((r for r in timeline if _num(r.get("second")) is not None), key=lambda r: float(r["second"]))
    out: dict[str, list[Any]] = {"t": [float(r["second"]) - t0 for r in rows]}
    for stat in ("p50", "p99", "max"):
        out[stat] = [_num(r.get(f"{name}_{stat}_ms")) for r in rows]
    return out


def nearest_rank(sorted_values: Sequence[float], p: float) -> float:
    """The *p*-th percentile of ascending values, nearest rank (the value at ``ceil(p/100 * n)``)."""
    n = len(sorted_values)
    return sorted_values[min(n - 1, max(0, math.ceil(p / 100.0 * n) - 1))]


def latency_per_second(
    queries: Iterable[Mapping[str, str | None]], t0: float, ps: Sequence[float] = (50, 95, 99)
) -> dict[str, list[Any]]:
    """Latency percentiles of the queries that finished in each second (not cumulative).

    A query finished at its intended start plus its latency (``latency_ms`` is timed from the
    intended start); only queries with a latency (status ok) count.  Keys ``t`` (second since
    start), ``n`` (queries finished), ``p50``... (ms); seconds without a finished query are gaps.
    """
    buckets: dict[int, list[float]] = {}
    for q in queries:
        lat = _num(q.get("latency_ms"))
        start = _num(q.get("intended_at")) or _num(q.get("submit_at"))
        if lat is None or start is None or q.get("status", "ok") != "ok":
            continue
        buckets.setdefault(math.floor(start + lat / 1000.0 - t0), []).append(lat)
    out: dict[str, list[Any]] = {"t": [], "n": [], **{f"p{p:g}": [] for p in ps}}
    if not buckets:
        return out
    for sec in range(min(buckets), max(buckets) + 1):
        vals = sorted(buckets.get(sec, []))
        out["t"].append(float(sec))
        out["n"].append(len(vals))
        for p in ps:
            out[f"p{p:g}"].append(round(nearest_rank(vals, p), 3) if vals else None)
    return out


def cdf(hist: Mapping[str, Any] | None, scale: float = 1000.0) -> tuple[list[float], list[float], int]:
    """(values, cumulative % of all values, values left out) of a histogram dict, for a log x axis.

    One point per non-empty bucket (value / *scale*: us -> ms); values <= 0 (delivery latency
    under clock skew) cannot sit on a log axis and are counted as left out.
    """
    if not hist or not hist.get("count"):
        return [], [], 0
    h = Histogram.from_dict(hist)
    xs, ys, seen, left = [], [], 0, 0
    for v, n in h.buckets():
        seen += n
        if v <= 0:
            left += n
            continue
        xs.append(v / scale)
        ys.append(round(100.0 * seen / h.count, 4))
    return xs, ys, left


def _proc_total(p: Mapping[str, Any]) -> float:
    return float(p.get("cpu_s") or 0.0) + float(p.get("cpu_children_s") or 0.0)


def host_cpu_series(
    hosts: Mapping[str, Sequence[Mapping[str, Any]]], t0: float
) -> dict[str, list[tuple[float, float]]]:
    """host -> [(second since start, CPU % of the whole host)] from the host monitors."""
    return {
        h: [
            (float(r["ts"]) - t0, float(r["cpu_percent"]))
            for r in rows
            if _num(r.get("ts")) is not None and _num(r.get("cpu_percent")) is not None
        ]
        for h, rows in hosts.items()
    }


def component_cpu_series(hosts: Mapping[str, Sequence[Mapping[str, Any]]], t0: float) -> dict[str, dict[int, float]]:
    """component -> {second since start: cores used}, summed over hosts, from the monitors' ``procs``.

    Per interval: the growth of each process's ``cpu_s + cpu_children_s`` over the interval's
    length; a process first seen after the first sample counts from 0; when a process vanishes
    and an ancestor reaped it, the ancestor's jump in ``cpu_children_s`` (its whole lifetime) is
    taken off again, as ``kit.run._components`` counts it.
    """
    out: dict[str, dict[int, float]] = {}
    for rows in hosts.values():
        prev: dict[int, Mapping[str, Any]] | None = None
        prev_ts = None
        for r in rows:
            if not isinstance(r.get("procs"), list) or _num(r.get("ts")) is None:
                continue
            cur = {int(p["pid"]): p for p in r["procs"] if "pid" in p}
            ts = float(r["ts"])
            if prev is not None and prev_ts is not None and ts > prev_ts:
                delta: dict[str, float] = {}
                for pid, p in cur.items():
                    old = prev.get(pid)
                    same = old is not None and old.get("root") == p.get("root") and _proc_total(p) >= _proc_total(old)
                    c = str(p.get("component"))
                    delta[c] = delta.get(c, 0.0) + (
                        _proc_total(p) - _proc_total(old) if same and old is not None else _proc_total(p)
                    )
                gone = {pid: p for pid, p in prev.items() if pid not in cur}
                for p in gone.values():
                    reaper = int(p.get("ppid") or 0)
                    while reaper in gone:
                        reaper = int(gone[reaper].get("ppid") or 0)
                    if reaper in cur:
                        c = str(cur[reaper].get("component"))
                        delta[c] = delta.get(c, 0.0) - _proc_total(p)
                sec = round(ts - t0)
                for c, d in delta.items():
                    slot = out.setdefault(c, {})
                    slot[sec] = round(slot.get(sec, 0.0) + max(0.0, d) / (ts - prev_ts), 4)
                for c in {str(p.get("component")) for p in cur.values()}:
                    out.setdefault(c, {}).setdefault(sec, 0.0)
            prev, prev_ts = cur, ts
    return out


#: wsproxy /stats counters drawn as rates, and the gauges drawn as sampled (server_series)
WSPROXY_RATES = (
    "messages_forwarded",
    "slow_client_drops",
    "ping_timeouts",
    "redis_lost_drops",
    "redis_unavailable",
    "auth_failures",
)
WSPROXY_GAUGES = ("connections_open", "subscriptions", "pubsub_connections")
SIM_RATES = ("tokens_published", "done_published", "queries", "sessions_created", "errors", "redis_pool_exhausted")
REDIS_RATES = ("total_commands_processed",)
REDIS_GAUGES = ("pubsub_channels", "connected_clients", "used_memory")
_LABEL = re.compile(r'(\w+)="([^"]*)"')


def _labels(key: str) -> dict[str, str]:
    return dict(_LABEL.findall(key))


def server_series(
    hosts: Mapping[str, Sequence[Mapping[str, Any]]], t0: float
) -> dict[str, dict[str, dict[float, float]]]:
    """``{series: {label: {t: value}}}`` from every host's samples (``ts`` epoch seconds; *t0* the run's zero).

    Series: ``wsproxy_connections_open``, ``wsproxy_subscriptions``, ``wsproxy_pubsub_connections`` (label
    ``host:wsproxy-i``); ``wsproxy_<counter>_per_s`` for :data:`WSPROXY_RATES`; ``sim_<counter>_per_s``
    for :data:`SIM_RATES` (label the sim host); ``haproxy_server_sessions`` (``balancer:backend/server``),
    ``haproxy_backend_queue`` (``balancer:backend``); ``redis_<gauge>`` for :data:`REDIS_GAUGES` and
    ``redis_<counter>_per_s`` for :data:`REDIS_RATES` (Redis's INFO, label ``host:redis``).
    """
    out: dict[str, dict[str, dict[float, float]]] = {}

    def put(series: str, label: str, t: float, v: float) -> None:
        out.setdefault(series, {}).setdefault(label, {})[round(t, 3)] = v

    for host, samples in hosts.items():
        prev: dict[str, tuple[float, Mapping[str, Any]]] = {}
        for s in samples:
            ts = s.get("ts")
            services = s.get("services")
            if not isinstance(ts, (int, float)) or not isinstance(services, Mapping):
                continue
            t = ts - t0
            for name, figures in services.items():
                if not isinstance(figures, Mapping) or "error" in figures:
                    continue
                label = f"{host}:{name}"
                rates: tuple[str, ...]
                if contract.is_wsproxy_program(name):
                    for k in WSPROXY_GAUGES:
                        if k in figures:
                            put(f"wsproxy_{k}", label, t, float(figures[k]))
                    rates = WSPROXY_RATES
                elif name == "sim":
                    rates = SIM_RATES
                elif name == "redis":
                    for k in REDIS_GAUGES:
                        if k in figures:
                            put(f"redis_{k}", label, t, float(figures[k]))
                    rates = REDIS_RATES
                elif name == "haproxy":
                    for key, v in figures.items():
                        lab = _labels(key)
                        if key.startswith("haproxy_server_current_sessions{"):
                            put("haproxy_server_sessions", f"{host}:{lab.get('proxy')}/{lab.get('server')}", t, v)
                        elif key.startswith("haproxy_backend_current_queue{"):
                            put("haproxy_backend_queue", f"{host}:{lab.get('proxy')}", t, v)
                    continue
                else:
                    continue
                before = prev.get(name)
                if before is not None and t > before[0]:
                    dt = t - before[0]
                    for k in rates:
                        if k in figures and k in before[1]:
                            put(f"{name.split('-')[0]}_{k}_per_s", label, t, max(0.0, (figures[k] - before[1][k]) / dt))
                prev[name] = (t, figures)
    return out


def chaos_events(summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The run's chaos events, its stages' starts and the balancer's servers marked DOWN, as ``{at_s, for_s,
    label}`` (seconds since the agreed start)."""
    out = []
    for e in summary.get("events") or []:
        at = _num(e.get("at_s")) if isinstance(e, Mapping) else None
        if at is None:
            continue
        words = [str(e.get(k)) for k in ("action", "target", "program") if e.get(k)]
        if e.get("host"):
            words.append(f"@{e['host']}")
        out.append({"at_s": at, "for_s": _num(e.get("for_s")) or 0.0, "label": " ".join(words) or "event"})
    for st in summary.get("stages") or []:  # a staged run's stage starts (the first is the run's start)
        at = _num(st.get("start_s")) if isinstance(st, Mapping) and st.get("index") else None
        if at is not None:
            label = f"stage {st['index'] + 1}: {_num(st.get('target_to')) or 0:g}"
            out.append({"at_s": at, "for_s": 0.0, "label": label})
    for e in summary.get("server_events") or []:  # the balancer's decisions that took capacity away
        at = _num(e.get("at_s")) if isinstance(e, Mapping) else None
        if at is None or e.get("state") not in ("DOWN", "NO_SERVER"):
            continue
        label = f"{e.get('server') or e.get('backend')} {'DOWN' if e['state'] == 'DOWN' else 'no server'}"
        out.append({"at_s": at, "for_s": 0.0, "label": f"{label} @{e.get('balancer')}"})
    return out


# -- specs -----------------------------------------------------------------------------------------


_K = TypeVar("_K")  # a series' key (a label, a run's position)
_X = TypeVar("_X", bound=float)  # an x value (seconds, whole seconds, ms)
_Y = TypeVar("_Y")  # a y value


def _align(series: Mapping[_K, Mapping[_X, _Y]]) -> tuple[list[_X], dict[_K, list[_Y | None]]]:
    """Union of x values of several {x: y} maps; each series gets None where it has no value."""
    xs = sorted({x for m in series.values() for x in m})
    return xs, {k: [m.get(x) for x in xs] for k, m in series.items()}


def chart_spec(
    cid: str,
    title: str,
    xs: Sequence[float],
    series: Sequence[dict[str, Any]],
    *,
    ylabel: str,
    xlabel: str = TIME_X,
    y2label: str | None = None,
    logx: bool = False,
    step: bool = False,
    events: Sequence[Mapping[str, Any]] = (),
    note: str = "",
    ymin0: bool = True,
    points: bool = False,
    xrange: Sequence[float] | None = None,
    sync: str | None = None,
) -> dict[str, Any]:
    """One chart; *xrange* fixes its x range (else the data's and its events'), *sync* links its cursor with
    every chart of the page that has the same key."""
    return {
        "id": cid,
        "title": title,
        "x": list(xs),
        "xlabel": xlabel,
        "ylabel": ylabel,
        "y2label": y2label,
        "logx": logx,
        "step": step,
        "events": list(events),
        "note": note,
        "ymin0": ymin0,
        "points": points,
        "xrange": list(xrange) if xrange is not None else None,
        "sync": sync,
        "series": [dict(s) for s in series],
    }


def run_chart_specs(run: RunData, prefix: str = "c") -> list[dict[str, Any]]:
    """Every chart of one run's report (see the module docstring)."""
    t0 = run.t0
    ev = chaos_events(run.summary)
    tl = timeline_series(run.timeline, t0)
    t = tl["t"]
    specs = [
        chart_spec(
            f"{prefix}-load",
            "Active sessions and queries per second",
            t,
            [
                {"label": "active sessions", "values": tl.get("active_sessions", [])},
                {"label": "queries done /s", "values": tl.get("queries_done", []), "axis": 2},
            ],
            ylabel="sessions",
            y2label="queries/s",
            events=ev,
        ),
        chart_spec(
            f"{prefix}-tokens",
            "Tokens received per second",
            t,
            [{"label": "tokens/s", "values": tl.get("tokens", [])}],
            ylabel="tokens/s",
            events=ev,
        ),
    ]
    for name, title in (("delivery", "Token delivery latency"), ("ttft", "Time to first token")):
        pct = timeline_percentiles(run.timeline, t0, name)
        specs.append(
            chart_spec(
                f"{prefix}-{name}-t",
                f"{title} per second (p50, p99, max)",
                pct["t"],
                [{"label": s, "values": pct[s]} for s in ("p50", "p99", "max")],
                ylabel="ms",
                events=ev,
                ymin0=False,
                note="per-second histograms merged over every generator process (never averaged)",
            )
        )
    lat = latency_per_second(run.queries, t0)
    specs.append(
        chart_spec(
            f"{prefix}-latency",
            "Query latency per second (queries finished in that second)",
            lat["t"],
            [{"label": k, "values": lat[k]} for k in ("p50", "p95", "p99")],
            ylabel="latency (ms)",
            events=ev,
            ymin0=False,
            note="from queries.csv; latency timed from each query's intended start",
        )
    )
    specs.append(
        chart_spec(
            f"{prefix}-errors",
            "Errors and reconnects per second",
            t,
            [
                {"label": label, "values": tl.get(k, [])}
                for k, label in (
                    ("errors", "errors"),
                    ("queries_failed", "queries failed"),
                    ("reconnect_attempts", "reconnect attempts"),
                    ("reconnects_ok", "reconnects ok"),
                )
            ],
            ylabel="per second",
            events=ev,
        )
    )
    hx, hy = _align(
        {
            h: dict(pts)
            for h, pts in ((h, [(round(x), y) for x, y in pts]) for h, pts in host_cpu_series(run.hosts, t0).items())
        }
    )
    specs.append(
        chart_spec(
            f"{prefix}-hostcpu",
            "Host CPU",
            hx,
            [{"label": h, "values": v} for h, v in hy.items()],
            ylabel="CPU % of the host",
            events=ev,
        )
    )
    comp = component_cpu_series(run.hosts, t0)
    order = ("client", "sim", "wsproxy", "haproxy", "redis")
    cx, cy = _align({c: comp[c] for c in sorted(comp, key=lambda c: (order.index(c) if c in order else 99, c))})
    specs.append(
        chart_spec(
            f"{prefix}-compcpu",
            "CPU per kit component (all hosts)",
            cx,
            [{"label": c, "values": v} for c, v in cy.items()],
            ylabel="cores",
            events=ev,
            note="" if comp else "no per-process samples in host.jsonl",
        )
    )
    specs += server_chart_specs(run, ev, prefix)
    for key, title in DISTRIBUTIONS[:2]:
        xs, ys, left = cdf(run.histograms.get(key))
        specs.append(
            chart_spec(
                f"{prefix}-dist-{key}",
                f"{title}: distribution",
                xs,
                [{"label": f"% of {key} values <= x", "values": ys}],
                xlabel="ms (log)",
                ylabel="cumulative %",
                logx=True,
                step=True,
                note=f"{left} value(s) <= 0 ms not shown (clock skew)" if left else "",
            )
        )
    _share_time_axis(specs, run_x_range(run))
    return specs


#: the server-side charts: (series of server_series, id, title, unit)
SERVER_CHARTS = (
    ("wsproxy_connections_open", "wsconn", "WebSockets open per wsproxy instance (its /stats)", "connections"),
    ("wsproxy_messages_forwarded_per_s", "wsfwd", "Frames forwarded per second per wsproxy instance", "frames/s"),
    ("wsproxy_slow_client_drops_per_s", "wsdrop", "Slow clients dropped per second per wsproxy instance", "per second"),
    ("haproxy_server_sessions", "hasess", "HAProxy current sessions per backend server", "sessions"),
    ("haproxy_backend_queue", "haqueue", "HAProxy queue per backend", "requests"),
    ("sim_tokens_published_per_s", "simpub", "Tokens the simulator published per second (all workers)", "tokens/s"),
    ("redis_total_commands_processed_per_s", "rediscmd", "Redis commands per second (its INFO)", "commands/s"),
    ("redis_pubsub_channels", "redischan", "Redis pub/sub channels (one per connected session)", "channels"),
)


def server_chart_specs(run: RunData, events: Sequence[Mapping[str, Any]], prefix: str = "c") -> list[dict[str, Any]]:
    """The services' own figures over the run (host monitors' ``--scrape``); none when no host sampled them."""
    series = server_series(run.hosts, run.t0)
    specs = []
    for name, cid, title, unit in SERVER_CHARTS:
        per = series.get(name)
        if not per:
            continue
        xs, ys = _align({k: dict(v) for k, v in sorted(per.items())})
        specs.append(
            chart_spec(
                f"{prefix}-{cid}",
                title,
                xs,
                [{"label": k, "values": v} for k, v in ys.items()],
                ylabel=unit,
                events=events,
            )
        )
    return specs


def compare_chart_specs(runs: Sequence[tuple[str, RunData]]) -> list[dict[str, Any]]:
    """The same views with one series per run, in *runs*' order and labelled as given, on run-relative time.

    Series are keyed by position, never by label: two runs with one run id (a run against a copy of
    itself) are two series.  Give them distinct labels (``kit.compare`` does).
    """
    labels = [label for label, _ in runs]

    def series(ys: Mapping[int, list[Any]]) -> list[dict[str, Any]]:
        return [{"label": labels[i], "values": ys[i]} for i in range(len(runs))]

    specs = []
    for field_, title, unit in (
        ("tokens", "Tokens received per second", "tokens/s"),
        ("active_sessions", "Active sessions", "sessions"),
        ("errors", "Errors per second", "per second"),
    ):
        per: dict[int, dict[float, float]] = {}
        for i, (_, r) in enumerate(runs):
            tl = timeline_series(r.timeline, r.t0)
            # whole seconds since each run's start, so that the runs' points share x values
            per[i] = {float(round(t)): v for t, v in zip(tl["t"], tl.get(field_, []))}
        xs, ys = _align(per)
        specs.append(chart_spec(f"cmp-{field_}", title, xs, series(ys), ylabel=unit))
    lats = [latency_per_second(r.queries, r.t0) for _, r in runs]  # one pass over each run's queries
    for p in ("p50", "p99"):
        per = {}
        for i, lat in enumerate(lats):
            per[i] = {x: y for x, y in zip(lat["t"], lat[p]) if y is not None}
        xs, ys = _align(per)
        specs.append(
            chart_spec(
                f"cmp-lat-{p}", f"Query latency {p} per second", xs, series(ys), ylabel="latency (ms)", ymin0=False
            )
        )
    ranges = [run_x_range(r) for _, r in runs]
    firsts = [s["x"][0] for s in specs if s["x"]]
    lasts = [s["x"][-1] for s in specs if s["x"]]
    _share_time_axis(
        specs, (min([0.0, *firsts, *(lo for lo, _ in ranges)]), max([1.0, *lasts, *(hi for _, hi in ranges)]))
    )
    for key, title in DISTRIBUTIONS:
        curves: dict[int, dict[float, float]] = {}
        for i, (_, r) in enumerate(runs):
            cdf_x, cdf_y, _ = cdf(r.histograms.get(key))
            curves[i] = dict(zip(cdf_x, cdf_y))
        xs, ys = _align(curves)
        # a CDF is defined between its points: carry each run's value forward over the other runs' x values
        for k, vals in ys.items():
            last = 0.0
            for j, v in enumerate(vals):
                if v is None:
                    vals[j] = last if xs[j] <= max(curves[k], default=0) else 100.0
                else:
                    last = v
        specs.append(
            chart_spec(
                f"cmp-dist-{key}",
                f"{title}: distribution",
                xs,
                series(ys),
                xlabel="ms (log)",
                ylabel="cumulative %",
                logx=True,
                step=True,
            )
        )
    return specs


# -- HTML ------------------------------------------------------------------------------------------


def assets_html() -> str:
    """uPlot's CSS and JS, inlined (for ``<head>``)."""
    css = (ASSETS / "uPlot.min.css").read_text()
    js = (ASSETS / "uPlot.iife.min.js").read_text().replace("</script", "<\\/script")
    return f"<style>{css}</style>\n<script>{js}</script>\n"


_BUILDER = r"""
(function () {
  const body = document.body;
  window.addEventListener('error', e => { body.dataset.chartError = String(e.message || e); });
  const specs = JSON.parse(document.getElementById('chart-specs').textContent);
  const palette = PALETTE;
  const r1 = v => Math.round(v * 10) / 10;
  const clean = v => +v.toPrecision(12);   // 3 * 0.1 -> 0.3

  // uPlot asks a scale's range both for the data's extent (on load, on a double click) and for a
  // drag-zoom's selection: only the former is replaced by the page's range, a zoom is kept as it is
  function dataExtent(u, lo, hi) {
    const xs = u.data && u.data[0];
    return lo == null || !xs || xs.length < 2 || (lo === xs[0] && hi === xs[xs.length - 1]);
  }

  // log axes: the range snapped to 1-2-5 values (to 1..9 or two digits when the data would fill less than
  // half of that), ticks at decades (1, 10, 100 ...), or at 1-2-5 or 1..9 multiples when fewer than 3
  // decades fit, or linear ticks inside one step of those; every tick labelled
  const GRIDS = [[1, 2, 5], [1, 2, 3, 4, 5, 6, 7, 8, 9], Array.from({length: 90}, (_, i) => clean(1 + i / 10))];
  function snapLog(v, up, mants) {
    const e = Math.floor(Math.log10(v)), grid = [];
    for (let k = e - 1; k <= e + 1; k++) mants.forEach(m => grid.push(clean(m * 10 ** k)));
    return up ? grid.find(g => g >= v * (1 - 1e-9)) : grid.reverse().find(g => g <= v * (1 + 1e-9));
  }
  function logExtent(lo, hi) {
    if (!(lo > 0) || !(hi > 0)) return [1, 10];
    let ext;
    for (const mants of GRIDS) {
      const a = snapLog(lo, false, mants);
      let b = snapLog(hi, true, mants);
      if (b <= a) b = snapLog(a * 1.001, true, mants);
      ext = [a, b];
      if (Math.log(hi / lo) >= 0.5 * Math.log(b / a)) break;
    }
    return ext;
  }
  function niceStep(raw) {
    const e = 10 ** Math.floor(Math.log10(raw)), m = raw / e;
    return clean((m <= 1 ? 1 : m <= 2 ? 2 : m <= 5 ? 5 : 10) * e);
  }
  function logSplits(u, axisIdx, min, max) {
    if (!(min > 0) || !(max > min)) return [min];
    const e0 = Math.floor(Math.log10(min)), e1 = Math.ceil(Math.log10(max));
    for (const mants of [[1], [1, 2, 5], [1, 2, 3, 4, 5, 6, 7, 8, 9]]) {
      const out = [];
      for (let e = e0; e <= e1; e++) mants.forEach(m => {
        const v = clean(m * 10 ** e);
        if (v >= min * (1 - 1e-9) && v <= max * (1 + 1e-9)) out.push(v);
      });
      if (out.length >= 3) { const k = Math.ceil(out.length / 12); return out.filter((v, i) => i % k === 0); }
    }
    const step = niceStep((max - min) / 4), out = [];
    for (let v = Math.ceil(min / step) * step; v <= max * (1 + 1e-9); v += step) out.push(clean(v));
    return out;
  }
  const tickLabel = v => v == null ? '' : (v >= 1e5 || v < 1e-3) ? v.toExponential(0) : String(clean(v));

  // chaos and balancer events: a dashed line (and a band over the fault's duration), the label inside the
  // plot area: right of its line, left of it when it would overflow, a row lower when it would overlap
  function drawEvents(u, events) {
    const ctx = u.ctx, bb = u.bbox, d = devicePixelRatio || 1;
    const left = bb.left, top = bb.top, right = bb.left + bb.width;
    const pad = 4 * d, lineH = 15 * d, gap = 6 * d;
    const rows = Math.max(1, Math.floor((bb.height - pad) / lineH));
    const placed = [], lines = [];
    ctx.save();
    ctx.beginPath(); ctx.rect(left, top, bb.width, bb.height); ctx.clip();
    ctx.font = `${Math.round(11 * d)}px sans-serif`;
    ctx.textBaseline = 'top';
    ctx.textAlign = 'left';   // uPlot leaves the last axis' alignment (right, for a left y axis) on the context
    events.slice().sort((a, b) => a.at_s - b.at_s).forEach(ev => {
      const x0 = u.valToPos(ev.at_s, 'x', true);
      const x1 = ev.for_s > 0 ? u.valToPos(ev.at_s + ev.for_s, 'x', true) : x0;
      if (x1 < left || x0 > right) return;   // outside a zoomed-in range
      if (ev.for_s > 0) {
        ctx.fillStyle = 'rgba(213,94,0,0.10)';
        ctx.fillRect(x0, top, Math.max(1, x1 - x0), bb.height);
      }
      ctx.strokeStyle = '#D55E00'; ctx.lineWidth = 2 * d;
      ctx.setLineDash([6 * d, 4 * d]);
      ctx.beginPath(); ctx.moveTo(x0, top); ctx.lineTo(x0, top + bb.height); ctx.stroke();
      ctx.setLineDash([]);
      lines.push(x0);
      const w = ctx.measureText(ev.label).width, h = lineH - 2 * d;
      const anchor = Math.min(Math.max(x0, left), right);
      let x = anchor + pad;
      if (x + w > right) x = anchor - pad - w;
      x = Math.max(left, Math.min(x, right - w));
      let row = 0;
      while (row < rows - 1 && placed.some(p => p.row === row && x < p.x + p.w + gap && p.x < x + w + gap)) row++;
      const y = top + pad + row * lineH;
      ctx.fillStyle = 'rgba(255,255,255,0.85)';
      ctx.fillRect(x - 2 * d, y - d, w + 4 * d, lineH);
      ctx.fillStyle = '#D55E00';
      ctx.fillText(ev.label, x, y);
      placed.push({text: ev.label, row: row, line: x0, x: x, y: y, w: w, h: h, ink: 0});
    });
    ctx.restore();
    return {placed: placed, lines: lines};
  }

  // what was drawn, from one read of the canvas (Chrome warns about several): the series' ink (saturated
  // pixels in the plot box and 2 px around it, where a series flat at the range's edge is drawn half
  // outside; event lines and labels left out), and each label's text pixels (orange) inside its box
  function measure(u, el, ev) {
    const bb = u.bbox, d = devicePixelRatio || 1, m = 2 * d;
    const x0 = Math.floor(bb.left - m), y0 = Math.floor(bb.top - m);
    const W = Math.ceil(bb.width + 2 * m), H = Math.ceil(bb.height + 2 * m);
    const img = u.ctx.getImageData(x0, y0, W, H).data;
    const placed = ev ? ev.placed : [], lines = ev ? ev.lines : [];
    const inLabel = (x, y) => placed.find(p => x >= p.x - 2 * d && x < p.x + p.w + 2 * d && y >= p.y - d && y < p.y + p.h + 2 * d);
    let ink = 0;
    for (let j = 0; j < H; j++) for (let i = 0; i < W; i++) {
      const k = 4 * (j * W + i), r = img[k], g = img[k + 1], b = img[k + 2];
      if (img[k + 3] <= 128) continue;
      const x = x0 + i, y = y0 + j, lab = placed.length ? inLabel(x, y) : null;
      if (lab) { if (r - b > 100) lab.ink++; continue; }
      if (lines.some(l => Math.abs(x - l) <= 2 * d)) continue;
      if (Math.max(r, g, b) - Math.min(r, g, b) > 60) ink++;
    }
    el.dataset.ink = String(ink);
    if (ev) {
      el.dataset.plot = JSON.stringify([bb.left, bb.top, bb.width, bb.height].map(r1));
      el.dataset.labels = JSON.stringify(placed.map(p => ({text: p.text, line: r1(p.line), x: r1(p.x), y: r1(p.y),
                                                           w: r1(p.w), h: r1(p.h), ink: p.ink})));
    }
  }

  let rendered = 0;
  specs.forEach(s => {
    const el = document.getElementById(s.id);
    const evs = s.events || [];
    const xs = s.x.slice();
    const series = [{label: s.xlabel, value: (u, v) => v == null ? '-' : (+v.toFixed(3)).toString()}];
    s.series.forEach((z, i) => series.push({
      label: z.label, stroke: palette[i % palette.length], width: 1.6, scale: z.axis === 2 ? 'y2' : 'y',
      spanGaps: false, points: {show: !!s.points || xs.length < 3},
      paths: s.step ? uPlot.paths.stepped({align: 1}) : undefined,
      value: (u, v) => v == null ? '-' : (+v.toFixed(2)).toString(),
    }));
    const evMin = Math.min(...evs.map(e => e.at_s)), evMax = Math.max(...evs.map(e => e.at_s + e.for_s));
    const xscale = s.logx
      ? {time: false, distr: 3, log: 10, range: (u, lo, hi) => dataExtent(u, lo, hi) ? logExtent(lo, hi) : [lo, hi]}
      : {time: false, range: (u, lo, hi) => {
          if (!dataExtent(u, lo, hi)) return [lo, hi];
          if (s.xrange) return s.xrange.slice();
          lo = Math.min(lo ?? 0, evMin); hi = Math.max(hi ?? 1, evMax);
          return lo === hi ? [lo - 1, hi + 1] : [lo, hi]; }};
    // counts and rates start at 0; latencies use uPlot's own padded range (their spread is the story)
    const yrange = (u, lo, hi) => [Math.min(0, lo ?? 0), (hi ?? 0) > 0 ? hi * 1.05 : 1];
    const scales = {x: xscale, y: s.ymin0 ? {range: yrange} : {}};
    const xaxis = {label: s.xlabel, labelSize: 20};
    if (s.logx) Object.assign(xaxis, {splits: logSplits, filter: (u, splits) => splits, values: (u, splits) => {
      const labels = splits.map(tickLabel);
      el.dataset.xTicks = labels.join(' ');
      return labels;
    }});
    const axes = [xaxis, {label: s.ylabel, labelSize: 20, size: 60}];
    if (s.y2label) { scales.y2 = s.ymin0 ? {range: yrange} : {}; axes.push({label: s.y2label, labelSize: 20, size: 60, scale: 'y2', side: 1, grid: {show: false}}); }
    // one sync key per page's time charts: hovering (or zooming) one shows the same second on all
    const cursor = {drag: {x: true, y: false}};
    if (s.sync) cursor.sync = {key: s.sync, scales: ['x', null]};
    // what was drawn, for the tests: the x scale, the series' ink and the event labels' boxes
    const hooks = {
      setScale: [(u, key) => { if (key === 'x') el.dataset.xRange = [u.scales.x.min, u.scales.x.max].map(clean).join(','); }],
      draw: [u => measure(u, el, evs.length ? drawEvents(u, evs) : null)],
    };
    const width = Math.max(320, el.clientWidth || 560);
    try {
      new uPlot({title: s.title, width: width, height: 250, scales: scales, axes: axes, series: series, hooks: hooks,
                 cursor: cursor},
                [xs, ...s.series.map(z => z.values)], el);
      let n = 0;
      s.series.forEach(z => z.values.forEach(v => { if (v !== null && v !== undefined) n++; }));
      el.dataset.points = String(n);
      el.dataset.series = String(s.series.length);
      el.dataset.rendered = '1';
      rendered++;
    } catch (err) {
      el.dataset.error = String(err);
      console.error('chart ' + s.id + ': ' + err);
    }
  });
  body.dataset.chartsRendered = String(rendered);
  body.dataset.chartsTotal = String(specs.length);
})();
"""  # noqa: E501 (JavaScript shipped byte for byte into the page)


def charts_html(specs: Sequence[Mapping[str, Any]]) -> str:
    """The charts' containers, their data and the builder (after :func:`assets_html` in the page)."""
    e = html.escape
    cells = []
    for s in specs:
        note = f'<p class="chart-note">{e(s["note"])}</p>' if s.get("note") else ""
        cells.append(
            f'<figure class="chart"><div id="{e(s["id"])}" class="chart-box" data-rendered="0"></div>{note}</figure>'
        )
    data = json.dumps(list(specs), separators=(",", ":"), allow_nan=False).replace("</", "<\\/")
    builder = _BUILDER.replace("PALETTE", json.dumps(list(PALETTE)))
    style = (
        "<style>.charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(520px,1fr));gap:1em 2em}"
        ".chart{margin:0}.chart-note{margin:0;color:#555;font-size:85%}.u-title{font-size:15px}</style>"
    )
    return (
        f'{style}<div class="charts">{"".join(cells)}</div>\n'
        f'<script type="application/json" id="chart-specs">{data}</script>\n<script>{builder}</script>\n'
    )
