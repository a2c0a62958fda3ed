"""Load shapes, the per-process load runner and the multi-process parent.

Shapes (:func:`schedule`): a *closed* model starts ``clients`` sessions,
``ramp`` per second (0 = all at once), each running ``queries`` queries back
to back; an *open* model starts sessions at ``arrival_rate`` per second for
``duration`` seconds regardless of how the earlier ones fare, and times each
session's first query from the session's **intended** start, so a stalled
server shows in the percentiles instead of slowing the generator down
(no coordinated omission).  Session *g* of the run is intended at
``t0 + g / rate``; process *i* of *P* runs sessions ``g = i, i+P, ...``.

With ``--stages`` or ``--arrivals poisson`` the schedules are kit.client._stages': the open model's
arrivals follow the stages' rate curve (:func:`~kit.client._stages.open_arrivals`); the closed model
runs one task per stage slot (:func:`run_slot`), active while the target is above the slot's number,
running sessions back to back like a k6 VU's iterations and retiring them cleanly when the target falls
(the run ends with the last stage, plus the queries in flight).  Both are drawn from the run's seed
(``--seed``, else a random one, recorded in the run's entry with ``arrivals`` and ``stages``), and
process *i* takes the arrivals and slots ``g % P == i`` of the one global schedule.  Each session's
jitter generator comes from the seed and its global index (:func:`session_rng`).

:func:`run_process` runs one trio process: the sessions (sharing one
:class:`~kit.client._limiter.TokenBucket` that bounds their reconnect attempts to
``reconnect_rate`` a second; the rate and what it held back go into the process's
``runs`` entry as ``reconnect_limit``), a watcher of its own
CPU and event-loop lag (:func:`overload_verdict` marks the run when the
generator fell behind), a per-second timeline sampler, the live progress line
and ``status.json``.  ``--max-duration`` cancels whatever still runs; those
sessions are counted as cancelled.

:func:`run_parent` starts P child processes (``python -m kit.client`` with
the same options, one ``proc-<i>`` folder each, one agreed ``--start-at``),
aggregates their ``status.json`` files while they run and merges their
output into the top-level folder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import trio

from kit.metrics import Histogram
from kit.options import default as option_default

from . import _console
from ._accounting import Recorder
from ._http import DEFAULT_MAX_CONNECTIONS, HttpPool
from ._hub import Hub
from ._limiter import RECONNECT_BURST, RECONNECT_RATE, TokenBucket
from ._output import merge_outputs, write_json_atomic, write_outputs
from ._session import Session, SessionConfig
from ._stages import Stage, closed_slots, open_arrivals, rate_integral, slot_count, stage_records
from ._workload import Workload, WorkloadRecord
from ._ws import SOURCES, client_ssl_context

__all__ = [
    "LoadConfig",
    "schedule",
    "overload_verdict",
    "run_process",
    "run_parent",
    "CPU_OVERLOAD_PERCENT",
    "LAG_OVERLOAD_MIN_PROBES",
    "LAG_P99_OVERLOAD_MS",
    "START_LAG_P99_OVERLOAD_MS",
]

log = logging.getLogger(__name__)

#: mean CPU of the process over the run at or above which it was the bottleneck
CPU_OVERLOAD_PERCENT = 90.0
#: event-loop lag p99 at or above which timings include the generator's own queueing
LAG_P99_OVERLOAD_MS = 50.0
#: ... in at least this many probes: in a short run p99 is the second-worst probe, and one or two
#: scheduler hiccups of a shared host are not a generator that fell behind
LAG_OVERLOAD_MIN_PROBES = 3
#: sessions starting this late (p99) means the generator could not keep the schedule
START_LAG_P99_OVERLOAD_MS = 100.0
#: how often the loop-lag probe wakes up
LAG_PROBE_INTERVAL = 0.05
#: the signals that stop a run (its sessions end, what was measured is written)
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
#: seconds children get to write their results after SIGINT/SIGTERM before the parent gives up
CHILD_STOP_TIMEOUT = 20.0


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoadConfig:
    """One process's share of a run (the parent builds one per child; defaults: kit.options)."""

    session: SessionConfig
    clients: int = option_default("clients")
    ramp: float = option_default("ramp")
    arrival_rate: float | None = None
    duration: float | None = None
    #: the stages (kit.client._stages; empty: none): closed, concurrent sessions; open, the arrival rate
    stages: tuple[Stage, ...] = ()
    #: even | poisson (kit.client._stages); a stage's own overrides it
    arrivals: str = option_default("arrivals")
    processes: int = 1
    process_index: int = 0
    output_dir: Path = Path(option_default("output_dir"))
    start_at: float | None = None
    run_id: str = ""
    quiet: bool = False
    status_interval: float | None = None
    max_duration: float | None = None
    http_timeout: float = option_default("http_timeout")
    #: keep-alive HTTP connections of this process (create/run/close of all its sessions)
    http_connections: int = DEFAULT_MAX_CONNECTIONS
    seed: int | None = None
    #: the workload's classes (one, the options, by default); each session's class is drawn with
    #: workload_seed and its index (kit.client._workload.draw)
    workload: Workload = Workload()
    workload_seed: int = 0
    #: PEM file of the CA that signs the servers' certificates (https://, wss://); None: the system store
    ca_file: str | None = None
    #: reconnect attempts a second this process lets through, over all its sessions (0 = unlimited;
    #: kit.client._limiter says why the default)
    reconnect_rate: float = RECONNECT_RATE
    #: local addresses this process's connections leave from, in turn (empty: the kernel's choice)
    source_addresses: tuple[str, ...] = ()

    @property
    def model(self) -> str:
        return "open" if self.arrival_rate is not None and (self.arrival_rate or self.stages) else "closed"

    @property
    def open_stages(self) -> tuple[Stage, ...]:
        """The open model's rate curve as stages: --stages, or --duration at --arrival-rate."""
        return self.stages or (Stage(self.duration or 0.0, self.arrival_rate or 0.0),)

    @property
    def total_sessions(self) -> int:
        """The sessions the run is sized for (HTTP pool, processes): closed, --clients or the stages' slots
        (each runs sessions back to back, one at a time); open, the arrivals due (Poisson: their mean)."""
        if self.model == "open":
            if self.stages:
                return max(1, round(rate_integral(self.stages, self.arrival_rate or 0.0)))
            return max(1, round((self.arrival_rate or 0.0) * (self.duration or 0)))
        return slot_count(self.stages) if self.stages else self.clients


