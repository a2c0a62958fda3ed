"""fab run's live view: last-interval rates and percentiles from cumulative status files, and how
they are drawn (plain lines off a terminal, a table redrawn in place on one)."""

from __future__ import annotations

import io
import re

import pytest

from kit.metrics import Histogram
from kit.run._live import PlainView, RichView, live_view, render_live
from kit.run._summary import aggregate_status, format_live_line


def _status(
    t: float,
    values_us: list[int],
    *,
    q: int,
    tokens: int,
    errors: int = 0,
    active: int = 5,
    elapsed: float | None = None,
    delivery_us: list[int] = (),
) -> dict:
    h, d = Histogram("us"), Histogram("us")
    h.record_many(values_us)
    d.record_many(delivery_us)
    return {
        "time": t,
        "elapsed_s": elapsed,
        "active_sessions": active,
        "queries_ok": q,
        "tokens": tokens,
        "errors": errors,
        "reconnect_attempts": 0,
        "cpu_percent": 42.0,
        "loop_lag_p99_ms": 3.25,
        "done": False,
        "latency_histogram": h.to_dict(),
        "delivery_histogram": d.to_dict(),
    }


def test_delivery_p99_is_of_the_last_interval_merged_over_generators():
    fast, slow = [5_000] * 1000, [900_000] * 30  # 5 ms tokens, then a stall: 900 ms tokens
    first = aggregate_status(
        {
            "a": _status(10.0, [], q=0, tokens=1000, elapsed=10.0, delivery_us=fast),
            "b": _status(10.0, [], q=0, tokens=1000, elapsed=10.0, delivery_us=fast),
        },
        None,
        10.0,
    )
    assert first["delivery_p99_ms"] == pytest.approx(5.0)
    now = aggregate_status(
        {
            "a": _status(11.0, [], q=0, tokens=1100, delivery_us=fast + [5_000] * 70 + slow),
            "b": _status(11.0, [], q=0, tokens=1100, delivery_us=fast + [5_000] * 100),
        },
        first,
        11.0,
    )
    # the last second: 170 fast and 30 slow tokens over both generators; p99 is the stall's 900 ms
    assert now["delivery_p99_ms"] == pytest.approx(900, rel=1e-3)


def test_percentiles_and_rates_are_of_the_last_interval_not_since_the_start():
    slow = [2_000_000] * 100  # the first 10 s: 100 queries of 2 s
    a1 = _status(110.0, slow, q=100, tokens=1000, elapsed=10.0)
    first = aggregate_status({"a": a1}, None, 110.2)
    # the first sighting's interval runs from the generator's start
    assert first["p50_ms"] == pytest.approx(2000) and first["qps"] == pytest.approx(10.0)
    a2 = _status(112.0, slow + [10_000] * 20, q=120, tokens=1400, errors=3, elapsed=12.0)
    now = aggregate_status({"a": a2}, first, 112.3)
    # cumulative p50 would still say 2 s; the last 2 s only had 10 ms queries
    assert now["p50_ms"] == pytest.approx(10, rel=1e-3) and now["p99_ms"] == pytest.approx(10, rel=1e-3)
    assert now["interval_queries"] == 20
    assert now["qps"] == pytest.approx(10.0) and now["tps"] == pytest.approx(200.0)
    assert now["errors_per_s"] == pytest.approx(1.5)
    assert now["errors"] == 3 and now["queries_ok"] == 120  # totals stay totals


def test_rates_add_over_generators_each_timed_by_its_own_snapshots():
    a1, b1 = _status(100.0, [1000], q=10, tokens=100), _status(100.5, [1000], q=10, tokens=100)
    prev = aggregate_status({"a": a1, "b": b1}, None, 101.0)
    assert prev["qps"] is None  # no elapsed_s, no previous snapshot: no rate yet
    a2 = _status(101.0, [1000] * 3, q=12, tokens=140)  # +2 q, +40 tok in 1 s
    b2 = _status(102.5, [1000] * 5, q=18, tokens=300)  # +8 q, +200 tok in 2 s
    now = aggregate_status({"a": a2, "b": b2}, prev, 103.0)
    assert now["qps"] == pytest.approx(2 + 4) and now["tps"] == pytest.approx(40 + 100)
    assert now["per_generator"]["b"]["tps"] == pytest.approx(100)
    assert now["interval_queries"] == 2 + 4


def test_a_status_not_rewritten_since_the_last_poll_keeps_its_last_interval():
    a1 = _status(100.0, [1000] * 10, q=10, tokens=100)
    a2 = _status(101.0, [1000] * 10 + [50_000] * 10, q=20, tokens=300)
    agg = aggregate_status({"a": a2}, aggregate_status({"a": a1}, None, 100.1), 101.1)
    again = aggregate_status({"a": dict(a2)}, agg, 102.1)  # the poll read the same file again
    assert again["tps"] == pytest.approx(200) and again["p50_ms"] == pytest.approx(50, rel=1e-3)


