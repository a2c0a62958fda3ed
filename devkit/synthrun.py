"""Synthetic generator outputs and run folders at scale, with no load and no services.

The controller's merge, ``report.html`` and ``fab compare`` must hold up at 100,000 sessions (issue 18).
This module writes what ``python -m kit.client`` would have written for such a run without running
one: each generator's folder is produced by the client's own accounting and output code
(:class:`kit.client.Recorder`, :class:`~kit.client.QueryRecord`, :class:`~kit.client.SessionRecord`,
``write_outputs``, ``status_snapshot``) driven by synthetic events replayed in time order: sessions
started on a ramp, a create and a connect, ``queries`` queries each streaming ``tokens`` tokens
``token_delay_ms`` apart after a TTFT, with realistic jittered latencies, and a think time between
queries.  The per-second timeline is cut once a simulated second, as the client's ``_timeline`` task
does, so ``timeline.csv`` and the per-second histograms in ``histograms.json`` have their real shape
and size.  A few queries (one in :data:`LOSS_EVERY`) lose a token, so the error paths are written too.

- :func:`write_generator_output`: one generator process's folder.
- :func:`write_generator_outputs`: *generators* of them (the folders ``fab run`` fetches per host).
- :func:`add_run_record`: what ``fab run`` adds to a merged folder before ``write_report`` (the run record,
  an empty cost table); no ``hosts/``: the report must render without host samples.

Everything is seeded: the same arguments write the same files (save the ``versions`` of ``meta.json``).
Used by ``tests/integration/test_merge_scale.py`` and ``bench/merge_scale.py``.
"""

from __future__ import annotations

import concurrent.futures
import heapq
import itertools
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kit.client import QueryRecord, Recorder, SessionRecord
from kit.client._load import status_snapshot, versions
from kit.client._output import write_json_atomic, write_outputs

__all__ = ["LOSS_EVERY", "T0", "write_generator_output", "write_generator_outputs", "add_run_record"]

#: the wall-clock start of every synthetic run (2026-01-01T00:00:00Z): fixed, so the files are reproducible
T0 = 1_767_225_600.0
#: one query in this many loses one token (status ``lost_tokens``, its session ``failed``)
LOSS_EVERY = 2000
#: loop-lag samples recorded per simulated second (the client probes every 10 ms; the histogram's size, not its
#: count, is what the merge pays for)
LAG_SAMPLES_PER_S = 20
_NS = 1_000_000_000
#: the Recorder's monotonic clock at T0 (any positive value: rows convert back to wall time)
_MONO0 = 5_000 * _NS


def _hex(rng: random.Random, bits: int = 128) -> str:
    return f"{rng.getrandbits(bits):0{bits // 4}x}"


def _ms_us(rng: random.Random, median_ms: float, sigma: float = 0.5) -> int:
    """A lognormal latency (microseconds) around *median_ms*."""
    return max(1, int(rng.lognormvariate(0.0, sigma) * median_ms * 1000))


