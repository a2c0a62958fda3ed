"""A run's readable report: ``report.txt`` (the console summary) and a self-contained ``report.html``.

:func:`write_report` reads what ``fab run`` left in ``results/<run-id>/``
(``summary.json`` with its ``run`` record, ``preflight.json``,
``timeline.csv``, ``hosts/<host>/host.jsonl``) and writes both files; it
returns the text.  Pure formatting otherwise: no network, no processes.
Missing pieces are shown as missing, never invented.

report.html holds the summary text, the workload and latency tables, the charts (``kit._charts``: every
time chart on the run's one time axis, with linked cursors and the chaos and balancer events marked),
the cost table (once: the page's summary text points to it), the hosts, and the raw run record folded
in a closed ``<details>``.

The cost table (``summary["components"]``, ``summary["bottleneck"]``) shows
what each kit component spent per host; when the bottleneck is the kit's own
client or simulator the text says so on a line starting ``WARNING:``.

Each threshold check is a ``Threshold`` line marked ``(default)`` when it was one of
``kit.run._plan.DEFAULT_THRESHOLDS``; :func:`failed_threshold_lines` is what ``fab run`` prints last
when one failed.
"""

from __future__ import annotations

import csv
import html
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kit._charts import assets_html, charts_html, load_run, run_chart_specs

__all__ = [
    "kit_measured_itself",
    "write_report",
    "render_text",
    "render_html",
    "host_metrics",
    "component_rows",
    "bottleneck_line",
    "idle_line",
    "component_totals",
    "event_lines",
    "server_event_lines",
    "workload_lines",
    "format_actual",
    "failed_threshold_lines",
    "reconnect_waits",
]

#: the cost table's columns: (heading, entry key, format)
COMPONENT_COLUMNS = (
    ("component", "component", "{}"),
    ("host", "host", "{}"),
    ("CPU-s", "cpu_s", "{:.2f}"),
    ("share", "cpu_share", "{:.1%}"),
    ("us/token", "us_per_token", "{:.1f}"),
    ("peak cores", "peak_cores", "{:.2f}"),
    ("RSS peak MB", "rss_peak_mb", "{:.1f}"),
    ("sessions", "sessions_peak", "{:,}"),
    ("KB/session", "rss_per_session_kb", "{:.1f}"),
)
SELF_MEASURED_NOTE = "the kit measured itself, not the system under test"

log = logging.getLogger(__name__)


