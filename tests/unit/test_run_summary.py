"""Thresholds against a merged summary, the live aggregate, the report and secrets stripping (pure)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from kit.inventory import parse_inventory_json
from kit.metrics import Histogram
from kit.report import failed_threshold_lines, render_html, render_text, write_report
from kit.run._pack import pack_run, stripped_inventory
from kit.run._plan import judged_thresholds, parse_threshold
from kit.run._summary import aggregate_status, evaluate_thresholds, format_live_line

SUMMARY = {
    "total_sessions": 500,
    "successful_sessions": 499,
    "failed_sessions": 1,
    "success_rate": 99.8,
    "total_queries": 1500,
    "query_success_rate": 99.9,
    "lost_tokens": 0,
    "total_errors": 1,
    "qps": 40.0,
    "tps": 2000.0,
    "failed_queries": 1,
    "latency_ms": {"count": 1500, "p50": 900.0, "p99": 1900.0, "p99_9": 2500.0, "max": 3000.0},
    "ttft_ms": {"count": 1500, "p99": 120.0},
    "delivery_latency_ms": {"count": 0, "p99": None},
}


@pytest.mark.parametrize(
    "text, passed, actual",
    [
        ("p99<2s", True, 1.9),
        ("p50<=500ms", False, 0.9),
        ("p999<2s", False, 2.5),
        ("success>=99.9%", False, 0.998),
        ("query_success>=99.9%", True, 0.999),
        ("lost==0", True, 0),
        ("errors<=0", False, 1),
        ("tps>=300", True, 2000.0),
        ("ttft_p99<100ms", False, 0.12),
    ],
)
def test_thresholds_are_checked_against_the_merged_summary(text, passed, actual):
    [res] = evaluate_thresholds(SUMMARY, [parse_threshold(text)])
    assert res["passed"] is passed
    assert res["actual"] == pytest.approx(actual)


def test_a_threshold_on_a_histogram_without_samples_fails_rather_than_passes():
    [res] = evaluate_thresholds(SUMMARY, [parse_threshold("delivery_p99<1s")])
    assert res["actual"] is None and res["passed"] is False
    [empty] = evaluate_thresholds({"total_sessions": 0, "success_rate": 0.0}, [parse_threshold("success>=0%")])
    assert empty["passed"] is False


def test_each_check_says_whether_it_was_a_default_and_a_failed_one_is_named_in_one_line():
    collapsed = dict(SUMMARY, total_sessions=20000, successful_sessions=6, success_rate=0.03, lost_tokens=382304)
    checks = evaluate_thresholds(collapsed, judged_thresholds([parse_threshold("p99<1s")]))
    assert [(c["threshold"], c["default"], c["passed"]) for c in checks] == [
        ("p99<1s", False, False),
        ("success>=99%", True, False),
        ("lost==0", True, False),
    ]
    assert failed_threshold_lines(checks) == [
        "FAILED threshold p99<1s: actual 1900 ms",
        "FAILED threshold success>=99% (default): actual 0.03%",
        "FAILED threshold lost==0 (default): actual 382304",
    ]
    assert failed_threshold_lines(evaluate_thresholds(SUMMARY, judged_thresholds([]))) == []  # 99.8 %, none lost
    empty = evaluate_thresholds({"total_sessions": 0}, [parse_threshold("success>=1%")])
    assert failed_threshold_lines(empty) == ["FAILED threshold success>=1%: actual no value (the run measured none)"]


def test_the_report_marks_the_default_thresholds():
    checks = evaluate_thresholds(SUMMARY, judged_thresholds([parse_threshold("success>=99.5%")]))
    text = render_text(dict(SUMMARY, run={"run_id": "r1", "thresholds": checks}), {})
    [own, lost] = [line for line in text.splitlines() if line.startswith("Threshold")]
    assert "success>=99.5%" in own and "(default)" not in own and own.endswith("PASS") and "99.8%" in own
    assert "lost==0 (default)" in lost and lost.endswith("PASS")


def test_the_report_shows_the_reconnect_waits_for_backoff_and_for_the_rate_limit_apart():
    summary = dict(
        SUMMARY,
        total_reconnect_attempts=1000,
        total_successful_reconnects=1000,
        sessions_with_reconnects=1000,
        reconnect_backoff_wait_s=750.2,
        reconnect_bucket_waits=925,
        reconnect_bucket_wait_s=2190.4,
        reconnect_limit={"rate_per_process": 200.0, "burst": 50, "processes": 4, "rate_total": 800.0},
    )
    [line] = [ln for ln in render_text(summary, {}).splitlines() if ln.startswith("Reconnects")]
    assert line.endswith(
        "1000 attempts, 1000 ok, 1000 sessions; waited 750.2 s in backoff, 925 attempts 2190.4 s "
        "for the rate limit (200/s per process, burst 50)"
    )
    [old] = [ln for ln in render_text(SUMMARY, {}).splitlines() if ln.startswith("Reconnects")]
    assert "rate limit" not in old  # results from before the limit: nothing invented


def test_the_report_shows_what_a_silent_session_cost_each_component_added_over_its_hosts():
    def entry(component, host, idle, net):
        return {
            "component": component,
            "host": host,
            "cpu_s": 1.0,
            "idle_us_per_session_s": idle,
            "us_per_token_net": net,
        }

    window = {"from": 1010, "to": 1040, "seconds": 30, "sessions": 10000.0, "session_seconds": 9e5}
    comps = [entry("client", "g1", 2.5, 20.0), entry("client", "g2", 2.25, 21.5), entry("haproxy", "lb", 3.4, 15.0)]
    summary = dict(SUMMARY, idle_window=window, components=comps)
    [line] = [ln for ln in render_text(summary, {}).splitlines() if ln.startswith("Idle")]
    assert line.endswith(
        "30 s with 10,000 sessions connected and no token: per session client 4.75, haproxy 3.40 us/s; "
        "per token beyond that client 41.5, haproxy 15.0 us"
    )
    empty = dict(summary, components=[dict(e, idle_us_per_session_s=None, us_per_token_net=None) for e in comps])
    [line] = [ln for ln in render_text(empty, {}).splitlines() if ln.startswith("Idle")]
    assert line.endswith("no token: no monitor sample inside it")
    assert not [ln for ln in render_text(SUMMARY, {}).splitlines() if ln.startswith("Idle")]  # no window: no line
    page = render_html(summary, {}, [], "")
    assert "<p>Idle: 30 s with 10,000 sessions connected and no token: per session client 4.75" in page
    assert "<p>Idle:" not in render_html(SUMMARY, {}, [], "")


def _status(values_us: list[int], **kw) -> dict:
    h = Histogram("us")
    h.record_many(values_us)
    return {
        "active_sessions": kw.get("active", 0),
        "queries_ok": kw.get("q", 0),
        "tokens": kw.get("t", 0),
        "errors": 0,
        "reconnect_attempts": 0,
        "cpu_percent": 50.0,
        "loop_lag_p99_ms": 1.5,
        "latency_histogram": h.to_dict(),
    }


def test_live_aggregate_adds_counters_merges_histograms_and_derives_rates():
    a1 = _status([1000] * 96 + [9_000_000] * 4, active=3, q=10, t=100)
    b1 = _status([2000] * 100, active=4, q=20, t=300)
    prev = aggregate_status({"a": a1, "b": b1}, None, 100.0)
    assert prev["active_sessions"] == 7 and prev["qps"] is None
    # merged p99 of 200 values, 4 of them 9 s: p99 is 9 s (averaging the two p99s would say 4.5 s)
    assert prev["p99_ms"] == pytest.approx(9000, rel=1e-3)
    a2 = _status([1000], active=1, q=30, t=500)
    now = aggregate_status({"a": a2, "b": b1, "c": None}, prev, 102.0)
    assert now["qps"] == pytest.approx(10.0) and now["tps"] == pytest.approx(200.0)
    assert now["reporting"] == 2 and now["generators"] == 3
    line = format_live_line(now, 12)
    assert "active=5" in line and "c[-]" in line and "a[cpu 50% lag 1.5ms]" in line


def test_the_run_record_inventory_strips_secret_values():
    data = {
        "_meta": {
            "hostvars": {
                "h": {
                    "redis_password": "hunter2",
                    "haproxy_stats_password": "xsecret",
                    "jwt_secret": "ysecret",
                    "ansible_ssh_private_key_file": "/k",
                    "nested": {"api_token": "zsecret", "port": 1},
                }
            }
        },
        "all": {"children": ["redis"]},
        "redis": {"hosts": ["h"]},
    }
    text = stripped_inventory(parse_inventory_json(data, Path("i.yml")))
    for secret in ("hunter2", "xsecret", "ysecret", "zsecret"):
        assert secret not in text
    h = yaml.safe_load(text)["hostvars"]["h"]
    assert h["ansible_ssh_private_key_file"] == "/k" and h["nested"] == {"api_token": "<stripped>", "port": 1}
    assert h["redis_password"] == h["haproxy_stats_password"] == h["jwt_secret"] == "<stripped>"


def test_report_text_shows_the_seed_table_thresholds_and_partial_reasons(tmp_path):
    summary = dict(
        SUMMARY,
        partial=True,
        run={
            "run_id": "r1",
            "partial_reasons": ["g2: exited 7"],
            "thresholds": evaluate_thresholds(SUMMARY, [parse_threshold("p99<1s")]),
        },
    )
    text = render_text(summary, {})
    assert "PARTIAL" in text and "g2: exited 7" in text
    assert "success rate 99.80%" in text and "p99 1900.00" in text and "FAIL" in text
    run_dir = tmp_path / "r1"
    (run_dir / "hosts" / "h1").mkdir(parents=True)
    (run_dir / "hosts" / "h2").mkdir(parents=True)
    (run_dir / "summary.json").write_text(json.dumps(summary))
    sample = {
        "cpu_percent": 40.0,
        "mem": {"used": 2**20},
        "net": {"eth0": {"rx_bytes_per_s": 1e6, "tx_bytes_per_s": 0}},
    }
    (run_dir / "hosts" / "h1" / "host.jsonl").write_text(json.dumps(sample) + "\n")
    split = {"user": 25.0, "system": 12.0, "softirq": 3.0, "steal": 0.0}
    (run_dir / "hosts" / "h2" / "host.jsonl").write_text(
        "".join(json.dumps({**sample, "cpu_split": split, "monitor_cpu_s": own}) + "\n" for own in (0.5, 2.0))
    )
    write_report(run_dir)
    text = (run_dir / "report.txt").read_text()
    assert "h1 cpu 40/40% net 8.00 Mbit/s;" in text  # a run from before hostmon kept the split: as it was
    assert "h2 cpu 40/40% net 8.00 Mbit/s (system 12% softirq 3% steal 0%) monitor 1.5 CPU-s" in text
    assert "PARTIAL RUN" in (run_dir / "report.html").read_text()
    tarball = pack_run(run_dir)
    assert tarball.name == "r1.tar.gz" and tarball.stat().st_size > 0


def test_host_network_falls_back_to_loopback_only_when_no_other_interface_moved(tmp_path):
    from kit.report import host_metrics

    def sample(eth: float, lo: float) -> str:
        return json.dumps(
            {
                "cpu_percent": 10.0,
                "mem": {"used": 2**20},
                "net": {
                    "eth0": {"rx_bytes_per_s": eth, "tx_bytes_per_s": 0},
                    "lo": {"rx_bytes_per_s": lo, "tx_bytes_per_s": lo},
                },
            }
        )

    def watched(line: str, own: float, softirq: float) -> str:
        split = {"user": 30.0, "system": 10.0, "softirq": softirq, "steal": 0.0}
        return json.dumps({**json.loads(line), "monitor_cpu_s": own, "cpu_split": split})

    hosts = {
        "single": [sample(0, 1e6), sample(0, 2e6)],
        "fleet": [sample(5e5, 9e6)],
        "watched": [watched(sample(0, 0), 0.25, 2), watched(sample(0, 0), 0.5, 4), watched(sample(0, 0), 1.75, 9)],
    }
    for name, rows in hosts.items():
        (tmp_path / "hosts" / name).mkdir(parents=True)
        (tmp_path / "hosts" / name / "host.jsonl").write_text("\n".join(rows) + "\n")
    m = host_metrics(tmp_path)
    assert (m["single"]["net_interfaces"], m["single"]["net_peak_mbit_s"]) == ("loopback", 32.0)
    assert (m["fleet"]["net_interfaces"], m["fleet"]["net_peak_mbit_s"]) == ("non-loopback", 4.0)
    # the monitor's own CPU over the run: its growth between the first and the last sample; unknown before
    assert (m["watched"]["monitor_cpu_s"], m["fleet"]["monitor_cpu_s"]) == (1.5, None)
    assert m["watched"]["cpu_split_mean"] == {"softirq": 5.0, "steal": 0.0, "system": 10.0, "user": 30.0}
    assert m["fleet"]["cpu_split_mean"] == {}
