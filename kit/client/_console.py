"""What the client prints: the live progress line and the seed's end-of-run summary table.

Everything goes to stderr except the summary table (stdout), so
``python -m kit.client ... > table.txt`` keeps the table clean.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any, TextIO

__all__ = ["progress", "format_progress", "summary_table", "print_summary"]


def _f(v: Any, fmt: str = "{:.1f}") -> str:
    return "-" if v is None else fmt.format(v)


def _limit(lim: Mapping[str, Any] | None) -> str:
    if not lim:
        return "not recorded"
    rate = lim.get("rate_per_process")
    if not rate:
        return "unlimited"
    return f"{rate:g}/s per process, burst {lim.get('burst')}" if isinstance(rate, (int, float)) else f"{rate}/s"


def format_progress(s: Mapping[str, Any]) -> str:
    return (
        f"[{s.get('elapsed_s', 0):7.1f}s] active {s.get('active_sessions', 0):>6}  "
        f"sessions {s.get('sessions_finished', 0)}/{s.get('sessions_started', 0)}  "
        f"queries ok {s.get('queries_ok', 0)} failed {s.get('queries_failed', 0)}  "
        f"tokens {s.get('tokens', 0)}  p50 {_f(s.get('latency_p50_ms'))} ms  p99 {_f(s.get('latency_p99_ms'))} ms  "
        f"errors {s.get('errors', 0)}  reconnects {s.get('reconnects_ok', 0)}/{s.get('reconnect_attempts', 0)}  "
        f"cpu {_f(s.get('cpu_percent'), '{:.0f}')}%  lag p99 {_f(s.get('loop_lag_p99_ms'))} ms"
    )


def progress(s: Mapping[str, Any], *, tty: bool, out: TextIO | None = None) -> None:
    out = out or sys.stderr
    line = format_progress(s)
    if tty:
        out.write("\r" + line[:200] + "\x1b[K")
    else:
        out.write(line + "\n")
    out.flush()


def summary_table(s: Mapping[str, Any]) -> str:
    lat = s.get("latency_ms", {})
    ttft = s.get("ttft_ms", {})
    gen = s.get("generator", {})
    lines = [
        "=" * 64,
        f"LOAD TEST SUMMARY  ({s.get('model', '')} model, run {s.get('run_id', '')})",
        "=" * 64,
        f"Status:                 {str(s.get('status') or '-').upper()}"
        + (f"  ({s['status_reason']})" if s.get("status_reason") else ""),
        f"Duration:               {s.get('duration_s', 0):.2f} s"
        + (
            f"  ({len(s['stages'])} stages to {s['stages'][-1]['end_s']:g} s, arrivals {s.get('arrivals')}, "
            f"seed {s.get('seed')})"
            if s.get("stages")
            else ""
        ),
        f"Total sessions:         {s.get('total_sessions', 0)}",
        f"Successful / failed:    {s.get('successful_sessions', 0)} / {s.get('failed_sessions', 0)}"
        + (f"  (cancelled {s['cancelled_sessions']})" if s.get("cancelled_sessions") else "")
        + (f"  (left early, ok: {s['left_early_sessions']})" if s.get("left_early_sessions") else ""),
        f"Success rate:           {s.get('success_rate', 0):.2f} %",
        f"Total queries:          {s.get('total_queries', 0)}  (ok {s.get('successful_queries', 0)}, "
        f"failed {s.get('failed_queries', 0)}, skipped {s.get('skipped_queries', 0)})",
        f"Total tokens:           {s.get('total_tokens', 0)}  (lost {s.get('lost_tokens', 0)}, "
        f"duplicated {s.get('duplicated_tokens', 0)}, out of order {s.get('out_of_order_tokens', 0)})",
        f"QPS:                    {s.get('qps', 0):.2f}",
        f"TPS:                    {s.get('tps', 0):.2f}",
        "",
        "Query latency (ms):     p50 {}  p95 {}  p99 {}".format(
            _f(lat.get("p50"), "{:.1f}"), _f(lat.get("p95"), "{:.1f}"), _f(lat.get("p99"), "{:.1f}")
        ),
        "                        min {}  max {}  avg {}".format(
            _f(lat.get("min"), "{:.1f}"), _f(lat.get("max"), "{:.1f}"), _f(lat.get("avg"), "{:.1f}")
        ),
        "Time to first token:    p50 {}  p99 {} ms".format(_f(ttft.get("p50")), _f(ttft.get("p99"))),
        "Inter-token gap:        p50 {}  p99 {} ms".format(
            _f(s.get("inter_token_ms", {}).get("p50"), "{:.2f}"), _f(s.get("inter_token_ms", {}).get("p99"), "{:.2f}")
        ),
        "Token delivery:         p50 {}  p99 {} ms".format(
            _f(s.get("delivery_latency_ms", {}).get("p50"), "{:.2f}"),
            _f(s.get("delivery_latency_ms", {}).get("p99"), "{:.2f}"),
        ),
        f"Avg create time:        {_f(s.get('avg_create_ms'), '{:.2f}')} ms",
        f"Avg connect time:       {_f(s.get('avg_connect_ms'), '{:.2f}')} ms",
        "  split p50:            TCP {}  TLS {}  upgrade {} ms".format(
            *(_f((s.get(f"connect_{k}_ms") or {}).get("p50"), "{:.2f}") for k in ("tcp", "tls", "upgrade"))
        ),
        "",
        f"Reconnect attempts:     {s.get('total_reconnect_attempts', 0)}",
        f"Successful reconnects:  {s.get('total_successful_reconnects', 0)}",
        f"Sessions w/ reconnects: {s.get('sessions_with_reconnects', 0)}",
        f"Reconnect waits:        backoff {_f(s.get('reconnect_backoff_wait_s'), '{:.1f}')} s; rate limit "
        f"{s.get('reconnect_bucket_waits', 0)} attempts, {_f(s.get('reconnect_bucket_wait_s'), '{:.1f}')} s "
        f"({_limit(s.get('reconnect_limit'))})",
        f"Generator:              {gen.get('processes', 0)} process(es), cpu peak "
        f"{_f(gen.get('cpu_percent_peak'), '{:.0f}')}%, loop lag p99 {_f(gen.get('loop_lag_p99_ms'))} ms",
    ]
    if gen.get("generator_overloaded"):
        lines.append(f"WARNING: generator overloaded, numbers measure the client: {gen.get('reason')}")
    errors = s.get("errors") or {}
    if errors:
        lines.append("")
        lines.append("Errors:")
        for kind, n in list(errors.items())[:15]:
            lines.append(f"  {n:>8}  {kind}")
    lines.append("=" * 64)
    return "\n".join(lines)


def print_summary(s: Mapping[str, Any], out: TextIO | None = None) -> None:
    (out or sys.stdout).write(summary_table(s) + "\n")
