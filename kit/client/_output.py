"""Result files of a run, and merging several runs' files into one.

One process writes into its ``OUTPUT_DIR``:

- ``queries.csv``, ``sessions.csv``: one row per query / session;
- ``timeline.csv``: one row per wall-clock second: counts, active sessions, and p50/p99/max (ms) of
  delivery latency, TTFT, inter-token gap, query latency, create and connect in that second, from the
  per-second histograms in ``histograms.json`` (merged like the whole-run ones, never averaged);
- ``histograms.json``: the mergeable state: histograms (microseconds), counters,
  error breakdown, and one entry per generator process under ``runs``;
- ``summary.json``: :func:`build_summary` of that state, with the run's verdict ``status``
  (:func:`run_status`), its complete ``workload`` (:func:`kit.client._workload.workload_summary`) and its
  load shape: ``seed``, ``arrivals`` and ``stages`` (:func:`load_shape`; each process's own are in its
  ``runs`` entry);
- ``meta.json``: config (no secrets), versions, argv (written when the folder is claimed,
  rewritten at the end), and the run's ``workload``.

A run never overwrites another: :func:`claim_output_dir` writes into ``OUTPUT_DIR`` itself
when it holds no run yet, else into ``OUTPUT_DIR/<run-id>/``.

:func:`merge_outputs` reads several such folders (processes or hosts, or
already merged folders), adds their states and writes the same files for the
union.  The summary is always computed by :func:`build_summary` from the
(merged) state, so merged output is exactly what one process recording every
value would have reported: counts add, percentiles come from merged buckets.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from kit.metrics import Histogram, SecondHistograms, Timeline, add_counts

from ._accounting import HISTOGRAMS, TIMELINE_HISTOGRAMS
from ._workload import merge_workload, workload_summary

__all__ = [
    "QUERY_FIELDS",
    "SESSION_FIELDS",
    "TIMELINE_FIELDS",
    "PERCENTILES",
    "write_outputs",
    "build_summary",
    "merge_outputs",
    "load_state",
    "write_json_atomic",
    "run_status",
    "reconnect_limit",
    "load_shape",
    "RUN_STATUSES",
    "RESULT_FILES",
    "check_output_dir",
    "claim_output_dir",
]

log = logging.getLogger(__name__)

QUERY_FIELDS = [
    "session_id",
    "query_index",
    "query_id",
    "intended_at",
    "submit_at",
    "ttft_ms",
    "latency_ms",
    "service_latency_ms",
    "expected_tokens",
    "tokens",
    "lost",
    "cancelled",
    "duplicated",
    "out_of_order",
    "status",
    "error",
]
SESSION_FIELDS = [
    "session_index",
    "session_id",
    "intended_at",
    "started_at",
    "create_ms",
    "connect_ms",
    "tcp_ms",
    "tls_ms",
    "upgrade_ms",
    "connect_attempts",
    "reconnect_attempts",
    "reconnects_ok",
    "queries_ok",
    "queries_failed",
    "queries_skipped",
    "left_early",
    "tokens",
    "status",
    "errors",
]
TIMELINE_FIELDS = [
    "second",
    *Timeline.FIELDS,
    *(f"{n}_{s}_ms" for n in TIMELINE_HISTOGRAMS for s in ("p50", "p99", "max")),
]
PERCENTILES = (10, 25, 50, 75, 90, 95, 99, 99.9)
STATE_VERSION = 1
#: a run's verdict, in summary.json's ``status`` (see :func:`run_status`)
RUN_STATUSES = ("passed", "partial", "failed")
#: files whose presence means a folder already holds a run (finished, running or crashed)
RESULT_FILES = (
    "summary.json",
    "histograms.json",
    "meta.json",
    "status.json",
    "queries.csv",
    "sessions.csv",
    "timeline.csv",
)


def run_status(summary: Mapping[str, Any], runs: Iterable[Mapping[str, Any]] = ()) -> tuple[str, str]:
    """The verdict of a run and why: ``(status, reason)``.

    - ``failed``: no session succeeded (none finished, or every one failed or was cancelled);
    - ``partial``: some succeeded, but at least one failed or was cancelled, or a process hit
      ``--max-duration`` or was interrupted (sessions still running were cancelled, later ones
      never started);
    - ``passed``: at least one session, every one succeeded, and no process hit ``--max-duration``
      or was interrupted (SIGINT/SIGTERM: a partial run at best).

    A session succeeds when every one of its queries got its ``done`` with no token lost.  A
    generator marked overloaded does not change the verdict (it is reported on its own).
    """
    total = int(summary.get("total_sessions") or 0)
    ok = int(summary.get("successful_sessions") or 0)
    failed = int(summary.get("failed_sessions") or 0)
    cancelled = int(summary.get("cancelled_sessions") or 0)
    hit = any(r.get("max_duration_hit") for r in runs)
    interrupted = sorted({r["interrupted"] for r in runs if r.get("interrupted")})
    why = []
    if failed - cancelled:
        why.append(f"{failed - cancelled} of {total} sessions failed")
    if cancelled:
        why.append(f"{cancelled} cancelled")
    if hit:
        why.append("--max-duration reached")
    if interrupted:
        why.append(f"interrupted ({', '.join(interrupted)})")
    if ok == 0:
        return "failed", "no session succeeded" + (f": {', '.join(why)}" if why else "")
    if why:
        return "partial", ", ".join(why)
    return "passed", f"all {total} sessions succeeded"


def reconnect_limit(runs: Iterable[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The reconnect bucket the run's processes used (their ``reconnect_limit``): ``rate_per_process``
    (attempts a second; 0 = unlimited; a list when processes differed), ``burst``, ``processes`` and
    ``rate_total`` (None when unlimited).  None for results written before the bucket existed."""
    limits = [r["reconnect_limit"] for r in runs if r.get("reconnect_limit")]
    if not limits:
        return None
    rates = sorted({float(x["rate"]) for x in limits})
    bursts = sorted({int(x["burst"]) for x in limits})
    return {
        "rate_per_process": rates[0] if len(rates) == 1 else rates,
        "burst": bursts[0] if len(bursts) == 1 else bursts,
        "processes": len(limits),
        "rate_total": None if rates[0] == 0 else round(sum(float(x["rate"]) for x in limits), 3),
    }