def test_a_restarted_generator_gives_no_latency_for_the_interval_rather_than_a_wrong_one():
    a1 = _status(100.0, [1000] * 10, q=10, tokens=100)
    a2 = _status(101.0, [7000], q=1, tokens=5)  # its histogram lost values: not a later state
    agg = aggregate_status({"a": a2}, aggregate_status({"a": a1}, None, 100.1), 101.1)
    assert agg["p50_ms"] is None and agg["interval_queries"] == 0
    assert agg["tps"] == 0.0  # counters never go negative


def _fake_agg() -> dict:
    a1 = _status(100.0, [1000] * 10, q=10, tokens=100)
    a2 = _status(101.0, [1000] * 10 + [12_500] * 50 + [480_000], q=61, tokens=2345, errors=2, active=17)
    agg = aggregate_status({"g1-0": a2, "g2-0": None}, aggregate_status({"g1-0": a1, "g2-0": None}, None, 100), 101)
    return agg


def _plain(renderable) -> str:
    from rich.console import Console

    buf = io.StringIO()
    Console(file=buf, width=140, color_system=None).print(renderable)
    return buf.getvalue()


def test_the_live_table_shows_interval_figures_and_one_row_per_generator():
    text = _plain(render_live(_fake_agg(), 12.4))
    assert "t=12s" in text and "generators reporting 1/2" in text
    for col in (
        "tokens/s",
        "queries/s",
        "p50 ms",
        "p99 ms",
        "active",
        "errors",
        "reconnects",
        "CPU %",
        "loop lag p99 ms",
    ):
        assert col in text, col
    row = next(line for line in text.splitlines() if "2,245" in line)  # tokens/s of the last second
    assert re.search(r"51\.0\b", row) and "12.5" in row and "480.0" in row and "17" in row and "(+2.0/s)" in row
    gen = next(line for line in text.splitlines() if "g1-0" in line)
    assert "42" in gen and "3.2" in gen and "running" in gen
    assert "no status yet" in next(line for line in text.splitlines() if "g2-0" in line)
    assert "last interval (51 queries)" in text


def test_the_plain_line_carries_the_interval_percentiles():
    lines: list[str] = []
    PlainView(lines.append).show(_fake_agg(), 7)
    assert lines == ["  " + format_live_line(_fake_agg(), 7)]
    assert lines[0].lstrip().startswith("t=   7s active=17 qps=51.0 tok/s=2245 p50=12ms p99=480ms delivery_p99=")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_the_table_is_redrawn_in_place_and_lines_scroll_above_it():
    term = _Terminal()
    view = live_view(term)
    assert isinstance(view, RichView) and isinstance(live_view(io.StringIO()), PlainView)
    view.out("  run x: preflight")
    view.show(_fake_agg(), 1)
    first = len(term.getvalue())
    view.out("  chaos: kill:wsproxy@2s")
    view.show(_fake_agg(), 2)
    view.close()
    out = term.getvalue()
    later = out[first:]
    # rich moves the cursor up over the previous table and erases it before drawing the new one
    assert "\x1b[1A" in later and "\x1b[2K" in later
    assert later.index("chaos: kill:wsproxy@2s") < later.index("t=2s")
    assert out.rindex("t=1s") < out.index("t=2s")
    assert out.endswith("\x1b[?25h")  # closed: the cursor is back, the last table stays on screen


def test_a_hosts_status_merges_every_live_histogram_of_its_processes_exactly():
    """Two generator processes on one host: the host's status.json carries delivery and TTFT merged too
    (the live delivery p99, --metrics-listen and --abort-on-fail read them), and failed sessions add up."""
    from kit.client._load import merge_status

    def proc(delivery_us, ttft_us, failed):
        d, f = Histogram("us"), Histogram("us")
        d.record_many(delivery_us)
        f.record_many(ttft_us)
        return {
            "sessions_failed": failed,
            "delivery_histogram": d.to_dict(),
            "ttft_histogram": f.to_dict(),
            "latency_histogram": Histogram("us").to_dict(),
            "elapsed_s": 1.0,
            "done": False,
        }

    host = merge_status([proc([4_000] * 99, [10_000], 1), proc([800_000] * 3, [90_000], 2)], run_id="r", expected=2)
    assert host["sessions_failed"] == 3
    merged = Histogram.from_dict(host["delivery_histogram"])
    assert merged.count == 102 and merged.percentile(99) == pytest.approx(800_000, rel=1e-3)
    assert Histogram.from_dict(host["ttft_histogram"]).count == 2