def schedule(total: int, rate: float, process_index: int = 0, processes: int = 1) -> Iterator[tuple[int, float]]:
    """(global session index, seconds after t0) of this process's sessions; rate 0 = all at t0.

    Lazy: one pair at a time as the sessions start, so the size of a run costs nothing before it
    starts (the CLI bounds it too: ``kit.client.__main__.max_sessions``)."""
    for g in range(process_index, total, processes):
        yield g, (g / rate if rate > 0 else 0.0)


def scheduled_sessions(total: int, process_index: int = 0, processes: int = 1) -> int:
    """How many sessions :func:`schedule` gives this process, without walking it."""
    return max(0, -(-(total - process_index) // processes))


def _p_ms(h: Histogram, p: float) -> float | None:
    """*h*'s (microseconds) *p*-th percentile in milliseconds; None when it is empty."""
    v = h.percentile(p)
    return None if v is None else v / 1000


def overload_verdict(cpu_samples: list[float], loop_lag: Histogram, start_lag: Histogram) -> tuple[bool, str]:
    """Did this generator fall behind?  Returns (overloaded, reason)."""
    reasons = []
    if cpu_samples:
        mean = sum(cpu_samples) / len(cpu_samples)
        if mean >= CPU_OVERLOAD_PERCENT:
            reasons.append(f"cpu mean {mean:.0f}% >= {CPU_OVERLOAD_PERCENT:.0f}%")
    p99 = loop_lag.percentile(99)
    late = sum(n for v, n in loop_lag.buckets() if v >= LAG_P99_OVERLOAD_MS * 1000)
    if p99 is not None and p99 / 1000 >= LAG_P99_OVERLOAD_MS and late >= LAG_OVERLOAD_MIN_PROBES:
        reasons.append(
            f"event-loop lag p99 {p99 / 1000:.1f} ms >= {LAG_P99_OVERLOAD_MS:.0f} ms ({late} probes at or above it)"
        )
    sp99 = start_lag.percentile(99)
    if sp99 is not None and sp99 / 1000 >= START_LAG_P99_OVERLOAD_MS:
        reasons.append(f"sessions started late: p99 {sp99 / 1000:.1f} ms >= {START_LAG_P99_OVERLOAD_MS:.0f} ms")
    return bool(reasons), "; ".join(reasons)


def status_snapshot(rec: Recorder, *, run_id: str, started: float, done: bool, cpu: float) -> dict[str, Any]:
    c = rec.counters
    lat = rec.hists["latency"]
    lag = rec.hists["loop_lag"]
    return {
        "run_id": run_id,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "time": time.time(),
        "elapsed_s": round(time.time() - started, 3),
        "done": done,
        "active_sessions": rec.active_sessions,
        "sessions_started": c["sessions_started"],
        "sessions_finished": c["sessions_finished"],
        "sessions_failed": c["sessions_failed"],
        "queries_started": c["queries_started"],
        "queries_ok": c["queries_ok"],
        "queries_failed": c["queries_failed"],
        "tokens": c["tokens"],
        "lost_tokens": c["lost_tokens"],
        "errors": c["errors"],
        "reconnect_attempts": c["reconnect_attempts_live"],
        "reconnects_ok": c["reconnects_ok_live"],
        "reconnect_bucket_waits": c["reconnect_bucket_waits"],
        "latency_p50_ms": _p_ms(lat, 50),
        "latency_p99_ms": _p_ms(lat, 99),
        "cpu_percent": cpu,
        "loop_lag_p99_ms": _p_ms(lag, 99),
        "loop_lag_max_ms": None if lag.max is None else lag.max / 1000,
        # coarse (1.6 %): written every second on the event loop, 16 times fewer buckets than the whole-run ones
        **{f"{name}_histogram": rec.coarse_dict(name) for name in STATUS_HISTOGRAMS},
    }


async def _watch(rec: Recorder, proc: psutil.Process, state: dict) -> None:
    """Loop-lag probe (every LAG_PROBE_INTERVAL) and CPU sample (every second)."""
    proc.cpu_percent(None)
    next_cpu = trio.current_time() + 1.0
    lag = rec.hists["loop_lag"]
    while True:
        t = trio.current_time()
        await trio.sleep(LAG_PROBE_INTERVAL)
        now = trio.current_time()
        lag.record(max(0, int((now - t - LAG_PROBE_INTERVAL) * 1e6)))
        if now >= next_cpu:
            state["cpu"] = proc.cpu_percent(None)
            rec.cpu_samples.append(state["cpu"])
            next_cpu = now + 1.0


async def _timeline(rec: Recorder) -> None:
    while True:
        now = time.time()
        await trio.sleep(math.floor(now) + 1.0 - now)
        rec.sample_timeline(int(time.time()) - 1)


async def _reporter(cfg: LoadConfig, rec: Recorder, state: dict, started: float) -> None:
    interval = cfg.status_interval
    last_line = 0.0
    tty = sys.stderr.isatty()
    while True:
        await trio.sleep(min(interval or 1.0, 1.0))
        now = time.time()
        snap = None
        if interval and now - state.get("last_status", 0.0) >= interval - 1e-3:
            snap = status_snapshot(rec, run_id=cfg.run_id, started=started, done=False, cpu=state.get("cpu", 0.0))
            write_json_atomic(cfg.output_dir / "status.json", snap, compact=True)  # every second: machine-read
            state["last_status"] = now
        if not cfg.quiet and (tty or now - last_line >= 10.0):
            snap = snap or status_snapshot(
                rec, run_id=cfg.run_id, started=started, done=False, cpu=state.get("cpu", 0.0)
            )
            _console.progress(snap, tty=tty)
            last_line = now


def _plan(cfg: LoadConfig, seed: int) -> Iterator[tuple[int, float]]:
    """(global session index, seconds after t0) of this process's open-model arrivals or closed-model
    ramp: today's even schedule, or the stages' / Poisson arrivals (kit.client._stages)."""
    if cfg.model == "open" and (cfg.stages or cfg.arrivals == "poisson"):
        return open_arrivals(
            cfg.open_stages,
            cfg.arrival_rate or 0.0,
            arrivals=cfg.arrivals,
            seed=seed,
            process_index=cfg.process_index,
            processes=cfg.processes,
        )
    rate = cfg.arrival_rate or cfg.ramp
    return schedule(cfg.total_sessions, rate, cfg.process_index, cfg.processes)


def _my_sessions(cfg: LoadConfig) -> int:
    """About how many sessions this process holds at most, to size its HTTP pool."""
    if cfg.stages and cfg.model == "closed":
        return scheduled_sessions(slot_count(cfg.stages), cfg.process_index, cfg.processes)
    return scheduled_sessions(cfg.total_sessions, cfg.process_index, cfg.processes)


def _record_shape(cfg: LoadConfig, run: dict, seed: int) -> None:
    """The run record's load shape: the seed its schedule and jitter were drawn from, ``arrivals`` and each
    stage (kit.client._stages.stage_records: times in seconds from ``run["start"]``; none without stages)."""
    run["seed"] = seed
    run["arrivals"] = cfg.arrivals
    start = (cfg.arrival_rate or 0.0) if cfg.model == "open" else 0.0
    run["stages"] = stage_records(cfg.stages, start, cfg.arrivals) if cfg.stages else []


def session_rng(seed: int, index: int) -> random.Random:
    """Session *index*'s own generator (its reconnect jitter): from the run's seed and the session's global
    index, so sessions differ from each other and a seed gives the same draws whichever process runs them."""
    return random.Random(f"{seed}:session:{index}")


async def run_slot(
    intervals: tuple[tuple[float, float], ...],
    t0: float,
    run_one: Callable[[int, float | None, trio.Event], Awaitable[float]],
) -> None:
    """One closed-model stage slot: in each of its active *intervals* (seconds after trio time *t0*) run
    sessions back to back like a k6 VU's iterations: ``await run_one(n, intended, retire)`` runs the slot's
    *n*-th session (*intended*: the interval's start for its first session, else None: now) and returns the
    think time before the next.  At the interval's end *retire* is set: the session in progress leaves
    cleanly (kit.client._session) and the slot starts no other until its next interval."""
    n = 0
    for start, end in intervals:
        if t0 + start > trio.current_time():
            await trio.sleep_until(t0 + start)
        retire = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_set_at, retire, t0 + end)
            intended: float | None = start
            while not retire.is_set() and trio.current_time() < t0 + end:
                think = await run_one(n, intended, retire)
                n, intended = n + 1, None
                if think and not retire.is_set():
                    with trio.move_on_after(think):
                        await retire.wait()
            nursery.cancel_scope.cancel()


async def _set_at(event: trio.Event, deadline: float) -> None:
    await trio.sleep_until(deadline)
    event.set()


async def _load(cfg: LoadConfig, rec: Recorder, run: dict, workload: WorkloadRecord, noted: list[int]) -> None:
    seed = cfg.seed if cfg.seed is not None else random.SystemRandom().randrange(2**32)
    _record_shape(cfg, run, seed)
    state: dict = {}
    proc = psutil.Process()
    tls = client_ssl_context(cfg.ca_file)  # one per process, shared by HTTP and WebSocket
    http = HttpPool(
        cfg.session.api_url,
        max_connections=min(cfg.http_connections, max(1, _my_sessions(cfg))),
        timeout=cfg.http_timeout,
        ssl_context=tls,
    )
    reconnects = TokenBucket(cfg.reconnect_rate, RECONNECT_BURST)  # one per process, shared by its sessions
    hub = Hub() if Hub.available() else None
    try:
        async with trio.open_nursery() as bg:
            if hub is not None:
                await bg.start(hub.run)
            # everything is set up: now wait for the agreed instant and take the time base
            if cfg.start_at is not None:
                wait = cfg.start_at - time.time()
                if wait > 0:
                    await trio.sleep(wait)
                run["start_skew_s"] = round(time.time() - cfg.start_at, 6)
            run["start"] = time.time()
            t0_ns = time.monotonic_ns()
            t0_trio = trio.current_time()
            bg.start_soon(_watch, rec, proc, state)
            bg.start_soon(_timeline, rec)
            bg.start_soon(_reporter, cfg, rec, state, run["start"])
            stop = trio.CancelScope()
            bg.start_soon(_stop_on_signal, stop, run, noted)
            with stop, trio.move_on_after(cfg.max_duration if cfg.max_duration else math.inf) as scope:
                async with trio.open_nursery() as sessions:

                    def session(g: int, intended_ns: int, retire: trio.Event | None = None) -> Session:
                        return Session(
                            workload.config_for(g),
                            http,
                            rec,
                            g,
                            intended_ns,
                            session_rng(seed, g),
                            hub,
                            workload,
                            ssl_context=tls,
                            limiter=reconnects,
                            retire=retire,
                        )

                    if cfg.stages and cfg.model == "closed":
                        await _start_slots(cfg, seed, t0_trio, t0_ns, sessions, session)
                    else:
                        await start_on_schedule(
                            _plan(cfg, seed),
                            t0_trio,
                            lambda g, offset: sessions.start_soon(session(g, t0_ns + int(offset * 1e9)).run),
                        )
            if scope.cancelled_caught:
                run["max_duration_hit"] = True
                log.warning("--max-duration %ss reached: running sessions were cancelled", cfg.max_duration)
            bg.cancel_scope.cancel()
    finally:
        st = http.statistics()
        for k in ("requests", "connections_opened", "connections_reused", "stale_discarded", "retries"):
            rec.counters[f"http_{k}"] += st[k]
        rec.counters["http_requests_waited"] += st["requests_waited"]
        run["reconnect_limit"] = {k: v for k, v in reconnects.statistics().items() if k != "waiting"}
        if hub is not None:  # how the reads were batched (kit.client._hub)
            run["reader"] = {**hub.statistics(), "kernel_stamps": hub.stamped}
        with trio.CancelScope(shield=True):
            await http.aclose()
    run["end"] = time.time()
    rec.sample_timeline(int(time.time()))
    if not rec.cpu_samples:  # a run shorter than a second: one sample of the whole run
        rec.cpu_samples.append(proc.cpu_percent(None))


async def _start_slots(
    cfg: LoadConfig,
    seed: int,
    t0: float,
    t0_ns: int,
    nursery: trio.Nursery,
    session: Callable[[int, int, trio.Event], Session],
) -> None:
    """Start this process's stage slots (kit.client._stages.closed_slots), each at its first start; slot k's
    n-th session is session ``n * slots + k`` of the run (an index no other slot or process uses)."""
    slots = slot_count(cfg.stages)
    mine = closed_slots(
        cfg.stages, arrivals=cfg.arrivals, seed=seed, process_index=cfg.process_index, processes=cfg.processes
    )
    mine.sort(key=lambda slot: slot[1][0][0])
    intervals = dict(mine)

    def start(k: int, offset: float) -> None:
        async def one(n: int, intended: float | None, retire: trio.Event) -> float:
            ns = t0_ns + int(intended * 1e9) if intended is not None else time.monotonic_ns()
            sess = session(n * slots + k, ns, retire)
            await sess.run()
            return sess.cfg.think_time

        nursery.start_soon(run_slot, intervals[k], t0, one)

    await start_on_schedule(((k, iv[0][0]) for k, iv in mine), t0, start)


async def _stop_on_signal(stop: trio.CancelScope, run: dict, noted: list[int]) -> None:
    """SIGINT / SIGTERM (Ctrl-C, ``fab run`` stopping its generators) cancel the sessions like
    ``--max-duration`` does: what was measured is still written, and the run says it was interrupted.
    *noted*: the signals that came before this receiver opened (:func:`_signals_noted`)."""
    if threading.current_thread() is not threading.main_thread():  # signals only reach the main thread
        return

    def _stop(signum: int) -> None:
        if "interrupted" not in run:
            run["interrupted"] = signal.Signals(signum).name
            log.warning("%s: stopping the sessions and writing what was measured", run["interrupted"])
        stop.cancel()

    with trio.open_signal_receiver(*_STOP_SIGNALS) as signals:
        if noted:
            _stop(noted[0])
        async for signum in signals:  # kept open to the end: a second signal (Ctrl-C twice) is absorbed
            _stop(signum)


@contextlib.contextmanager
def _signals_noted(noted: list[int]) -> Iterator[None]:
    """Inside, SIGINT and SIGTERM only append their number to *noted*; trio's receiver (_stop_on_signal)
    takes them over while the sessions run and reads *noted* for one that came before it opened.

    ``fab run``'s stop signals the generator's whole process group, and the parent forwards the signal to
    its children a moment later: with the defaults back once trio's receiver closed, that second SIGTERM
    killed a child between two of its files (queries.csv and timeline.csv written, histograms.json not),
    and the stopped run lost that process (a CI run, 2026-12-05).  So the results are written whatever
    comes; writing is bounded, and the parent's CHILD_STOP_TIMEOUT and fab's SIGKILL still end a process
    that hangs.  Outside the main thread (where signals cannot be set) nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, lambda signum, frame: noted.append(signum)) for sig in _STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


async def start_on_schedule(plan, t0: float, start) -> None:
    """Call ``start(g, offset)`` for each planned session at trio time ``t0 + offset``.

    Sleeps only while ahead of the schedule.  A checkpoint per session while behind would start
    one session per scheduler pass, and a busy loop passes only every few hundred ms: the ramp
    would stretch far past what was asked and the load would be lighter than reported.
    """
    for g, offset in plan:
        if t0 + offset > trio.current_time():
            await trio.sleep_until(t0 + offset)
        start(g, offset)


def run_process(cfg: LoadConfig, meta: dict[str, Any]) -> dict[str, Any]:
    """Run this process's share of the load to the end; write its outputs; return its summary."""
    rec = Recorder()
    run: dict[str, Any] = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "start_skew_s": None,
        "process_index": cfg.process_index,
        "start": time.time(),
        "end": time.time(),
    }
    workload = WorkloadRecord(cfg.workload, cfg.session, cfg.workload_seed)
    SOURCES.set(cfg.source_addresses)
    noted: list[int] = []
    with _signals_noted(noted):  # from here to the last file, a stop signal cannot kill the process
        trio.run(_load, cfg, rec, run, workload, noted)
        over, reason = overload_verdict(rec.cpu_samples, rec.hists["loop_lag"], rec.hists["start_lag"])
        lag = rec.hists["loop_lag"]
        run.update(
            {
                "cpu_percent_peak": max(rec.cpu_samples, default=0.0),
                "cpu_percent_mean": round(sum(rec.cpu_samples) / len(rec.cpu_samples), 1) if rec.cpu_samples else 0.0,
                "loop_lag_p99_ms": _p_ms(lag, 99),
                "loop_lag_max_ms": None if lag.max is None else lag.max / 1000,
                "generator_overloaded": over,
                "overload_reason": reason,
                "cpu_s": round(sum(os.times()[:2]), 3),  # user+system of this process (getrusage RUSAGE_SELF)
            }
        )
        summary = write_outputs(
            cfg.output_dir, rec, run, meta, run_id=cfg.run_id, model=cfg.model, workload=workload.state()
        )
        if cfg.status_interval:
            snap = status_snapshot(rec, run_id=cfg.run_id, started=run["start"], done=True, cpu=run["cpu_percent_mean"])
            write_json_atomic(cfg.output_dir / "status.json", snap, compact=True)
    return summary