def _one_or_all(values: Iterable[Any]) -> Any:
    """The value every run shares, else all of them (sorted), else None."""
    seen = sorted(set(values))
    return seen[0] if len(seen) == 1 else (seen or None)


def load_shape(runs: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """summary.json's load shape from the runs' entries: the ``seed`` the schedules and jitter were drawn
    from and the ``arrivals`` (one value when every run shares it, else the list: a controller gives each
    generator a seed of its own), and ``stages``: each stage (kit.client._stages.stage_records) with its times
    from the earliest run's start and its targets added up over the generators (each generator's processes
    share one schedule: its first process's entry counts)."""
    runs = list(runs)
    staged = [r for r in runs if r.get("stages")]
    stages: list[dict[str, Any]] = []
    if staged:
        firsts = [r for r in staged if r.get("process_index", 0) == 0] or staged[:1]
        base = firsts[0]
        shift = base["start"] - min(r["start"] for r in runs)
        same = all(len(r["stages"]) == len(base["stages"]) for r in firsts)
        for i, st in enumerate(base["stages"]):
            entry = dict(st)
            entry["start_s"] = round(st["start_s"] + shift, 3)
            entry["end_s"] = round(st["end_s"] + shift, 3)
            if same:
                for k in ("target_from", "target_to"):
                    entry[k] = round(sum(r["stages"][i][k] for r in firsts), 9)
            stages.append(entry)
    return {
        "seed": _one_or_all(r["seed"] for r in runs if r.get("seed") is not None),
        "arrivals": _one_or_all(r["arrivals"] for r in runs if r.get("arrivals")),
        "stages": stages,
    }


def check_output_dir(path: Path) -> None:
    """Create *path* (and parents) and make sure files can be written in it; ConfigError if not."""
    from kit.config import ConfigError

    fix = "pass a folder you can write to, e.g. --output-dir ./loadtest_results"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"--output-dir / OUTPUT_DIR {path}: cannot create it ({exc.strerror or exc}): {fix}"
        ) from None
    probe = path / f".write-test.{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(
            f"--output-dir / OUTPUT_DIR {path}: cannot write into it ({exc.strerror or exc}): {fix}"
        ) from None


