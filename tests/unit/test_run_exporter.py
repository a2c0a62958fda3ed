"""``fab run --metrics-listen``: the live merged figures served over real HTTP in the exposition format,
read back with prometheus_client's own parser."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from kit.metrics import Histogram
from kit.run._exporter import LiveExporter, parse_listen
from kit.run._summary import aggregate_status


def _status(t: float, *, tokens: int, active: int, delivery_us: list[int], ttft_us: list[int]) -> dict:
    d, f = Histogram("us"), Histogram("us")
    d.record_many(delivery_us)
    f.record_many(ttft_us)
    return {
        "time": t,
        "elapsed_s": 10.0,
        "active_sessions": active,
        "queries_ok": 3,
        "tokens": tokens,
        "errors": 1,
        "lost_tokens": 0,
        "reconnect_attempts": 2,
        "cpu_percent": 40.0,
        "loop_lag_p99_ms": 2.5,
        "done": False,
        "latency_histogram": Histogram("us").to_dict(),
        "delivery_histogram": d.to_dict(),
        "ttft_histogram": f.to_dict(),
    }


def _scrape(ex: LiveExporter) -> dict[str, dict[tuple, float]]:
    host, port = ex.address
    r = httpx.get(f"http://{host}:{port}/metrics", timeout=5)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=0.0.4")
    out: dict[str, dict[tuple, float]] = {}
    for fam in text_string_to_metric_families(r.text):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def test_the_live_merge_is_served_per_generator_and_in_total():
    ex = LiveExporter("127.0.0.1:0", "run-x", "inventory/lab.yml")
    try:
        before = _scrape(ex)
        assert before["loadkit_run_info"] == {(("inventory", "inventory/lab.yml"), ("run_id", "run-x")): 1.0}
        assert "loadkit_tokens_total" not in before  # nothing merged yet: nothing claimed
        agg = aggregate_status(
            {
                "gen1-0": _status(
                    100.0, tokens=1000, active=60, delivery_us=[4_000] * 99 + [300_000], ttft_us=[50_000]
                ),
                "gen2-0": _status(100.0, tokens=500, active=40, delivery_us=[4_000] * 100, ttft_us=[70_000]),
            },
            None,
            100.0,
        )
        ex.update(agg, 12.5)
        got = _scrape(ex)
    finally:
        ex.close()
    run = (("run_id", "run-x"),)
    assert got["loadkit_tokens_total"][run] == 1500 and got["loadkit_active_sessions"][run] == 100
    assert got["loadkit_errors_total"][run] == 2 and got["loadkit_reconnect_attempts_total"][run] == 4
    assert got["loadkit_run_elapsed_seconds"][run] == 12.5
    # percentiles of the merged interval histograms (200 tokens, the 200th is the 300 ms one)
    assert got["loadkit_delivery_latency_seconds"][(("quantile", "0.5"), *run)] == pytest.approx(0.004, rel=0.01)
    assert got["loadkit_delivery_latency_seconds"][(("quantile", "0.99"), *run)] == pytest.approx(0.004, rel=0.01)
    assert got["loadkit_ttft_seconds"][(("quantile", "0.99"), *run)] == pytest.approx(0.070, rel=0.01)
    per_gen = got["loadkit_generator_active_sessions"]
    assert per_gen == {(("generator", "gen1-0"), *run): 60, (("generator", "gen2-0"), *run): 40}
    assert got["loadkit_generator_loop_lag_seconds"][(("generator", "gen1-0"), *run)] == pytest.approx(0.0025)


def test_the_endpoint_is_gone_when_the_run_ends():
    ex = LiveExporter("127.0.0.1:0", "run-y", "inv.yml")
    host, port = ex.address
    ex.close()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://{host}:{port}/metrics", timeout=2)


@pytest.mark.parametrize("text", ["", "9464", "host:9464", "127.0.0.1:0x10", "127.0.0.1:70000", "[::1:9464"])
def test_a_bad_listen_address_is_one_line_naming_the_shape(text):
    with pytest.raises(ValueError, match=r"--metrics-listen .*: give ADDR:PORT"):
        parse_listen(text)


def test_a_busy_port_is_one_line_not_a_traceback():
    ex = LiveExporter("127.0.0.1:0", "run-z", "inv.yml")
    try:
        with pytest.raises(ValueError, match="cannot listen there"):
            LiveExporter(f"127.0.0.1:{ex.address[1]}", "run-z2", "inv.yml")
    finally:
        ex.close()


def test_ipv6_and_any_address_forms():
    assert parse_listen("[::1]:9464") == ("::1", 9464)
    assert parse_listen(":9464") == ("0.0.0.0", 9464)
