"""What each part of the kit cost in a run, and which part ran out of cores first (pure).

Every host monitor (``kit/hostmon.py --procs``) samples the process trees of the
kit's services and generators once a second: per process its own CPU seconds
(``cpu_s``), what its reaped children used (``cpu_children_s``) and its parent.
:func:`component_costs` turns those samples into one entry per (component,
host): CPU seconds over the run, share of all kit CPU, CPU per delivered
token, the busiest interval in cores, peak memory; and :func:`bottleneck`
names the component whose busiest interval came closest to the cores it can
use (a run whose bottleneck is the kit's own client or simulator measured the
kit, not the system under test: the report says so).

Counting, interval by interval: a process present in both samples adds the
growth of ``cpu_s + cpu_children_s``; a process first seen in a later sample
(a generator, a restarted service, a new worker) adds all of it (it started
from 0); a process present in the first sample counts from that sample.
When a process vanishes, the ancestor that reaped it gains its whole lifetime
in ``cpu_children_s``: what was already counted for it is taken off again, so
only the part after its last sample is added and nothing counts twice.  A
process reaped by something outside the tree (the tree's root itself) loses
at most its last interval.

Nothing here does I/O except :func:`load_host_samples`, which reads the files.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kit import contract

__all__ = [
    "COMPONENTS",
    "SINGLE_THREADED",
    "SATURATED_RATIO",
    "host_cpu_peaks",
    "load_host_samples",
    "component_costs",
    "bottleneck",
    "memory_per_session",
    "idle_window",
    "host_sockets",
    "service_programs",
]

log = logging.getLogger(__name__)

#: kit components in the order reports list them
COMPONENTS = ("client", "sim", "wsproxy", "haproxy", "redis")
#: components whose processes each use one core at most (Python event loops, redis' main thread);
#: haproxy runs threads over every core of its host
SINGLE_THREADED = ("client", "sim", "wsproxy", "redis")
#: a process counts towards a component's usable cores when it did at least this share of its work
BUSY_SHARE = 0.02
#: a bottleneck whose busiest second used at least this share of its usable cores was saturated: the
#: run hit its limit; below it the bottleneck is only the busiest part of a run with headroom
SATURATED_RATIO = 0.8
#: an idle window (every session connected, not one token) shorter than this, after its margins, gives no
#: idle cost: too few monitor samples to trust
IDLE_MIN_S = 10
#: seconds left out at each end of an idle window: the last tokens' tail before it, the next queries' first
#: requests after it, and a monitor interval straddling either edge
IDLE_MARGIN_S = 2


def service_programs(groups: Sequence[str], wsproxy_instances: int = 1) -> list[tuple[str, str]]:
    """``(component, program)`` of the services a host with these inventory *groups* runs.

    Program names are the ``kit_service`` role's (supervisord program / ``<prefix><program>.service``).
    """
    out: list[tuple[str, str]] = []
    for component in ("redis", "haproxy", "sim"):
        if component in groups:
            out.append((component, component))
    if "wsproxy" in groups:
        out += [("wsproxy", contract.wsproxy_program(i)) for i in range(max(1, int(wsproxy_instances)))]
    return out


def load_host_samples(run_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """host -> its monitor's samples (``hosts/<host>/host.jsonl``), unreadable lines skipped."""
    out: dict[str, list[dict[str, Any]]] = {}
    for f in sorted((run_dir / "hosts").glob("*/host.jsonl")):
        rows = []
        for line in f.read_text(errors="replace").splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
        out[f.parent.name] = rows
    return out


def _total(p: Mapping[str, Any]) -> float:
    return float(p.get("cpu_s") or 0.0) + float(p.get("cpu_children_s") or 0.0)