def _holds_a_run(path: Path) -> bool:
    return any((path / name).exists() for name in RESULT_FILES) or any(path.glob("proc-*"))


def claim_output_dir(path: Path, run_id: str, meta: Mapping[str, Any], *, run_id_given: bool) -> tuple[Path, str]:
    """Take a folder for run *run_id* without overwriting any earlier run; return ``(folder, run_id)``.

    *path* itself when it holds no run yet, else ``path/<run_id>/``; when that is taken too, a
    generated run id gets a suffix (``-2``, ``-3`` ...) and a given one (``--run-id``) is refused.
    The folder is claimed by creating its ``meta.json`` exclusively (O_EXCL), so two runs started
    at once into one folder cannot both take it.  ConfigError when no folder can be taken.
    """
    from kit.config import ConfigError

    check_output_dir(path)

    def take(folder: Path, rid: str) -> bool:
        try:
            if folder != path:
                folder.mkdir()
            elif _holds_a_run(folder):
                return False
            fd = os.open(folder / "meta.json", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        except OSError as exc:
            raise ConfigError(
                f"--output-dir / OUTPUT_DIR {folder}: cannot write into it "
                f"({exc.strerror or exc}): pass a folder you can write to"
            ) from None
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps({**meta, "run_id": rid}, indent=2) + "\n")
        return True

    if take(path, run_id):
        return path, run_id
    n, rid = 1, run_id
    while True:
        if take(path / rid, rid):
            return path / rid, rid
        if run_id_given:
            raise ConfigError(
                f"--output-dir / OUTPUT_DIR {path} already holds a run and {path / rid} is taken: "
                "pass another --run-id or --output-dir"
            )
        n += 1
        rid = f"{run_id}-{n}"


