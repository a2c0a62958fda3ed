"""kit._charts: one time axis per page (the run's range, linked cursors) and the log axes' specs."""

from __future__ import annotations

from pathlib import Path

from kit._charts import TIME_SYNC, TIME_X, RunData, compare_chart_specs, run_chart_specs, run_x_range

T0 = 1000.0


def _run(events=(), server_events=(), ended_at=T0 + 9.4) -> RunData:
    timeline = [
        {
            "second": str(int(T0) + i),
            "active_sessions": "5",
            "queries_done": "2",
            "tokens": "100",
            "errors": "0",
            "delivery_p50_ms": "1.0",
            "delivery_p99_ms": "3.0",
            "delivery_max_ms": "4.0",
        }
        for i in range(10)
    ]
    queries = [{"intended_at": f"{T0 + i * 0.5:.3f}", "latency_ms": "200.0", "status": "ok"} for i in range(16)]
    # the host monitor samples before and after the run: its chart still shows the run's range only
    hosts = {"h1": [{"ts": T0 + t, "cpu_percent": 10.0} for t in range(-5, 15)]}
    summary = {
        "run": {"run_id": "r", "start_at": T0},
        "ended_at": ended_at,
        "events": list(events),
        "server_events": list(server_events),
    }
    return RunData(Path("r"), summary, timeline, queries, {}, hosts)


def test_every_time_chart_of_a_report_has_the_runs_range_and_one_cursor_key():
    specs = run_chart_specs(_run())
    timed = [s for s in specs if not s["logx"]]
    assert len(timed) >= 8 and all(s["xlabel"] == TIME_X for s in timed)
    assert all(s["xrange"] == [0.0, 9.4] and s["sync"] == TIME_SYNC for s in timed)
    assert all(s["xrange"] is None and s["sync"] is None for s in specs if s["logx"])


def test_the_run_range_reaches_every_event_and_starts_with_the_bucket_holding_the_start():
    run = _run(
        events=[{"action": "pause", "target": "wsproxy-0", "host": "h1", "at_s": 8.0, "for_s": 4.5}],
        server_events=[{"balancer": "h2", "backend": "wsproxy", "server": "ws-0", "state": "DOWN", "at_s": 13.0}],
    )
    assert run_x_range(run) == (0.0, 13.0)
    run.summary["run"]["start_at"] = T0 + 0.4  # the first timeline second began before the agreed start
    assert run_x_range(run)[0] == -0.4


def test_compare_charts_share_one_time_range_over_every_run():
    long = _run()
    short = _run(ended_at=T0 + 3.0)
    short.timeline = short.timeline[:3]
    specs = compare_chart_specs([("long", long), ("short", short)])
    timed = [s for s in specs if not s["logx"]]
    assert timed and all(s["xrange"] == [0.0, 9.4] and s["sync"] == TIME_SYNC for s in timed)