def _host_costs(
    host: str, rows: Sequence[Mapping[str, Any]], window: tuple[float, float] | None = None
) -> dict[str, dict[str, Any]]:
    """component -> accumulated cost on one host; with *window* (epoch seconds), also the CPU of the
    monitor intervals wholly inside it (``idle_cpu_s``) and how long they lasted (``idle_s``)."""
    acc: dict[str, dict[str, Any]] = {}
    idle_s = 0.0

    def entry(component: str) -> dict[str, Any]:
        return acc.setdefault(
            component,
            {
                "host": host,
                "component": component,
                "cpu_s": 0.0,
                "peak_cores": 0.0,
                "rss_peak_mb": 0.0,
                "rss_first_mb": None,
                "_pids": set(),
                "_own": {},
            },
        )

    samples = [r for r in rows if isinstance(r.get("procs"), list)]
    prev: dict[int, Mapping[str, Any]] | None = None
    prev_ts = None
    for r in samples:
        cur = {int(p["pid"]): p for p in r["procs"]}
        rss: dict[str, float] = {}
        for pid, p in cur.items():
            e = entry(p["component"])
            e["_pids"].add(pid)
            rss[p["component"]] = rss.get(p["component"], 0.0) + float(p.get("rss_mb") or 0.0)
        for component, mb in rss.items():
            acc[component]["rss_peak_mb"] = max(acc[component]["rss_peak_mb"], mb)
            if acc[component]["rss_first_mb"] is None:  # the component as the run found it (or as it started)
                acc[component]["rss_first_mb"] = mb
        if prev is None:  # the baseline: what ran before the first sample is not the run's
            for pid, p in cur.items():
                entry(p["component"])["_own"][pid] = [float(p.get("cpu_s") or 0.0), float(p.get("cpu_s") or 0.0)]
            prev, prev_ts = cur, r.get("ts")
            continue
        delta: dict[str, float] = {}
        for pid, p in cur.items():
            old = prev.get(pid)
            same = old is not None and old.get("root") == p.get("root") and _total(p) >= _total(old)
            delta[p["component"]] = delta.get(p["component"], 0.0) + (
                _total(p) - _total(old) if same and old is not None else _total(p)
            )
            own = entry(p["component"])["_own"]
            if not same or pid not in own:
                own[pid] = [0.0, 0.0]
            own[pid][1] = float(p.get("cpu_s") or 0.0)
        gone = {pid: p for pid, p in prev.items() if pid not in cur}
        for p in gone.values():
            reaper = int(p.get("ppid") or 0)
            while reaper in gone:
                reaper = int(gone[reaper].get("ppid") or 0)
            if reaper in cur:  # the reaper's cpu_children_s now holds this process's whole lifetime
                c = cur[reaper]["component"]
                delta[c] = delta.get(c, 0.0) - _total(p)
        ts = r.get("ts")
        dt = (ts - prev_ts) if isinstance(ts, (int, float)) and isinstance(prev_ts, (int, float)) else None
        idle = bool(dt and dt > 0 and window and window[0] <= float(prev_ts or 0) and float(ts or 0) <= window[1])
        for component, d in delta.items():
            d = max(0.0, d)
            e = entry(component)
            e["cpu_s"] += d
            if dt and dt > 0:
                e["peak_cores"] = max(e["peak_cores"], d / dt)
            if idle:
                e["idle_cpu_s"] = e.get("idle_cpu_s", 0.0) + d
        if idle and dt is not None:
            idle_s += dt
        prev, prev_ts = cur, ts
    for e in acc.values():
        e["idle_s"] = idle_s
    return acc