def write_json_atomic(path: Path, data: Any, *, compact: bool = False) -> None:
    """Write *data* as JSON to *path* through a temporary file and a rename (a reader never sees half a file).

    Indented for reading, or *compact* (no whitespace) for the machine-read ``histograms.json``: Python's JSON
    encoder runs in C only without an indent, and indented, each bucket of a histogram takes four lines
    (a 100,000-session merge: 17 MB and 3 s indented, a fifth of both compact)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    text = json.dumps(data, separators=(",", ":")) if compact else json.dumps(data, indent=2, sort_keys=False)
    tmp.write_text(text + "\n")
    os.replace(tmp, path)


def _write_csv(path: Path, fields: list[str], rows: Iterable[Mapping[str, Any]]) -> int:
    n = 0
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow(r)
            n += 1
    return n


def _read_csv(path: Path) -> list[dict[str, str]]:
    """The rows of *path* (none when it is missing); ValueError naming it when it is not a readable CSV."""
    if not path.exists():
        return []
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"{path}: not UTF-8 text (byte {exc.start}): pass folders written by `python -m kit.client`"
        ) from None
    except csv.Error as exc:
        raise ValueError(f"{path}: not a readable CSV ({exc}): the file is damaged") from None


def _csv_rows(path: Path, fields: list[str]) -> Iterator[list[str]]:
    """The rows of *path* as lists in *fields*' order, streamed (none when it is missing): what
    ``csv.DictWriter(fields, extrasaction="ignore")`` writes of ``csv.DictReader``'s rows (blank lines skipped,
    a column the file lacks is empty, one *fields* lacks is dropped), without a dict per row.  ValueError
    naming *path* when it is not a readable CSV."""
    if not path.exists():
        return
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None:
                return
            width = len(fields)
            if header == fields:  # the kit's own files: rows pass through as they are
                pad = [""] * width
                for row in reader:
                    if len(row) == width:
                        yield row
                    elif row:
                        yield (row + pad)[:width]
                return
            where = {name: i for i, name in enumerate(header)}  # a repeated column: the last one, as DictReader
            pick = [where.get(f, -1) for f in fields]
            for row in reader:
                if row:
                    n = len(row)
                    yield [row[i] if 0 <= i < n else "" for i in pick]
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"{path}: not UTF-8 text (byte {exc.start}): pass folders written by `python -m kit.client`"
        ) from None
    except csv.Error as exc:
        raise ValueError(f"{path}: not a readable CSV ({exc}): the file is damaged") from None


def _concat_csv(out: Path, fields: list[str], paths: Iterable[Path]) -> None:
    """Write the rows of every file of *paths* (:func:`_csv_rows`) under one header into *out*, one row in
    memory at a time."""
    with open(out, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(fields)
        for path in paths:
            w.writerows(_csv_rows(path, fields))


def _ms(v: float | None) -> float | None:
    return None if v is None else round(v / 1000.0, 3)


def _hist_ms(h: Histogram) -> dict[str, Any]:
    out = h.summary(PERCENTILES, scale=1000.0)
    return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in out.items()}


def build_summary(state: Mapping[str, Any]) -> dict[str, Any]:
    """Every aggregate of the seed's "Metrics Collected" list and more, from a (merged) state."""
    hists = {k: Histogram.from_dict(v) for k, v in state["histograms"].items()}
    c = state["counters"]
    runs = state["runs"]
    g = lambda k: int(c.get(k, 0))  # noqa: E731
    start = min((r["start"] for r in runs), default=0.0)
    end = max((r["end"] for r in runs), default=0.0)
    duration = max(end - start, 1e-9)
    sessions = g("sessions_finished")
    ok = g("sessions_ok")
    queries = g("queries_ok") + g("queries_failed")
    lat = hists["latency"]
    lag = hists["loop_lag"]
    overloaded = [r for r in runs if r.get("generator_overloaded")]
    skews = [r["start_skew_s"] for r in runs if r.get("start_skew_s") is not None]
    summary: dict[str, Any] = {
        "run_id": state.get("run_id", ""),
        "status": "",  # filled in below from the counts: passed / partial / failed
        "status_reason": "",
        "model": state.get("model", ""),
        "started_at": start,
        "ended_at": end,
        "duration_s": round(duration, 3),
        # seed: total sessions / successful / failed, success rate
        "total_sessions": sessions,
        "successful_sessions": ok,
        "failed_sessions": g("sessions_failed"),
        "cancelled_sessions": g("sessions_cancelled"),
        # stage slots' sessions that left cleanly when their slot retired (ok; counted in successful_sessions)
        "left_early_sessions": g("sessions_left_early"),
        "success_rate": round(100.0 * ok / sessions, 3) if sessions else 0.0,
        # seed: total queries / total tokens, QPS, TPS
        "total_queries": queries,
        "successful_queries": g("queries_ok"),
        "failed_queries": g("queries_failed"),
        "skipped_queries": g("queries_skipped"),
        "query_success_rate": round(100.0 * g("queries_ok") / queries, 3) if queries else 0.0,
        "total_tokens": g("tokens"),
        "qps": round(g("queries_ok") / duration, 3),
        "tps": round(g("tokens") / duration, 3),
        # seed: latency p50/p95/p99/min/max/avg (ms)
        "latency_ms": _hist_ms(lat),
        "service_latency_ms": _hist_ms(hists["service_latency"]),
        "ttft_ms": _hist_ms(hists["ttft"]),
        "inter_token_ms": _hist_ms(hists["inter_token"]),
        "delivery_latency_ms": _hist_ms(hists["delivery"]),
        # seed: average create/connect times
        "avg_create_ms": _ms(hists["create"].mean()),
        "avg_connect_ms": _ms(hists["connect"].mean()),
        "create_ms": _hist_ms(hists["create"]),
        "connect_ms": _hist_ms(hists["connect"]),
        # the connect split: TCP, TLS handshake (0 for ws://), HTTP upgrade (older results: empty)
        **{
            f"{name}_ms": _hist_ms(hists.get(name) or Histogram("us"))
            for name in ("connect_tcp", "connect_tls", "connect_upgrade")
        },
        # the client's own HTTP queue, kept out of create/TTFT (all connections of the pool busy)
        "http_pool_wait_ms": _hist_ms(hists.get("http_pool_wait") or Histogram("us")),
        "http": {
            k: g(k)
            for k in (
                "http_requests",
                "http_requests_waited",
                "http_connections_opened",
                "http_connections_reused",
                "http_stale_discarded",
                "http_retries",
            )
        },
        # seed: reconnections
        "total_reconnect_attempts": g("reconnect_attempts"),
        "total_successful_reconnects": g("reconnects_ok"),
        "sessions_with_reconnects": g("sessions_with_reconnects"),
        # what held the attempts back, apart: each session's backoff, and its process's reconnect bucket
        # (attempts that had to wait for a token, and the seconds they waited; kit.client._limiter)
        "reconnect_backoff_wait_s": round(g("reconnect_backoff_wait_us") / 1e6, 3),
        "reconnect_bucket_waits": g("reconnect_bucket_waits"),
        "reconnect_bucket_wait_s": round(g("reconnect_bucket_wait_us") / 1e6, 3),
        "reconnect_limit": reconnect_limit(runs),
        # exact token accounting
        "lost_tokens": g("lost_tokens"),
        # announced but never sent: the simulator cancelled the query (its session was closed)
        "cancelled_tokens": g("cancelled_tokens"),
        "duplicated_tokens": g("duplicated_tokens"),
        "out_of_order_tokens": g("out_of_order_tokens"),
        "late_messages": g("late_messages"),
        "stray_messages": g("stray_messages"),
        "total_errors": g("errors"),
        "errors": dict(sorted(state.get("errors", {}).items(), key=lambda kv: (-kv[1], kv[0]))),
        "query_statuses": {k[len("query_status_") :]: v for k, v in sorted(c.items()) if k.startswith("query_status_")},
        "start_skew_s": {"max_abs": round(max((abs(x) for x in skews), default=0.0), 6), "per_process": skews},
        "generator": {
            "processes": len(runs),
            "hosts": sorted({r["host"] for r in runs}),
            "pids": [r["pid"] for r in runs],
            "cpu_percent_peak": max((r["cpu_percent_peak"] for r in runs), default=0.0),
            "cpu_percent_mean": round(sum(r["cpu_percent_mean"] for r in runs) / len(runs), 1) if runs else 0.0,
            "loop_lag_p99_ms": _ms(lag.percentile(99)),
            "loop_lag_max_ms": _ms(lag.max),
            "start_lag_p99_ms": _ms(hists["start_lag"].percentile(99)),
            "generator_overloaded": bool(overloaded),
            "reason": "; ".join(f"{r['host']}:{r['pid']}: {r['overload_reason']}" for r in overloaded),
            "per_process": [
                {
                    k: r.get(k)
                    for k in (
                        "host",
                        "pid",
                        "cpu_percent_peak",
                        "cpu_percent_mean",
                        "loop_lag_p99_ms",
                        "loop_lag_max_ms",
                        "generator_overloaded",
                        "overload_reason",
                    )
                }
                for r in runs
            ],
        },
    }
    summary.update(load_shape(runs))
    summary["status"], summary["status_reason"] = run_status(summary, runs)
    summary["interrupted"] = sorted({r["interrupted"] for r in runs if r.get("interrupted")}) or None
    summary["workload"] = workload_summary(state.get("workload"))
    return summary


