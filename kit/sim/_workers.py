"""The simulator's counters summed over all its workers: ``GET /stats/all`` and ``GET /metrics``.

The simulator runs ``FASTAPI_WORKERS`` worker processes and a request reaches one of them, so a worker's
``/stats`` holds its own counters only.  :func:`kit.sim._serve.serve` makes a directory for the
process group and names it in ``KIT_SIM_STATS_DIR`` before the workers start; each worker writes
its counters there as ``<pid>-<start ns>.json`` once a second (:func:`publish`, atomically) and before
it answers a summed request; :func:`gather` reads every worker's file and adds them up.  Counters add
(a worker that died keeps what it counted); gauges (queries in flight) add over the workers still
alive; maxima take the largest.  Without the directory (an app served some other way) the sums are
the answering worker's own.

Workers that die: the supervisor (:mod:`kit.sim._serve`) starts another in a dead worker's place, with a
pid and a start of its own, so a file of its own: the dead worker's file stays, its counters still
added once and its gauges no longer.  A worker counts as alive while its pid exists and its file is
fresh (written within :data:`STALE_S`), so a dead worker's pid taken by another process is not read as
that worker alive, and the start in the name keeps a reused pid from overwriting a dead worker's counts.
A file that cannot be read or parsed is skipped, never a failed sum.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kit._prom import Metric, exposition

__all__ = ["STATS_DIR_ENV", "stats_dir", "publish", "gather", "METRICS", "metrics_text", "mark_start"]

STATS_DIR_ENV = "KIT_SIM_STATS_DIR"

#: what /metrics exposes, one line per figure: (the /stats key, kind, help); named sim_<key>
METRICS = (
    ("sessions_created", "counter", "sessions created (POST /session/create answered 201)"),
    ("sessions_closed", "counter", "sessions closed"),
    ("queries", "counter", "queries accepted (POST /session/{id}/run answered 202)"),
    ("tokens_published", "counter", "token messages published to Redis"),
    ("done_published", "counter", "done messages published to Redis"),
    ("messages_unheard", "counter", "messages PUBLISH reported no subscriber for"),
    ("messages_dropped", "counter", "messages dropped because publishing failed"),
    ("publish_errors", "counter", "publishing batches that failed"),
    ("publish_batches", "counter", "publishing batches (one pipelined write each)"),
    ("client_errors", "counter", "requests answered 4xx"),
    ("errors", "counter", "requests answered 5xx, and failed publishing batches"),
    ("redis_pool_exhausted", "counter", "requests answered 503 because every pooled Redis connection stayed busy"),
    ("health_checks", "counter", "GET /health answered (the balancers' checks)"),
    ("queries_cancelled", "counter", "queries cancelled by a close of their session"),
    ("tokens_cancelled", "counter", "tokens of cancelled queries never published"),
    ("queries_refused", "counter", "queries refused (429) at a bound on queries in flight"),
    ("request_body_timeouts", "counter", "requests answered 408: the body did not arrive in time"),
    ("closes_heard", "counter", "closes announced by any worker and heard by these"),
    ("queries_in_flight", "gauge", "queries whose tokens are still being published"),
    ("tokens_in_flight", "gauge", "tokens of the queries in flight"),
    ("publish_max_lag_ms", "gauge", "the latest a message was published after its due time (ms)"),
    ("workers", "gauge", "worker processes whose counters are summed here"),
)
#: keys whose sum over workers is not a sum
_MAX_KEYS = ("uptime_s", "publish_max_batch", "publish_max_lag_ms", "publish_tick_ms")
_LIVE_ONLY = ("queries_in_flight", "tokens_in_flight")
#: seconds after which a worker's file unchanged means the worker is gone (it writes every second)
STALE_S = 5.0
#: this process's start, in its file's name
_STARTED_NS = time.time_ns()


def mark_start() -> None:
    """In a worker forked from a process that imported this module: its own start, not its parent's."""
    global _STARTED_NS
    _STARTED_NS = time.time_ns()


def stats_dir() -> Path | None:
    d = os.environ.get(STATS_DIR_ENV)
    return Path(d) if d else None


def publish(stats: Mapping[str, Any]) -> None:
    """Write this worker's *stats* to the group's directory (no-op without one); never raises."""
    d = stats_dir()
    if d is None:
        return
    name = f"{os.getpid()}-{_STARTED_NS}"
    path = d / f"{name}.json"
    tmp = d / f".{name}.tmp"
    try:
        tmp.write_text(json.dumps(stats))
        os.replace(tmp, path)
    except OSError:
        pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def gather(own: Mapping[str, Any]) -> dict[str, Any]:
    """Every worker's counters summed (*own*: the answering worker's, fresher than its file)."""
    per_worker: dict[str, tuple[int, bool, Mapping[str, Any]]] = {}  # file name -> (pid, alive, stats)
    d = stats_dir()
    now = time.time()
    if d is not None:
        for p in d.glob("*.json"):
            try:
                pid = int(p.stem.split("-", 1)[0])
                fresh = now - p.stat().st_mtime <= STALE_S
                st = json.loads(p.read_text())
                if not isinstance(st, dict):
                    continue
            except (OSError, ValueError):
                continue  # a file being replaced: the next read has it
            per_worker[p.stem] = (pid, fresh and _alive(pid), st)
    per_worker[f"{own['pid']}-{_STARTED_NS}"] = (int(own["pid"]), True, own)
    pids = sorted({pid for pid, _, _ in per_worker.values()})
    total: dict[str, Any] = {"workers": sum(live for _, live, _ in per_worker.values()), "pids": pids}
    for _pid, live, st in per_worker.values():
        for k, v in st.items():
            if k == "pid" or not isinstance(v, (int, float)) or isinstance(v, bool):
                continue
            if k in _MAX_KEYS:
                total[k] = max(total.get(k, v), v)
            elif k in _LIVE_ONLY and not live:
                total.setdefault(k, 0)
            else:
                total[k] = total.get(k, 0) + v
    return total


def metrics_text(total: Mapping[str, Any]) -> str:
    """/metrics of the whole simulator (every worker) from :func:`gather`'s sums."""
    return exposition(Metric(f"sim_{key}", kind, help_, value=total.get(key, 0)) for key, kind, help_ in METRICS)