def _session_events(
    rng: random.Random,
    g: int,
    start_ns: int,
    *,
    queries: int,
    tokens: int,
    token_delay_ms: float,
    ttft_ms: float,
    think_s: float,
    loss: Iterator[bool],
) -> Iterator[tuple[int, int, str, Any]]:
    """The events of session *g*, in time order: ``(wall_ns, g, kind, payload)``."""
    lag_us = _ms_us(rng, 0.3, 1.0)
    t = start_ns + lag_us * 1000
    yield t, g, "start", (start_ns, lag_us)
    create_us = _ms_us(rng, 3.0)
    t += create_us * 1000
    yield t, g, "created", (create_us, _hex(rng))
    tcp, upgrade = _ms_us(rng, 0.4), _ms_us(rng, 1.2)
    t += (tcp + upgrade) * 1000
    yield t, g, "connected", (tcp, upgrade)
    for k in range(queries):
        intended = t + (int(think_s * _NS) if k else 0)
        submit = intended + _ms_us(rng, 0.2, 1.0) * 1000
        yield submit, g, "submit", (k, intended, _hex(rng, 64))
        ts = submit + int(ttft_ms * 1e6) + _ms_us(rng, 2.0) * 1000
        drop = next(loss)
        recv = submit
        for seq in range(tokens):
            # one WebSocket: frames arrive in order, so a receive time is never before the previous one's
            recv = max(recv + 1000, ts + _ms_us(rng, 2.0, 0.7) * 1000)
            if not (drop and seq == tokens // 2):
                yield recv, g, "token", (seq, ts)
            ts += int(token_delay_ms * 1e6) + rng.randint(-2_000_000, 2_000_000)
        t = max(recv, ts - int(token_delay_ms * 1e6)) + _ms_us(rng, 2.0) * 1000
        yield t, g, "done", tokens
    yield t + _ms_us(rng, 1.0) * 1000, g, "end", None


def write_generator_output(
    out_dir: Path,
    *,
    index: int = 0,
    generators: int = 1,
    sessions: int = 10_000,
    queries: int = 3,
    tokens: int = 20,
    token_delay_ms: float = 50.0,
    ttft_ms: float = 200.0,
    think_s: float = 40.0,
    ramp: float = 400.0,
    run_id: str = "synthetic-run",
    seed: int = 18,
) -> dict[str, Any]:
    """Write generator *index*'s (of *generators*) folder of *sessions* sessions; return its summary.

    Sessions ``index, index + generators, ...`` of the run start on a ramp of *ramp* sessions a second over
    the whole run (as ``kit.client.schedule`` spreads them), so the generators' timelines overlap second by
    second.  Every value goes through the client's :class:`~kit.client.Recorder`; the files are those
    ``write_outputs`` writes, plus ``status.json`` (the last live snapshot) and ``meta.json``.
    """
    out_dir = Path(out_dir)
    rng = random.Random(seed * 1_000_003 + index)
    rec = Recorder()
    t0_ns = int(T0 * _NS)
    rec.mono_to_wall_ns = t0_ns - _MONO0
    off = rec.mono_to_wall_ns
    loss = itertools.cycle([False] * (LOSS_EVERY // 2) + [True] + [False] * (LOSS_EVERY - LOSS_EVERY // 2 - 1))
    streams = (
        _session_events(
            random.Random(rng.random()),
            g,
            t0_ns + int(g / ramp * _NS),
            queries=queries,
            tokens=tokens,
            token_delay_ms=token_delay_ms,
            ttft_ms=ttft_ms,
            think_s=think_s,
            loss=loss,
        )
        for g in range(index, sessions * generators, generators)
    )
    # sessions start in order, so merging their event streams lazily keeps the working set to the live ones
    events = _merge_started(streams)
    live: dict[int, tuple[SessionRecord, QueryRecord | None]] = {}
    second = int(T0)
    lag = rec.hists["loop_lag"]
    cpu_rng = random.Random(seed + index)
    last_ns = t0_ns
    for wall, g, kind, payload in events:
        while wall >= (second + 1) * _NS:
            for _ in range(LAG_SAMPLES_PER_S):
                lag.record(_ms_us(cpu_rng, 0.5, 1.0))
            rec.cpu_samples.append(round(cpu_rng.uniform(20.0, 60.0), 1))
            rec.sample_timeline(second)
            second += 1
        mono = wall - off
        last_ns = wall
        if kind == "token":
            seq, ts = payload
            live[g][1].token(seq, ts, mono, wall)  # type: ignore[union-attr]
        elif kind == "start":
            intended, lag_us = payload
            s = SessionRecord(g, intended - off, mono)
            live[g] = (s, None)
            rec.active_sessions += 1
            rec.counters["sessions_started"] += 1
            rec.hists["start_lag"].record(lag_us)
        elif kind == "created":
            s = live[g][0]
            s.create_us, s.session_id = payload
            rec.hists["http_pool_wait"].record(0)
            rec.session_created(s)
        elif kind == "connected":
            s = live[g][0]
            s.tcp_us, s.upgrade_us = payload
            s.tls_us = 0
            s.connect_us = s.tcp_us + s.upgrade_us
            s.connect_attempts = 1
            rec.session_connected(s)
        elif kind == "submit":
            s = live[g][0]
            k, intended, qid = payload
            q = rec.new_query(s.session_id, k, intended - off, mono, None)
            q.query_id, q.expected = qid, tokens
            rec.hists["http_pool_wait"].record(0)
            rec.counters["queries_started"] += 1
            live[g] = (s, q)
        elif kind == "done":
            s, q = live[g]
            assert q is not None
            q.done(payload, mono)
            q.finish()
            if q.status == "ok":
                s.queries_ok += 1
            else:
                rec.error("lost_tokens")
                s.queries_failed += 1
                s.errors.append(f"query {q.index}: {q.error}")
            s.tokens += q.received
            rec.query_finished(q)
            live[g] = (s, None)
        elif kind == "end":
            s = live.pop(g)[0]
            s.status = "ok" if not s.errors else "failed"
            s.end_ns = mono
            rec.active_sessions -= 1
            rec.session_finished(s)
    rec.sample_timeline(second)
    n_http = sessions * (queries + 1)
    for k, v in (("http_requests", n_http), ("http_connections_opened", 64), ("http_connections_reused", n_http - 64)):
        rec.counters[k] += v
    run: dict[str, Any] = {
        "host": f"gen{index + 1}",
        "pid": 10_000 + index,
        "start_skew_s": round(cpu_rng.uniform(0, 0.004), 6),
        "process_index": 0,
        "start": T0,
        "end": last_ns / _NS,
        "reconnect_limit": {"rate": 200.0, "burst": 50, "admitted": 0, "waited": 0, "wait_s": 0.0},
        "cpu_percent_peak": max(rec.cpu_samples, default=0.0),
        "cpu_percent_mean": round(sum(rec.cpu_samples) / len(rec.cpu_samples), 1) if rec.cpu_samples else 0.0,
        "loop_lag_p99_ms": lag.percentile(99) / 1000,
        "loop_lag_max_ms": lag.max / 1000,
        "generator_overloaded": False,
        "overload_reason": "",
        "cpu_s": round(len(rec.cpu_samples) * 0.4, 3),
    }
    config = {
        "clients": sessions * generators,
        "queries": queries,
        "tokens": tokens,
        "token_delay_ms": token_delay_ms,
        "ttft_ms": ttft_ms,
        "think_time": think_s,
        "ramp": ramp,
        "run_id": run_id,
        "output_dir": str(out_dir),
    }
    meta = {
        "run_id": run_id,
        "argv": ["python -m kit.client", "(synthetic: devkit.synthrun)"],
        "versions": versions(),
        "host": run["host"],
        "pid": run["pid"],
        "model": "closed",
        "config": config,
        "total_sessions": sessions * generators,
        "processes": 1,
    }
    requested = {
        "tokens": tokens,
        "token_delay_ms": token_delay_ms,
        "ttft_ms": ttft_ms,
        "token_jitter_ms": None,
        "think_time_s": think_s,
        "query_timeout_s": 120.0,
        "queries": queries,
    }
    echo = {"tokens": tokens, "token_delay_ms": token_delay_ms, "ttft_ms": ttft_ms, "token_jitter_ms": 0.0}
    workload = {
        "source": None,
        "seed": seed,
        "classes": {
            "default": {"weight": 1.0, "overrides": {}, "requested": requested, "sessions": sessions, "echo": echo}
        },
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = write_outputs(out_dir, rec, run, meta, run_id=run_id, model="closed", workload=workload)
    snap = status_snapshot(rec, run_id=run_id, started=T0, done=True, cpu=run["cpu_percent_mean"])
    snap.update(host=run["host"], pid=run["pid"], time=run["end"], elapsed_s=round(run["end"] - T0, 3))
    write_json_atomic(out_dir / "status.json", snap)
    return summary


def _merge_started(streams: Iterator[Iterator[tuple[int, int, str, Any]]]) -> Iterator[tuple[int, int, str, Any]]:
    """The events of session streams in time order, where each stream's first event (its start) comes no
    earlier than the previous stream's: a stream joins the heap only when its start is the next event.
    A session's events have strictly increasing times and sessions differ in ``g``, so no two events tie."""
    heap: list[tuple[tuple[int, int, str, Any], Iterator[tuple[int, int, str, Any]]]] = []
    pending = next(streams, None)
    first = next(pending) if pending is not None else None
    while heap or first is not None:
        if first is not None and (not heap or first <= heap[0][0]):
            ev, it = first, pending
            pending = next(streams, None)
            first = next(pending) if pending is not None else None
        else:
            ev, it = heap[0]
            heapq.heappop(heap)
        yield ev
        nxt = next(it, None)  # type: ignore[arg-type]
        if nxt is not None:
            heapq.heappush(heap, (nxt, it))


def write_generator_outputs(
    root: Path, *, generators: int = 10, sessions: int = 10_000, jobs: int = 1, **kw: Any
) -> list[Path]:
    """*generators* folders ``root/gen<i>/out`` of *sessions* sessions each (keywords: :func:`write_generator_output`),
    written by *jobs* processes at once (each folder is independent: the files do not depend on *jobs*)."""
    dirs = [Path(root) / f"gen{i + 1}" / "out" for i in range(generators)]
    if jobs <= 1:
        for i, d in enumerate(dirs):
            write_generator_output(d, index=i, generators=generators, sessions=sessions, **kw)
        return dirs
    with concurrent.futures.ProcessPoolExecutor(jobs) as pool:
        for f in [
            pool.submit(write_generator_output, d, index=i, generators=generators, sessions=sessions, **kw)
            for i, d in enumerate(dirs)
        ]:
            f.result()
    return dirs


def add_run_record(run_dir: Path, *, run_id: str = "synthetic-run") -> dict[str, Any]:
    """Add to a merged folder's ``summary.json`` what ``fab run`` adds before its report: the run record (run
    id, agreed start, config), an empty cost table and no bottleneck (no ``hosts/``: no host samples).
    Returns the summary written."""
    path = Path(run_dir) / "summary.json"
    summary = json.loads(path.read_text())
    summary["run"] = {
        "run_id": run_id,
        "start_at": T0,
        "config": {"clients": summary.get("total_sessions")},
        "thresholds": [],
        "partial_reasons": [],
    }
    summary.setdefault("components", [])
    summary.setdefault("bottleneck", None)
    write_json_atomic(path, summary)
    return summary


# -- the controller's steps, as functions of JSON arguments (for measure) -----------------------------------


def merge_step(in_dirs: list[str], out_dir: str) -> dict[str, Any]:
    """``fab run``'s merge of the generators' folders, then what it adds for the report (:func:`add_run_record`)."""
    from kit.client import merge_outputs

    merge_outputs([Path(d) for d in in_dirs], Path(out_dir))
    add_run_record(Path(out_dir))
    return {}


def report_step(run_dir: str) -> dict[str, Any]:
    """``write_report`` of a merged run folder; the sizes of the pages it wrote."""
    from kit.report import write_report

    write_report(Path(run_dir))
    return {
        f"{name}_mb": round((Path(run_dir) / name).stat().st_size / 2**20, 2) for name in ("report.html", "report.txt")
    }


def compare_step(run_a: str, run_b: str, html_out: str) -> dict[str, Any]:
    """``fab compare run_a run_b``: load both runs, the table with its bootstrap, compare.html.  ``bootstrap_s``:
    the time of :func:`kit.compare.compare_runs` alone (the bootstrap over every query latency and TTFT)."""
    import time

    from kit import compare

    t = time.perf_counter()
    runs = compare.load_runs([run_a, run_b])
    loaded = time.perf_counter()
    result = compare.compare_runs(runs)
    done = time.perf_counter()
    compare.write_compare_html(Path(html_out), result, runs)
    return {
        "load_s": round(loaded - t, 3),
        "bootstrap_s": round(done - loaded, 3),
        "html_s": round(time.perf_counter() - done, 3),
        "latency_values_per_run": runs[0].summary.get("successful_queries"),  # the ok queries: one value each
        "compare_html_mb": round(Path(html_out).stat().st_size / 2**20, 2),
    }


# -- measuring one step in a fresh process -------------------------------------------------------------------


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _measure_here(target: str, args: list[Any]) -> dict[str, Any]:
    import importlib
    import resource
    import time

    mod, _, name = target.partition(":")
    fn = getattr(importlib.import_module(mod), name)
    base_kb = _status_kb("VmRSS")
    try:  # reset the peak to what is resident now (Linux >= 4.0), so the peak is this step's
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    r0, w0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    extra = fn(*args)
    r1, w1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    return {
        **(extra if isinstance(extra, dict) else {}),
        "target": target,
        "wall_s": round(w1 - w0, 3),
        "cpu_s": round(r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime, 3),
        "rss_before_mb": round(base_kb / 1024, 1),
        "rss_peak_mb": round(_status_kb("VmHWM") / 1024, 1),
    }


def measure(target: str, *args: Any, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``module:function(*args)`` (JSON arguments) in a fresh Python; return its ``wall_s`` and ``cpu_s`` and
    the process's resident memory before the call (``rss_before_mb``, after the imports) and at its peak during
    the call (``rss_peak_mb``: VmHWM, reset just before the call), and whatever dict the function returns.
    RuntimeError with the child's stderr when it fails."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run(
        [sys.executable, "-m", "devkit.synthrun", "--measure", target, json.dumps(list(args))],
        cwd=root,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(root), **(env or {})},
    )
    if proc.returncode:
        raise RuntimeError(f"measuring {target} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    import sys

    if len(sys.argv) == 4 and sys.argv[1] == "--measure":
        print(json.dumps(_measure_here(sys.argv[2], json.loads(sys.argv[3]))))
    else:
        sys.exit("usage: python -m devkit.synthrun --measure module:function JSON-ARGS (see measure())")