def _state(
    rec: Any, run: Mapping[str, Any], *, run_id: str, model: str, workload: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "version": STATE_VERSION,
        "run_id": run_id,
        "model": model,
        "histograms": {k: h.to_dict() for k, h in rec.hists.items()},
        "timeline_histograms": rec.second_hists.to_dict(),
        "counters": dict(rec.counters),
        "errors": dict(rec.errors),
        "runs": [dict(run)],
        "workload": workload,
    }


def write_outputs(
    out_dir: Path,
    rec: Any,
    run: Mapping[str, Any],
    meta: Mapping[str, Any],
    *,
    run_id: str,
    model: str,
    workload: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write every result file of one process's *rec*; return the summary."""
    out_dir.mkdir(parents=True, exist_ok=True)
    off = rec.mono_to_wall_ns
    _write_csv(out_dir / "queries.csv", QUERY_FIELDS, (q.row(off) for q in rec.queries))
    _write_csv(out_dir / "sessions.csv", SESSION_FIELDS, (s.row(off) for s in rec.sessions))
    _write_csv(out_dir / "timeline.csv", TIMELINE_FIELDS, timeline_rows(rec.timeline, rec.second_hists))
    state = _state(rec, run, run_id=run_id, model=model, workload=workload)
    write_json_atomic(out_dir / "histograms.json", state, compact=True)
    summary = build_summary(state)
    write_json_atomic(out_dir / "summary.json", summary)
    write_json_atomic(out_dir / "meta.json", {**meta, "workload": summary["workload"]})
    return summary


def timeline_rows(timeline: Timeline, seconds: SecondHistograms) -> list[dict[str, Any]]:
    """timeline.csv's rows: the counters of each second beside its latency percentiles (ms)."""
    pct = {sec: {f"{k}_ms": v for k, v in row.items()} for sec, row in seconds.rows(TIMELINE_HISTOGRAMS).items()}
    rows: dict[int, dict[str, Any]] = {r["second"]: dict(r) for r in timeline.to_rows()}
    for sec, p in pct.items():
        rows.setdefault(sec, {"second": sec, **dict.fromkeys(Timeline.FIELDS, 0)}).update(p)
    return [rows[s] for s in sorted(rows)]


def load_state(in_dir: Path) -> dict[str, Any]:
    """The mergeable state in *in_dir*'s ``histograms.json``, checked (:func:`check_state`).

    FileNotFoundError when it is missing; ValueError naming the file and what is wrong otherwise."""
    return _load_checked(in_dir)[0]


def _load_checked(in_dir: Path) -> tuple[dict[str, Any], dict[str, Histogram], SecondHistograms]:
    """:func:`load_state`, and the state's histograms and per-second histograms as the check built them."""
    path = Path(in_dir) / "histograms.json"
    try:
        state = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} does not exist: pass a folder written by `python -m kit.client`") from None
    except IsADirectoryError:
        raise ValueError(f"{path} is a folder: pass a folder written by `python -m kit.client`") from None
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}): the run did not finish writing it") from None
    return state, *_check_state(state, str(path))