# ---------------------------------------------------------------- parent of P processes


#: the counters of a status snapshot (status.json): totals since the start, added up across processes
#: (merge_status) and across generators (kit.run's live view)
#: the cumulative histograms a status snapshot carries (fab run's live view and --abort-on-fail read their
#: last interval and their whole; a host's processes are merged exactly)
STATUS_HISTOGRAMS = ("latency", "delivery", "ttft")
STATUS_COUNTERS = (
    "active_sessions",
    "sessions_started",
    "sessions_finished",
    "sessions_failed",
    "queries_started",
    "queries_ok",
    "queries_failed",
    "tokens",
    "lost_tokens",
    "errors",
    "reconnect_attempts",
    "reconnects_ok",
    "reconnect_bucket_waits",
)


def merge_status(snaps: list[dict[str, Any]], *, run_id: str, expected: int) -> dict[str, Any]:
    """One host's status snapshot from its processes' (same schema: counters added, the histograms of
    :data:`STATUS_HISTOGRAMS` merged, so the percentiles are exact)."""
    out: dict[str, Any] = {k: sum(int(s.get(k) or 0) for s in snaps) for k in STATUS_COUNTERS}
    hists = {name: Histogram("us") for name in STATUS_HISTOGRAMS}
    for s in snaps:
        for name, h in hists.items():
            if s.get(f"{name}_histogram"):
                h.merge(Histogram.from_dict(s[f"{name}_histogram"]))
    lat = hists["latency"]
    lags = [s["loop_lag_max_ms"] for s in snaps if s.get("loop_lag_max_ms") is not None]
    lag99 = [s["loop_lag_p99_ms"] for s in snaps if s.get("loop_lag_p99_ms") is not None]
    out.update(
        {
            "run_id": run_id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "time": time.time(),
            "elapsed_s": max((s.get("elapsed_s", 0.0) for s in snaps), default=0.0),
            "processes": [
                {
                    "pid": s.get("pid"),
                    "cpu_percent": s.get("cpu_percent"),
                    "loop_lag_p99_ms": s.get("loop_lag_p99_ms"),
                    "done": s.get("done"),
                }
                for s in snaps
            ],
            "done": len(snaps) == expected and all(s.get("done") for s in snaps),
            "latency_p50_ms": _p_ms(lat, 50),
            "latency_p99_ms": _p_ms(lat, 99),
            "cpu_percent": max((s.get("cpu_percent") or 0.0 for s in snaps), default=0.0),
            "loop_lag_p99_ms": max(lag99, default=None),  # worst process (a live hint, not a merged percentile)
            "loop_lag_max_ms": max(lags, default=None),
            **{f"{name}_histogram": h.to_dict() for name, h in hists.items()},
        }
    )
    return out