def _load(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def host_metrics(run_dir: Path) -> dict[str, dict[str, Any]]:
    """Per host: samples, CPU mean/peak, memory peak, network bytes/s peak (from hostmon JSONL)."""
    out: dict[str, dict[str, Any]] = {}
    for f in sorted((run_dir / "hosts").glob("*/host.jsonl")):
        rows = []
        for line in f.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
        cpu = [r["cpu_percent"] for r in rows]

        def rate(r: dict, loopback: bool) -> float:
            return sum(
                n.get("rx_bytes_per_s", 0) + n.get("tx_bytes_per_s", 0)
                for k, n in r["net"].items()
                if (k == "lo") == loopback
            )

        net = [rate(r, False) for r in rows]
        # a single-host deployment talks over loopback only: report that rather than a misleading 0
        on_loopback = not any(net) and any(rate(r, True) for r in rows)
        if on_loopback:
            net = [rate(r, True) for r in rows]
        out[f.parent.name] = {
            "samples": len(rows),
            "cpu_mean": round(sum(cpu) / len(cpu), 1) if cpu else None,
            "cpu_peak": max(cpu, default=None),
            "mem_used_peak_mb": round(max((r["mem"]["used"] for r in rows), default=0) / 2**20, 1) if rows else None,
            "net_peak_mbit_s": round(max(net, default=0) * 8 / 1e6, 2) if rows else None,
            "net_interfaces": "loopback" if on_loopback else "non-loopback",
            "cpu_series": cpu,
            # what the host's monitor itself used while it sampled (hostmon's monitor_cpu_s; older runs: None)
            "monitor_cpu_s": _grew([r.get("monitor_cpu_s") for r in rows]),
            # the mean of hostmon's cpu_split (user, system, softirq, iowait, steal ... percent); older runs: {}
            "cpu_split_mean": _means([r["cpu_split"] for r in rows if isinstance(r.get("cpu_split"), dict)]),
        }
    return out


def _grew(values: list[Any]) -> float | None:
    """Last minus first of a cumulative counter's samples that have it, None when none has."""
    have = [v for v in values if isinstance(v, (int, float))]
    return round(have[-1] - have[0], 2) if have else None


def _means(rows: list[dict[str, float]]) -> dict[str, float]:
    keys = {k for r in rows for k in r}
    return {k: round(sum(r.get(k, 0.0) for r in rows) / len(rows), 1) for k in sorted(keys)}


def _f(v: Any, fmt: str = "{:.2f}") -> str:
    if v is None:
        return "-"
    if isinstance(v, int) and not isinstance(v, bool) and fmt.endswith("f}"):
        return str(v)  # a count: 300, not 300.00
    return fmt.format(v) if isinstance(v, (int, float)) else str(v)


def component_rows(summary: dict[str, Any]) -> list[list[str]]:
    """The cost table's cells, one row per (component, host)."""
    return [[_f(e.get(key), fmt) for _, key, fmt in COMPONENT_COLUMNS] for e in summary.get("components") or []]


def component_totals(summary: Mapping[str, Any], field: str) -> dict[str, float]:
    """component -> its *field* in summary.json's ``components``, added over its hosts (a component whose
    entries have no number there is left out)."""
    out: dict[str, float] = {}
    for e in summary.get("components") or []:
        v = e.get(field)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[e["component"]] = out.get(e["component"], 0.0) + v
    return out


def idle_line(summary: dict[str, Any]) -> str | None:
    """What each component cost per connected, silent session (summary.json's ``idle_window`` and the
    components' ``idle_us_per_session_s``, added over hosts) and per token beyond it; None without a window."""
    w = summary.get("idle_window")
    if not w:
        return None
    idle = component_totals(summary, "idle_us_per_session_s")
    net = component_totals(summary, "us_per_token_net")
    head = f"{w['seconds']:g} s with {w['sessions']:,.0f} sessions connected and no token"
    if not idle:
        return head + ": no monitor sample inside it"
    return (
        f"{head}: per session {', '.join(f'{c} {v:.2f}' for c, v in idle.items())} us/s; "
        f"per token beyond that {', '.join(f'{c} {v:.1f}' for c, v in net.items())} us"
    )


def kit_measured_itself(summary: dict[str, Any]) -> bool:
    """True when the kit's own client or simulator, not the system under test, limited the run: the
    bottleneck is one of them and it was saturated, or a generator flagged itself overloaded."""
    b = summary.get("bottleneck") or {}
    if b.get("component") in ("client", "sim") and b.get("saturated", True):
        return True
    return bool((summary.get("generator") or {}).get("generator_overloaded"))


def _limit_of(summary: dict[str, Any]) -> str:
    b = summary.get("bottleneck") or {}
    if b.get("component") in ("client", "sim") and b.get("saturated", True):
        return str(b["component"])
    return "generator (overloaded)"


def bottleneck_line(summary: dict[str, Any]) -> str | None:
    b = summary.get("bottleneck")
    if not b:
        return None
    if b.get("resource") == "host_cpu":
        return (
            f"the CPU of {b['host']}: its busiest second {_f(b.get('host_cpu_peak_percent'), '{:.0f}')}% busy, "
            f"shared by {', '.join(b.get('shared_by') or [])}; the biggest consumer is {b['component']}"
        )
    return (
        f"{b['component']} on {b['host']}: busiest second {_f(b.get('peak_cores'))} of "
        f"{_f(b.get('usable_cores'), '{}')} usable cores ({_f(b.get('ratio'), '{:.0%}')})"
        + ("" if b.get("saturated", True) else ": not saturated, the run had headroom")
    )


#: seconds of applying a fault past which the report says when it was planned
APPLY_NOTE_S = 0.5


def event_lines(summary: dict[str, Any]) -> list[str]:
    """One line per ``--chaos`` fault: when, where, whether it worked, recovery and what it cost."""
    out = []
    for ev in summary.get("events") or []:
        where = ev.get("host", "?") + (f":{ev['program']}" if ev.get("program") else "")
        head = f"Event         {ev.get('action')} {where} at {_f(ev.get('at_s'), '{:.1f}')} s" + (
            f" for {_f(ev.get('for_s'), '{:.1f}')} s" if ev.get("for_s") else ""
        )
        if (ev.get("apply_s") or 0) >= APPLY_NOTE_S:  # a loaded host: the fault came later than planned
            head += f" (planned {_f(ev.get('planned_at_s'), '{:g}')} s, applying took {ev['apply_s']:.1f} s)"
        if not ev.get("ok"):
            out.append(f"{head}  FAILED: {ev.get('detail', '')}")
            continue
        rec = ev.get("recovery") or {}
        parts = [
            f"{name} {_f((rec.get(key) or {}).get('recovery_s'), '{:.0f}')} s"
            for key, name in (("tokens", "tokens/s"), ("delivery_p99", "delivery p99"))
            if key in rec
        ]
        recovered = (
            f"recovered in {_f(ev.get('recovery_s'), '{:.0f}')} s" + (f" ({', '.join(parts)})" if parts else "")
            if ev.get("recovery_s") is not None
            else f"recovery unknown ({rec.get('note', 'no timeline')})"
        )
        out.append(
            f"{head}  {recovered}; lost {ev.get('tokens_lost', 0)} tokens, "
            f"{ev.get('reconnect_attempts', 0)} reconnect attempts, {ev.get('queries_failed', 0)} failed queries"
        )
    return out


#: server events report.txt lists one per line; the rest are in summary.json
MAX_SERVER_EVENT_LINES = 20


def server_event_lines(summary: dict[str, Any]) -> list[str]:
    """One line per balancer decision (``summary["server_events"]``), the first :data:`MAX_SERVER_EVENT_LINES`."""
    evs = summary.get("server_events") or []
    out = []
    for ev in evs[:MAX_SERVER_EVENT_LINES]:
        what = (
            f"{ev['backend']}/{ev['server']} {ev['state']}" if ev.get("server") else f"{ev['backend']}: no server left"
        )
        detail = ", ".join(
            x
            for x in (
                ev.get("reason"),
                f"check {ev['check_ms']} ms" if ev.get("check_ms") is not None else "",
                f"{ev['sessions']:,} sessions" if ev.get("sessions") else "",
            )
            if x
        )
        out.append(
            f"Server event  {_f(ev.get('at_s'), '{:.1f}')} s {ev.get('balancer')}: {what}"
            + (f" ({detail})" if detail else "")
        )
    if len(evs) > MAX_SERVER_EVENT_LINES:
        out.append(f"Server event  ... {len(evs) - MAX_SERVER_EVENT_LINES} more in summary.json (server_events)")
    return out


def reconnect_waits(summary: dict[str, Any]) -> str:
    """What held reconnects back, apart: the sessions' backoff and the generators' rate limit."""
    lim = summary.get("reconnect_limit")
    if not lim:
        return ""
    rate = lim.get("rate_per_process")
    limit = (
        "no rate limit"
        if not rate
        else f"{rate:g}/s per process, burst {lim.get('burst')}"
        if isinstance(rate, (int, float))
        else f"{rate}/s per process"
    )
    return (
        f"; waited {_f(summary.get('reconnect_backoff_wait_s'), '{:.1f}')} s in backoff, "
        f"{summary.get('reconnect_bucket_waits', 0)} attempts {_f(summary.get('reconnect_bucket_wait_s'), '{:.1f}')} s "
        f"for the rate limit ({limit})"
    )


def format_actual(check: dict[str, Any]) -> str:
    """A check's actual value as its threshold is written: ``0.03%``, ``1234 ms``, ``5``, ``300/s``."""
    v = check.get("actual")
    if v is None:
        return "no value (the run measured none)"
    unit = check.get("unit")
    if unit == "fraction":
        return f"{v * 100:.4g}%"
    if unit == "s":
        return f"{v * 1000:.4g} ms"
    return f"{v:.6g}{unit or ''}"


def failed_threshold_lines(checks: list[dict[str, Any]]) -> list[str]:
    """One line per failed check: ``FAILED threshold success>=99% (default): actual 0.03%``."""
    return [
        f"FAILED threshold {c['threshold']}{' (default)' if c.get('default') else ''}: actual {format_actual(c)}"
        for c in checks
        if not c["passed"]
    ]


#: the workload's columns (report.html): (heading, effective key, format)
WORKLOAD_COLUMNS = (
    ("tokens", "tokens", "{}"),
    ("token delay ms", "token_delay_ms", "{:g}"),
    ("TTFT ms", "ttft_ms", "{:g}"),
    ("jitter ms", "token_jitter_ms", "{:g}"),
    ("think s", "think_time_s", "{:g}"),
    ("query timeout s", "query_timeout_s", "{:g}"),
    ("queries", "queries", "{}"),
)


def workload_lines(summary: dict[str, Any]) -> list[str]:
    """One line per workload class: its share, sessions and the effective workload it ran."""
    w = summary.get("workload") or {}
    out = []
    for name, c in (w.get("classes") or {}).items():
        e = c.get("effective") or {}
        share = f" ({_f(c.get('share'), '{:.0%}')} by weight)" if len(w["classes"]) > 1 else ""
        out.append(
            f"Workload      {name}{share}: {c.get('sessions', 0)} sessions, {_f(e.get('tokens'), '{}')} tokens "
            f"every {_f(e.get('token_delay_ms'), '{:g}')} ms after a TTFT of {_f(e.get('ttft_ms'), '{:g}')} ms "
            f"(jitter {_f(e.get('token_jitter_ms'), '{:g}')} ms), {_f(e.get('queries'), '{}')} queries, think "
            f"{_f(e.get('think_time_s'), '{:g}')} s"
            + ("" if c.get("simulator_answered", True) else "  (no /run answered: the simulator's values unknown)")
        )
    if w.get("source"):
        out.append(f"Workload file {w['source']} (seed {w.get('seed')})")
    return out


#: a stage's figures as report.txt and report.html show them: (header, summary.json key, format)
STAGE_COLUMNS = (
    ("stage", "index", "{}"),
    ("from s", "start_s", "{:g}"),
    ("to s", "end_s", "{:g}"),
    ("target", "target_to", "{:g}"),
    ("active (mean)", "active_sessions_mean", "{:g}"),
    ("started", "sessions_started", "{}"),
    ("tokens/s", "tokens_per_s", "{:g}"),
    ("errors", "errors", "{}"),
    ("delivery p50", "delivery_p50_ms", "{:.1f}"),
    ("delivery p99", "delivery_p99_ms", "{:.1f}"),
    ("TTFT p99", "ttft_p99_ms", "{:.1f}"),
    ("latency p50", "latency_p50_ms", "{:.1f}"),
    ("latency p99", "latency_p99_ms", "{:.1f}"),
)


def stage_rows(summary: dict[str, Any]) -> list[list[str]]:
    """One row per stage of a staged run (summary.json's ``stages``), its cells as :data:`STAGE_COLUMNS`."""
    return [
        [_f(st.get(k) + 1 if k == "index" and st.get(k) is not None else st.get(k), fmt) for _, k, fmt in STAGE_COLUMNS]
        for st in summary.get("stages") or []
    ]


def plan_lines(summary: dict[str, Any]) -> list[str]:
    """The plan file and tags of the run (``fab run --plan``, ``--tag``)."""
    run, out = summary.get("run") or {}, []
    plan = run.get("plan") or {}
    if plan:
        over = plan.get("overridden") or []
        out.append(
            f"Plan          {plan.get('file')} (copied as {plan.get('copy')}, sha256 {str(plan.get('sha256'))[:12]})"
            + (f"; the command line overrode {', '.join(over)}" if over else "")
        )
    tags = summary.get("tags") or run.get("tags") or {}
    if tags:
        out.append("Tags          " + "  ".join(f"{k}={v}" for k, v in sorted(tags.items())))
    return out


def _table_lines(title: str, columns: Any, rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, (h, _, _) in enumerate(columns)]
    return [
        title,
        "  " + "  ".join(h.ljust(w) for (h, _, _), w in zip(columns, widths)),
        *("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows),
    ]


def render_text(summary: dict[str, Any], hosts: dict[str, dict[str, Any]], *, cpu_table: bool = True) -> str:
    """The console summary (``report.txt``); ``cpu_table=False`` leaves the cost table to a page that shows it."""
    run = summary.get("run", {})
    lat = summary.get("latency_ms", {})
    lines = [
        "=" * 72,
        f"wsproxy-loadkit run {run.get('run_id', summary.get('run_id', '?'))}"
        + ("   ** PARTIAL **" if summary.get("partial") else "")
        + ("   ** ABORTED **" if run.get("aborted") else ""),
        "=" * 72,
        f"Sessions      {summary.get('total_sessions', 0)} total, {summary.get('successful_sessions', 0)} ok, "
        f"{summary.get('failed_sessions', 0)} failed   success rate {_f(summary.get('success_rate'))}%",
        f"Queries       {summary.get('total_queries', 0)} total, {summary.get('successful_queries', 0)} ok, "
        f"{summary.get('failed_queries', 0)} failed",
        f"Tokens        {summary.get('total_tokens', 0)}   lost {summary.get('lost_tokens', 0)}"
        + (f"   cancelled {summary['cancelled_tokens']}" if summary.get("cancelled_tokens") else "")
        + "   duplicated "
        f"{summary.get('duplicated_tokens', 0)}   out of order {summary.get('out_of_order_tokens', 0)}",
        f"Throughput    QPS {_f(summary.get('qps'))}   TPS {_f(summary.get('tps'))}   duration "
        f"{_f(summary.get('duration_s'))} s",
        f"Latency (ms)  p50 {_f(lat.get('p50'))}  p95 {_f(lat.get('p95'))}  p99 {_f(lat.get('p99'))}  "
        f"min {_f(lat.get('min'))}  max {_f(lat.get('max'))}  avg {_f(lat.get('avg'))}",
        f"TTFT (ms)     p50 {_f(summary.get('ttft_ms', {}).get('p50'))}  p99 {_f(summary.get('ttft_ms', {}).get('p99'))}"
        f"   inter-token p99 {_f(summary.get('inter_token_ms', {}).get('p99'))}   delivery p99 "
        f"{_f(summary.get('delivery_latency_ms', {}).get('p99'))}",
        f"Create/connect avg {_f(summary.get('avg_create_ms'))} / {_f(summary.get('avg_connect_ms'))} ms",
        f"Connect (ms)  p50 TCP {_f((summary.get('connect_tcp_ms') or {}).get('p50'))}  TLS "
        f"{_f((summary.get('connect_tls_ms') or {}).get('p50'))}  upgrade "
        f"{_f((summary.get('connect_upgrade_ms') or {}).get('p50'))}   p99 TLS "
        f"{_f((summary.get('connect_tls_ms') or {}).get('p99'))}",
        f"Reconnects    {summary.get('total_reconnect_attempts', 0)} attempts, "
        f"{summary.get('total_successful_reconnects', 0)} ok, {summary.get('sessions_with_reconnects', 0)} sessions"
        + reconnect_waits(summary),
    ]
    lines += workload_lines(summary)
    lines += plan_lines(summary)
    stages = stage_rows(summary)
    if stages:
        lines += _table_lines("Stages (ms: delivery, TTFT and latency per stage)", STAGE_COLUMNS, stages)
    gen = summary.get("generator", {})
    if gen:
        lines.append(
            f"Generators    {gen.get('processes', 0)} processes on {', '.join(gen.get('hosts', []))}; "
            f"CPU peak {_f(gen.get('cpu_percent_peak'), '{:.0f}')}%, loop lag p99 "
            f"{_f(gen.get('loop_lag_p99_ms'))} ms"
            + ("  ** OVERLOADED: " + gen.get("reason", "") + " **" if gen.get("generator_overloaded") else "")
        )
    if run:
        skew = run.get("start_skew_s", {})
        clock = run.get("clock", {})
        lines.append(
            f"Start skew    spread {_f(skew.get('spread'), '{:.4f}')} s   clocks worst offset "
            f"{_f((clock.get('worst_s') or 0) * 1000, '{:.2f}')} ms (bound "
            f"{_f((clock.get('bound_s') or 0) * 1000, '{:.1f}')} ms){'' if clock.get('ok', True) else ' ** ' + clock.get('note', '') + ' **'}"
        )
    if summary.get("errors"):
        lines.append("Errors        " + ", ".join(f"{k}: {v}" for k, v in list(summary["errors"].items())[:8]))
    socks = summary.get("hosts_sockets") or {}
    if hosts:
        lines.append(
            "Hosts         "
            + "; ".join(
                f"{h} cpu {_f(m['cpu_mean'], '{:.0f}')}/{_f(m['cpu_peak'], '{:.0f}')}% net {_f(m['net_peak_mbit_s'])} Mbit/s"
                + (" (loopback)" if m.get("net_interfaces") == "loopback" else "")
                + (
                    f" (system {m['cpu_split_mean'].get('system', 0):g}% softirq {m['cpu_split_mean'].get('softirq', 0):g}%"
                    f" steal {m['cpu_split_mean'].get('steal', 0):g}%)"
                    if m.get("cpu_split_mean")
                    else ""
                )
                + (f" monitor {m['monitor_cpu_s']:g} CPU-s" if m.get("monitor_cpu_s") is not None else "")
                + (f" tcp {socks[h]['tcp_inuse']:,} sockets {socks[h]['tcp_mem_mb']:g} MB" if h in socks else "")
                for h, m in hosts.items()
            )
        )
    if summary.get("ramp_s") is not None:
        lines.append(f"Ramp          {summary['ramp_s']:g} s to 99 % of the peak active sessions")
    rows = component_rows(summary)
    if rows and not cpu_table:
        lines.append("CPU per component: the table below")
    elif rows:
        lines += _table_lines("CPU per component", COMPONENT_COLUMNS, rows)
    idle = idle_line(summary)
    if idle:
        lines.append(f"Idle          {idle}")
    lines += [f"Balancer      {v}" for v in summary.get("balancer_verdict") or []]
    neck = bottleneck_line(summary)
    if neck:
        lines.append(f"Bottleneck    {neck}")
        if kit_measured_itself(summary):
            lines.append(f"WARNING: the kit's {_limit_of(summary)} limited this run: {SELF_MEASURED_NOTE}")
    for p in run.get("component_problems", []):
        lines.append(f"Components    {p}")
    for t in run.get("thresholds", []):
        name = t["threshold"] + (" (default)" if t.get("default") else "")
        lines.append(f"Threshold     {name:<30} actual {format_actual(t):<12} {'PASS' if t['passed'] else 'FAIL'}")
    lines += event_lines(summary)
    lines += server_event_lines(summary)
    if run.get("aborted"):
        a = run["aborted"]
        lines.append(
            f"Aborted       at {a['at_s']:g} s: threshold {a['threshold']} had failed for good "
            f"(--abort-on-fail, judged after {a.get('grace_s', 0):g} s)"
        )
    for r in run.get("partial_reasons", []):
        lines.append(f"Partial       {r}")
    lines.append("=" * 72)
    return "\n".join(lines) + "\n"


def _svg_series(values: list[float], width: int = 480, height: int = 60) -> str:
    if not values:
        return "<em>no samples</em>"
    top = max(max(values), 1e-9)
    step = width / max(len(values) - 1, 1)
    pts = " ".join(f"{i * step:.1f},{height - v / top * (height - 4) - 2:.1f}" for i, v in enumerate(values))
    return (
        f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}">'
        f'<polyline fill="none" stroke="#2a6" stroke-width="1.5" points="{pts}"/></svg> max {top:.0f}'
    )


def _run_record_html(run: dict[str, Any]) -> str:
    """The raw run record (``run.json`` less the inventory), folded away: it is long and read rarely."""
    record = {k: v for k, v in run.items() if k not in ("inventory",)}
    if not record:
        return ""
    keys = ", ".join(list(record)[:8]) + (", ..." if len(record) > 8 else "")
    return (
        f'<details class="run-record"><summary><b>Run record</b> (run.json, {len(record)} fields: '
        f"{html.escape(keys)})</summary><pre>{html.escape(json.dumps(record, indent=2, default=str))}</pre></details>"
    )


def _stages_html(summary: dict[str, Any]) -> str:
    """The stages table of a staged run, and the plan it ran from (the file's text, folded away)."""
    e, out = html.escape, ""
    rows = stage_rows(summary)
    if rows:
        out += (
            "<h2>Stages</h2><table><tr>"
            + "".join(f"<th>{e(h)}</th>" for h, _, _ in STAGE_COLUMNS)
            + "</tr>"
            + "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows)
            + "</table>"
        )
    plan = (summary.get("run") or {}).get("plan") or {}
    if plan.get("values"):
        out += (
            f'<details class="run-record"><summary><b>Plan</b> {e(str(plan.get("file")))} (the values the run took'
            f"{'; overridden on the command line: ' + e(', '.join(plan['overridden'])) if plan.get('overridden') else ''}"
            f")</summary><pre>{e(json.dumps(plan['values'], indent=2, default=str))}</pre></details>"
        )
    return out


def render_html(
    summary: dict[str, Any],
    hosts: dict[str, dict[str, Any]],
    timeline: list[dict[str, str]],
    text: str,
    chart_html: str = "",
) -> str:
    """The page; *chart_html* (``kit._charts``: assets and charts) replaces the sparkline timeline when given."""
    e = html.escape
    rows = []
    for name in (
        "latency_ms",
        "service_latency_ms",
        "ttft_ms",
        "inter_token_ms",
        "delivery_latency_ms",
        "create_ms",
        "connect_ms",
        "connect_tcp_ms",
        "connect_tls_ms",
        "connect_upgrade_ms",
    ):
        h = summary.get(name) or {}
        rows.append(
            "<tr><th>"
            + e(name)
            + "</th>"
            + "".join(
                f"<td>{_f(h.get(k))}</td>" for k in ("count", "p50", "p90", "p95", "p99", "p99_9", "min", "max", "avg")
            )
            + "</tr>"
        )
    host_rows = "".join(
        f"<tr><th>{e(h)}</th><td>{m['samples']}</td><td>{_f(m['cpu_mean'], '{:.0f}')}</td>"
        f"<td>{_f(m['cpu_peak'], '{:.0f}')}</td><td>{_f(m['mem_used_peak_mb'])}</td><td>{_f(m['net_peak_mbit_s'])}</td>"
        f"<td>{_svg_series(m['cpu_series'], 240, 30)}</td></tr>"
        for h, m in hosts.items()
    )

    def series(field: str) -> list[float]:
        out = []
        for r in timeline:
            try:
                out.append(float(r.get(field) or 0))
            except ValueError:
                out.append(0.0)
        return out

    charts = "".join(
        f"<h3>{e(f)}</h3>{_svg_series(series(f))}"
        for f in ("active_sessions", "queries_done", "tokens", "errors", "reconnect_attempts")
        if timeline and f in timeline[0]
    )
    run = summary.get("run", {})
    wl = (summary.get("workload") or {}).get("classes") or {}
    workload = (
        (
            "<table><tr><th>class</th><th>weight</th><th>sessions</th>"
            + "".join(f"<th>{e(h)}</th>" for h, _, _ in WORKLOAD_COLUMNS)
            + "</tr>"
            + "".join(
                f"<tr><th>{e(n)}</th><td>{_f(c.get('weight'), '{:g}')}</td><td>{_f(c.get('sessions'), '{}')}</td>"
                + "".join(f"<td>{e(_f((c.get('effective') or {}).get(k), fmt))}</td>" for _, k, fmt in WORKLOAD_COLUMNS)
                + "</tr>"
                for n, c in wl.items()
            )
            + "</table>"
        )
        if wl
        else "<em>not recorded</em>"
    )
    comp_rows = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in component_rows(summary))
    neck = bottleneck_line(summary)
    idle = idle_line(summary)
    components = (
        (
            "<table><tr>" + "".join(f"<th>{e(h)}</th>" for h, _, _ in COMPONENT_COLUMNS) + f"</tr>{comp_rows}</table>"
            if comp_rows
            else "<em>no per-process CPU samples</em>"
        )
        + (f"<p>Idle: {e(idle)}</p>" if idle else "")
        + (f"<p>Bottleneck: {e(neck)}</p>" if neck else "")
        + (
            f'<p class="partial">WARNING: the kit\'s {e(_limit_of(summary))} limited this run: {e(SELF_MEASURED_NOTE)}</p>'
            if kit_measured_itself(summary)
            else ""
        )
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>wsproxy-loadkit {e(str(run.get("run_id", "")))}</title>
{assets_html() if chart_html else ""}
<style>body{{font-family:sans-serif;margin:2em;max-width:70em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:2px 8px;text-align:right}} pre{{background:#f6f6f6;padding:1em}}
.partial{{color:#b00;font-weight:bold}} details.run-record summary{{cursor:pointer;font-size:110%;margin:1em 0}}</style>
</head><body>
<h1>Run {e(str(run.get("run_id", "")))}</h1>
{'<p class="partial">PARTIAL RUN: ' + e("; ".join(run.get("partial_reasons", []))) + "</p>" if summary.get("partial") else ""}
{'<p class="partial">ABORTED at ' + e(f"{run['aborted']['at_s']:g}") + " s: threshold " + e(run["aborted"]["threshold"]) + " had failed (--abort-on-fail)</p>" if run.get("aborted") else ""}
<h2>Summary</h2><pre>{e(text)}</pre>
<h2>Workload</h2>{workload}
{_stages_html(summary)}
<h2>Latency histograms (ms)</h2>
<table><tr><th></th><th>count</th><th>p50</th><th>p90</th><th>p95</th><th>p99</th><th>p99.9</th><th>min</th>
<th>max</th><th>avg</th></tr>{"".join(rows)}</table>
<h2>{"Charts" if chart_html else "Timeline (per second)"}</h2>{chart_html or charts or "<em>no timeline</em>"}
<h2>CPU per component</h2>{components}
<h2>Hosts</h2><table><tr><th>host</th><th>samples</th><th>CPU mean %</th><th>CPU peak %</th><th>mem peak MB</th>
<th>net peak Mbit/s</th><th>CPU</th></tr>{host_rows}</table>
{_run_record_html(run)}
</body></html>
"""  # noqa: E501 (the page as written out: one element per line)


def write_report(run_dir: Path) -> str:
    """Write ``report.txt`` and ``report.html`` into *run_dir*; return the text."""
    summary = _load(run_dir / "summary.json") or {}
    hosts = host_metrics(run_dir)
    timeline: list[dict[str, str]] = []
    if (run_dir / "timeline.csv").exists():
        with open(run_dir / "timeline.csv", newline="") as fh:
            timeline = list(csv.DictReader(fh))
    text = render_text(summary, hosts)
    (run_dir / "report.txt").write_text(text)
    page_text = render_text(summary, hosts, cpu_table=False)  # the page shows the cost table once, as a table
    try:
        chart_html = charts_html(run_chart_specs(load_run(run_dir, summary)))
    except (OSError, ValueError, KeyError, TypeError) as exc:  # a damaged file costs the charts, not the report
        log.warning("report charts of %s: %s", run_dir, exc)
        chart_html = ""
    (run_dir / "report.html").write_text(render_html(summary, hosts, timeline, page_text, chart_html))
    return text