def _bad(where: str, what: str) -> ValueError:
    return ValueError(
        f"{where}: {what}: pass a folder written by `python -m kit.client` (the file is damaged "
        "or from another program)"
    )


def check_state(state: Any, where: str) -> None:
    """ValueError (one line starting with *where*) unless *state* has the shape :func:`merge_states` and
    :func:`build_summary` read: an object of the current version whose histograms, per-second histograms,
    counters, errors, runs and workload have the right types.  A histogram's own checks are
    :meth:`kit.metrics.Histogram.from_dict`'s."""
    _check_state(state, where)


def _check_state(state: Any, where: str) -> tuple[dict[str, Histogram], SecondHistograms]:
    """:func:`check_state`; returns the histograms and per-second histograms it built on the way (a merge adds
    those rather than building them again)."""

    def number(v: Any) -> bool:  # finite, and far from what a float cannot hold (no run counts 2**63 of anything)
        return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) <= 2**63

    def flat_numbers(v: Any) -> bool:
        return isinstance(v, dict) and all(isinstance(k, str) and number(n) for k, n in v.items())

    if not isinstance(state, dict):
        names: dict[type, str] = {list: "list", str: "string"}
        kind = names.get(type(state), type(state).__name__)
        raise _bad(where, f"a JSON {kind}, not the object a run writes")
    if state.get("version") != STATE_VERSION:
        raise ValueError(
            f"{where}: state version {state.get('version')!r:.20} is not {STATE_VERSION}: merge "
            "results written by this kit version"
        )
    for key in ("run_id", "model"):
        if not isinstance(state.get(key, ""), str):
            raise _bad(where, f"'{key}' is not a string")
    hists = state.get("histograms")
    if not isinstance(hists, dict):
        raise _bad(where, "'histograms' is not an object")
    try:
        built = {name: Histogram.from_dict(h) for name, h in hists.items()}
        for h in built.values():
            h.merge(Histogram("us"))  # its unit too: every histogram is in us
        seconds = SecondHistograms.from_dict(state.get("timeline_histograms"))
    except ValueError as exc:
        raise _bad(where, str(exc)) from None
    if not flat_numbers(state.get("counters")):
        raise _bad(where, "'counters' is not an object of numbers")
    if not flat_numbers(state.get("errors", {})):
        raise _bad(where, "'errors' is not an object of numbers")
    runs = state.get("runs")
    if not isinstance(runs, list):
        raise _bad(where, "'runs' is not a list")
    for i, r in enumerate(runs):
        if not isinstance(r, dict):
            raise _bad(where, f"runs[{i}] is not an object")
        for key in ("start", "end", "cpu_percent_peak", "cpu_percent_mean"):
            if not number(r.get(key)):
                raise _bad(where, f"runs[{i}].{key} is not a number")
        if not isinstance(r.get("host"), str) or not isinstance(r.get("pid"), int):
            raise _bad(where, f"runs[{i}] lacks its host and pid")
        if r.get("start_skew_s") is not None and not number(r["start_skew_s"]):
            raise _bad(where, f"runs[{i}].start_skew_s is not a number")
        if r.get("generator_overloaded") and "overload_reason" not in r:
            raise _bad(where, f"runs[{i}] is overloaded without an overload_reason")
        if r.get("interrupted") is not None and not isinstance(r["interrupted"], str):
            raise _bad(where, f"runs[{i}].interrupted is not a signal name")
        if r.get("seed") is not None and not isinstance(r["seed"], int):
            raise _bad(where, f"runs[{i}].seed is not a whole number")
        if r.get("arrivals") is not None and not isinstance(r["arrivals"], str):
            raise _bad(where, f"runs[{i}].arrivals is not text")
        st = r.get("stages")
        if st is not None and not (
            isinstance(st, list)
            and all(
                isinstance(x, dict) and all(number(x.get(k)) for k in ("start_s", "end_s", "target_from", "target_to"))
                for x in st
            )
        ):
            raise _bad(where, f"runs[{i}].stages is not a list of {{start_s, end_s, target_from, target_to}}")
        lim = r.get("reconnect_limit")
        if lim and not (isinstance(lim, dict) and number(lim.get("rate")) and isinstance(lim.get("burst"), int)):
            raise _bad(where, f"runs[{i}].reconnect_limit is not {{rate, burst}}")
    wl = state.get("workload")
    if wl is not None:
        classes = wl.get("classes") if isinstance(wl, dict) else None
        if not isinstance(classes, dict) or not all(
            isinstance(c, dict)
            and (c.get("sessions") is None or isinstance(c["sessions"], int))
            and (c.get("weight") is None or number(c["weight"]))
            and all(c.get(k) is None or isinstance(c[k], dict) for k in ("requested", "echo", "overrides"))
            for c in classes.values()
        ):
            raise _bad(where, "'workload' is not {source, seed, classes: {name: {weight, sessions, ...}}}")
    return built, seconds