def _read_status(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def run_parent(cfg: LoadConfig, child_argv: list[str], meta: dict[str, Any]) -> dict[str, Any]:
    """Start cfg.processes children running *child_argv* (+ per-child options), wait, merge."""
    out = cfg.output_dir
    out.mkdir(parents=True, exist_ok=True)
    start_at = cfg.start_at if cfg.start_at is not None else time.time() + 1.0 + 0.2 * cfg.processes
    interval = cfg.status_interval or 1.0
    children: list[subprocess.Popen] = []
    dirs = [out / f"proc-{i}" for i in range(cfg.processes)]
    got: list[int] = []  # SIGINT/SIGTERM received: children stop and write, then we merge what they wrote
    previous = {
        sig: signal.signal(sig, lambda signum, frame: got.append(signum)) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        for i, d in enumerate(dirs):
            argv = [
                sys.executable,
                "-m",
                "kit.client",
                *child_argv,
                "--output-dir",
                str(d),
                "--start-at",
                repr(start_at),
                "--quiet",
                "--status-interval",
                str(interval),
                "--processes",
                "1",
                "--_process-index",
                str(i),
                "--_process-count",
                str(cfg.processes),
                "--run-id",
                cfg.run_id,
            ]
            children.append(subprocess.Popen(argv, stdin=subprocess.DEVNULL))
        tty = sys.stderr.isatty()
        last_line = 0.0
        forwarded = False
        stop_deadline = math.inf
        while any(p.poll() is None for p in children):
            if got and not forwarded:  # a terminal's Ctrl-C reached them too; fab's stop may not have
                for p in children:
                    if p.poll() is None:
                        p.send_signal(got[0])
                forwarded, stop_deadline = True, time.monotonic() + CHILD_STOP_TIMEOUT
            if time.monotonic() > stop_deadline:
                raise TimeoutError(f"generator processes did not stop within {CHILD_STOP_TIMEOUT:g} s")
            time.sleep(min(interval, 0.5))  # the parent only polls its children's status files
            snaps = [s for s in (_read_status(d / "status.json") for d in dirs) if s]
            if not snaps:
                continue
            agg = merge_status(snaps, run_id=cfg.run_id, expected=len(dirs))
            if cfg.status_interval:
                write_json_atomic(out / "status.json", agg, compact=True)
            if not cfg.quiet and (tty or time.time() - last_line >= 10.0):
                _console.progress(agg, tty=tty)
                last_line = time.time()
    except BaseException:
        for p in children:
            if p.poll() is None:
                p.terminate()
        for p in children:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if not cfg.quiet and sys.stderr.isatty():
        sys.stderr.write("\n")
    failed = [(i, p.returncode) for i, p in enumerate(children) if p.returncode != 0]
    if got:  # interrupted: merge whatever the children wrote
        dirs = [d for d in dirs if (d / "histograms.json").exists()]
        if not dirs:
            raise KeyboardInterrupt
    elif failed:
        raise RuntimeError("generator process(es) failed: " + ", ".join(f"proc-{i} exit {rc}" for i, rc in failed))
    summary = merge_outputs(dirs, out)
    meta = dict(meta)
    meta["processes"] = cfg.processes
    meta["children"] = [str(d) for d in dirs]
    meta["workload"] = summary.get("workload")
    write_json_atomic(out / "meta.json", meta)
    if cfg.status_interval:
        snaps = [s for s in (_read_status(d / "status.json") for d in dirs) if s]
        write_json_atomic(out / "status.json", merge_status(snaps, run_id=cfg.run_id, expected=len(dirs)), compact=True)
    return summary


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("wsproxy-loadkit", "trio", "httpx", "orjson", "psutil"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "unknown"
    return out