def component_costs(
    samples: Mapping[str, Sequence[Mapping[str, Any]]],
    tokens: int | None,
    cores: Mapping[str, int | None],
    client_reported: Mapping[str, float] | None = None,
    idle: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """One entry per (component, host) seen in the host monitors' *samples* (host -> rows).

    ``{host, component, processes, busy_processes, cpu_s, cpu_share, us_per_token, peak_cores,
    rss_peak_mb, usable_cores}``; *tokens* delivered in the run (None or 0: no per-token cost),
    *cores* each host's ``nproc``.  *client_reported* (host -> CPU seconds) is what the generator
    processes of a host measured of themselves at exit (getrusage): it replaces the sampled client
    figure when larger, since the monitor misses the work after its last sample of a process.

    With *idle* (:func:`idle_window`'s), each entry also gets what it cost while every session sat connected
    and silent: ``idle_cores`` (this host's CPU of the component in that window) and ``idle_us_per_session_s``
    (CPU microseconds per second per connected session of the whole run, this host's part: a component's
    hosts add up, like ``us_per_token``), and ``us_per_token_net``: its CPU per token with that idle cost
    of every session-second of the run taken off, what one more token costs.  Without a window (or with no
    monitor interval inside it) the three are None.
    """
    window = (float(idle["from"]), float(idle["to"])) if idle else None
    entries: list[dict[str, Any]] = []
    for host in sorted(samples):
        for component, e in _host_costs(host, samples[host], window).items():
            work = {pid: last - first for pid, (first, last) in e["_own"].items()}
            busy_floor = max(0.01, BUSY_SHARE * sum(work.values()))
            busy = sum(1 for w in work.values() if w >= busy_floor)
            nproc = cores.get(host)
            usable: int | None
            if component in SINGLE_THREADED:
                usable = max(1, busy) if not nproc else min(int(nproc), max(1, busy))
            else:
                usable = int(nproc) if nproc else None
            cpu_s = e["cpu_s"]
            if component == "client" and client_reported and client_reported.get(host, 0.0) > cpu_s:
                cpu_s = client_reported[host]
            entries.append(
                {
                    "host": host,
                    "component": component,
                    "processes": len(e["_pids"]),
                    "busy_processes": busy,
                    "cpu_s": round(cpu_s, 2),
                    "peak_cores": round(e["peak_cores"], 3),
                    "rss_peak_mb": round(e["rss_peak_mb"], 1),
                    "rss_first_mb": round(e["rss_first_mb"] or 0.0, 1),
                    "usable_cores": usable,
                    **_idle_fields(e, cpu_s, tokens, idle),
                }
            )
    total = sum(e["cpu_s"] for e in entries)
    for e in entries:
        e["cpu_share"] = round(e["cpu_s"] / total, 4) if total > 0 else None
        e["us_per_token"] = round(e["cpu_s"] * 1e6 / tokens, 2) if tokens else None
    order = {c: i for i, c in enumerate(COMPONENTS)}
    entries.sort(key=lambda e: (order.get(e["component"], len(order)), e["host"]))
    return entries


def _idle_fields(
    e: Mapping[str, Any], cpu_s: float, tokens: int | None, idle: Mapping[str, Any] | None
) -> dict[str, float | None]:
    """``idle_cores``, ``idle_us_per_session_s`` and ``us_per_token_net`` of one accumulated entry."""
    if not idle or not e.get("idle_s") or not idle.get("sessions"):
        return {"idle_cores": None, "idle_us_per_session_s": None, "us_per_token_net": None}
    cores = float(e.get("idle_cpu_s") or 0.0) / float(e["idle_s"])
    per_session = cores * 1e6 / float(idle["sessions"])
    net = None
    if tokens:
        busy = max(0.0, cpu_s - per_session * float(idle.get("session_seconds") or 0.0) / 1e6)
        net = round(busy * 1e6 / tokens, 2)
    return {"idle_cores": round(cores, 4), "idle_us_per_session_s": round(per_session, 3), "us_per_token_net": net}


def idle_window(timeline: Sequence[Mapping[str, Any]], peak: int) -> dict[str, Any] | None:
    """The run's longest stretch of seconds (timeline.csv's rows) with at least 99 % of its *peak* sessions
    connected and not one token, less IDLE_MARGIN_S at each end: ``{from, to}`` (epoch seconds), ``seconds``,
    ``sessions`` (their mean in it) and ``session_seconds`` (the run's connected sessions added over all its
    seconds); None when there is none of at least IDLE_MIN_S.

    A run gets one when every session asks a query, then thinks longer than the ramp took (``fab run
    --queries 2 --think-time T`` with T at least the ramp + 30 s): between the last first answer and the
    first second query every session is connected and silent.
    """
    if peak <= 0:
        return None
    rows = sorted(((int(r["second"]), r) for r in timeline), key=lambda x: x[0])
    quiet = [
        sec
        for sec, r in rows
        if float(r.get("active_sessions") or 0) >= 0.99 * peak
        and not float(r.get("tokens") or 0)
        and not float(r.get("queries_started") or 0)
    ]
    best: tuple[int, int] | None = None
    i = 0
    while i < len(quiet):  # each stretch of consecutive quiet seconds; keep the longest
        j = i
        while j + 1 < len(quiet) and quiet[j + 1] == quiet[j] + 1:
            j += 1
        if best is None or quiet[j] - quiet[i] > best[1] - best[0]:
            best = (quiet[i], quiet[j])
        i = j + 1
    if best is None:
        return None
    t0, t1 = best[0] + IDLE_MARGIN_S, best[1] + 1 - IDLE_MARGIN_S
    if t1 - t0 < IDLE_MIN_S:
        return None
    inside = [float(r.get("active_sessions") or 0) for sec, r in rows if best[0] <= sec <= best[1]]
    return {
        "from": t0,
        "to": t1,
        "seconds": t1 - t0,
        "sessions": round(sum(inside) / len(inside), 1),
        "session_seconds": round(sum(float(r.get("active_sessions") or 0) for _, r in rows), 1),
    }


def host_cpu_peaks(samples: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, float]:
    """host -> its busiest sample's whole-host CPU percent (every process, not only the kit's; the
    monitor's first sample only starts the interval and is left out)."""
    out: dict[str, float] = {}
    for host, rows in samples.items():
        values = [float(r["cpu_percent"]) for r in list(rows)[1:] if isinstance(r.get("cpu_percent"), (int, float))]
        if values:
            out[host] = max(values)
    return out


def bottleneck(
    entries: Sequence[Mapping[str, Any]], host_peaks: Mapping[str, float] | None = None
) -> dict[str, Any] | None:
    """The entry whose busiest interval came closest to its usable cores (None without CPU data).

    A host whose busiest second used at least SATURATED_RATIO of all its cores is the limit even when no
    single component filled its own cores (several components sharing one host's cores, as on one
    machine or in a lab): then the bottleneck is that host's CPU, named by its biggest kit consumer
    (``"resource": "host_cpu"``), since that is what a second machine would relieve first.
    """
    best = None
    for e in entries:
        usable = e.get("usable_cores")
        if not usable or not e.get("cpu_s"):
            continue
        ratio = e["peak_cores"] / usable
        if best is None or ratio > best["ratio"]:
            best = {
                "component": e["component"],
                "host": e["host"],
                "peak_cores": e["peak_cores"],
                "usable_cores": usable,
                "ratio": round(ratio, 3),
                "saturated": ratio >= SATURATED_RATIO,
                "resource": "component_cores",
            }
    if best is not None and best["saturated"]:
        return best
    full = {h: pct for h, pct in (host_peaks or {}).items() if pct / 100.0 >= SATURATED_RATIO}
    on_full = [e for e in entries if e["host"] in full and e.get("cpu_s")]
    if on_full:  # the biggest consumer of a saturated host's cores (lab hosts share one machine's)
        top = max(on_full, key=lambda e: e["cpu_s"])
        host, pct = top["host"], full[top["host"]]
        on_host = sorted((e for e in on_full if e["host"] == host), key=lambda e: -e["cpu_s"])
        return {
            "component": top["component"],
            "host": host,
            "peak_cores": top["peak_cores"],
            "usable_cores": top.get("usable_cores"),
            "ratio": round(pct / 100.0, 3),
            "saturated": True,
            "resource": "host_cpu",
            "host_cpu_peak_percent": round(pct, 1),
            "shared_by": [e["component"] for e in on_host],
        }
    return best


def memory_per_session(entries: list[dict[str, Any]], sessions: Mapping[tuple[str, str], float]) -> None:
    """Add ``sessions_peak`` and ``rss_per_session_kb`` (RSS growth from the first sample to the peak, over the
    most sessions the component held on that host) to each entry of :func:`component_costs` that *sessions*
    ((host, component) -> peak sessions held) knows; None where it held none."""
    for e in entries:
        n = sessions.get((e["host"], e["component"]))
        e["sessions_peak"] = None if n is None else int(n)
        grown = e["rss_peak_mb"] - e.get("rss_first_mb", 0.0)
        e["rss_per_session_kb"] = round(grown * 1024 / n, 1) if n else None


def host_sockets(samples: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, dict[str, float]]:
    """host -> the peaks of its kernel's TCP sockets (hostmon's /proc/net/sockstat): ``tcp_inuse``,
    ``tcp_tw`` and ``tcp_mem_mb`` (the memory their buffers held)."""
    out: dict[str, dict[str, float]] = {}
    for host, rows in samples.items():
        stats = [r["sockstat"] for r in rows if isinstance(r.get("sockstat"), Mapping) and r["sockstat"]]
        if stats:
            out[host] = {
                "tcp_inuse": max(int(s.get("tcp_inuse", 0)) for s in stats),
                "tcp_tw": max(int(s.get("tcp_tw", 0)) for s in stats),
                "tcp_mem_mb": round(max(int(s.get("tcp_mem_bytes", 0)) for s in stats) / 2**20, 1),
            }
    return out


#: the per-second series (kit._charts.server_series) that count the sessions a service held, per component
_HELD = {"wsproxy": "wsproxy_connections_open", "haproxy": "haproxy_server_sessions", "redis": "redis_pubsub_channels"}


def sessions_held(
    series: Mapping[str, Mapping[str, Mapping[float, float]]], clients: Mapping[str, float]
) -> dict[tuple[str, str], float]:
    """(host, component) -> the most sessions it held at once: what the services said of themselves each
    second (*series*: a host's wsproxy instances' open WebSockets added, its HAProxy's sessions over every
    server, Redis's pub/sub channels), and for the client *clients* (host -> its peak active sessions)."""
    out: dict[tuple[str, str], float] = {(h, "client"): n for h, n in clients.items() if n}
    for component, name in _HELD.items():
        per_host: dict[str, dict[float, float]] = {}
        for label, points in (series.get(name) or {}).items():
            at = per_host.setdefault(label.split(":", 1)[0], {})
            for t, v in points.items():
                at[t] = at.get(t, 0.0) + v
        for host, at in per_host.items():
            if at and max(at.values()) > 0:
                out[(host, component)] = max(at.values())
    return out