class _StateSum:
    """States added one at a time (a merge holds one input's state at once, not all of them)."""

    def __init__(self) -> None:
        self.hists: dict[str, Histogram] = {name: Histogram("us") for name in HISTOGRAMS}
        self.seconds = SecondHistograms()
        self.counters: dict[str, Any] = {}
        self.errors: dict[str, Any] = {}
        self.runs: list[dict[str, Any]] = []
        self.run_ids: list[str] = []
        self.models: list[str] = []
        self.workloads: list[Any] = []

    def add(
        self,
        st: Mapping[str, Any],
        hists: Mapping[str, Histogram] | None = None,
        seconds: SecondHistograms | None = None,
    ) -> None:
        """Add state *st*; *hists* and *seconds*: its histograms already built (:func:`_check_state`), which
        the sum may take over."""
        for name, d in st["histograms"].items():
            self.hists.setdefault(name, Histogram("us")).merge(hists[name] if hists else Histogram.from_dict(d))
        if seconds is None:
            seconds = SecondHistograms.from_dict(st.get("timeline_histograms"))
        self.seconds.merge(seconds, take=True)
        add_counts(self.counters, st["counters"])
        add_counts(self.errors, st.get("errors", {}))
        self.runs.extend(st["runs"])
        self.run_ids.append(st.get("run_id", ""))
        self.models.append(st.get("model", ""))
        self.workloads.append(st.get("workload"))

    def state(self) -> dict[str, Any]:
        run_ids, models = self.run_ids, self.models
        return {
            "version": STATE_VERSION,
            "run_id": run_ids[0] if len(set(run_ids)) == 1 else ",".join(sorted(set(run_ids))),
            "model": models[0] if len(set(models)) == 1 else ",".join(sorted(set(models))),
            "histograms": {k: h.to_dict() for k, h in self.hists.items()},
            "timeline_histograms": self.seconds.to_dict(),
            "counters": self.counters,
            "errors": self.errors,
            "runs": self.runs,
            "workload": merge_workload(self.workloads),
        }


def merge_states(states: list[Mapping[str, Any]]) -> dict[str, Any]:
    """The state of the union of *states*' runs (what :func:`merge_outputs` writes to ``histograms.json``)."""
    total = _StateSum()
    for st in states:
        total.add(st)
    return total.state()


def merge_outputs(in_dirs: list[Path], out_dir: Path) -> dict[str, Any]:
    """Merge result folders into *out_dir* (CSVs concatenated, timeline and histograms added).

    Every input's state is read and checked before anything is written: a damaged or foreign one is a
    ValueError (FileNotFoundError when missing) naming it, and *out_dir* is left as it was.  The CSVs are
    streamed, one row in memory at a time (a 100,000-session run is 50 MB of them), into temporary files
    renamed into place once every one is written: a CSV found damaged on the way also leaves *out_dir* as it
    was.  Returns the merged summary (also written to ``out_dir/summary.json``).
    """
    in_dirs = [Path(d) for d in in_dirs]
    if not in_dirs:
        raise ValueError("merge needs at least one input folder")
    for d in in_dirs:
        if d.exists() and not d.is_dir():
            raise ValueError(f"{d} is not a folder: pass folders written by `python -m kit.client`")
    total = _StateSum()
    for d in in_dirs:  # one input's state in memory at a time
        total.add(*_load_checked(d))
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir} is not a folder: pass a folder to merge into (OUT_DIR comes first)")
    timeline = Timeline()
    for d in in_dirs:
        try:
            timeline.merge(Timeline.from_rows(_read_csv(d / "timeline.csv")))
        except ValueError as exc:
            raise ValueError(f"{d / 'timeline.csv'}: {exc}") from None
    merged = total.state()
    summary = build_summary(merged)
    metas = []
    for d in in_dirs:
        try:
            metas.append(json.loads((d / "meta.json").read_text()))
        except (OSError, ValueError):
            metas.append({"missing": str(d / "meta.json")})
    created = [p for p in (out_dir, *out_dir.parents) if not p.exists()]  # deepest first
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = {name: out_dir / f".{name}.{os.getpid()}.tmp" for name in ("queries.csv", "sessions.csv", "timeline.csv")}
    try:
        for name, fields in (("queries.csv", QUERY_FIELDS), ("sessions.csv", SESSION_FIELDS)):
            _concat_csv(tmp[name], fields, (d / name for d in in_dirs))
        _write_csv(tmp["timeline.csv"], TIMELINE_FIELDS, timeline_rows(timeline, total.seconds))
    except BaseException:
        for t in tmp.values():
            t.unlink(missing_ok=True)
        for p in created:
            try:
                p.rmdir()
            except OSError:
                break
        raise
    for name, t in tmp.items():
        os.replace(t, out_dir / name)
    write_json_atomic(out_dir / "histograms.json", merged, compact=True)
    write_json_atomic(out_dir / "summary.json", summary)
    write_json_atomic(
        out_dir / "meta.json",
        {"merged_from": [str(d) for d in in_dirs], "inputs": metas, "workload": summary["workload"]},
    )
    return summary
