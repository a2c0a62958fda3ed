"""kit.run._components: CPU per kit component and the bottleneck, from synthetic host monitor samples."""

from __future__ import annotations

import json

import pytest

from kit.run import bottleneck, component_costs, load_host_samples
from kit.run._components import host_cpu_peaks, idle_window, service_programs


def proc(component, pid, root, cpu, children=0.0, ppid=1, rss=10.0):
    return {
        "component": component,
        "pid": pid,
        "root": root,
        "ppid": ppid,
        "cpu_s": cpu,
        "cpu_children_s": children,
        "rss_mb": rss,
        "fds": 5,
        "threads": 1,
    }


def rows(*samples, t0=1000.0):
    return [{"ts": t0 + i, "t": float(i + 1), "cpu_percent": 0.0, "procs": list(s)} for i, s in enumerate(samples)]


def by(entries, component, host="h1"):
    [e] = [e for e in entries if e["component"] == component and e["host"] == host]
    return e


def test_a_process_present_in_the_first_sample_counts_from_that_sample():
    samples = {
        "h1": rows([proc("redis", 10, 10, 100.0)], [proc("redis", 10, 10, 100.5)], [proc("redis", 10, 10, 101.5)])
    }
    [e] = component_costs(samples, tokens=1000, cores={"h1": 4})
    assert e["cpu_s"] == pytest.approx(1.5)
    assert e["peak_cores"] == pytest.approx(1.0)
    assert e["us_per_token"] == pytest.approx(1500.0)
    assert e["cpu_share"] == 1.0 and e["processes"] == 1


def test_a_process_that_appears_later_counts_from_zero():
    samples = {
        "h1": rows(
            [proc("sim", 20, 20, 50.0)],
            [proc("sim", 20, 20, 50.0), proc("client", 30, 30, 0.8)],
            [proc("sim", 20, 20, 51.0), proc("client", 30, 30, 2.0)],
        )
    }
    entries = component_costs(samples, tokens=None, cores={"h1": 2})
    assert by(entries, "client")["cpu_s"] == pytest.approx(2.0)
    assert by(entries, "sim")["cpu_s"] == pytest.approx(1.0)
    assert by(entries, "client")["cpu_share"] == pytest.approx(2 / 3, abs=1e-3)
    assert by(entries, "client")["us_per_token"] is None


def test_descendants_are_summed_and_a_reaped_worker_is_not_counted_twice():
    # root 30 (a shell) -> 31 (client parent) -> 32 (worker); the worker exits after 1.5 s of CPU
    # and its parent's cpu_children_s takes its whole lifetime: only the tail after the last sample counts
    s1 = [proc("client", 30, 30, 0.0), proc("client", 31, 30, 0.2, ppid=30), proc("client", 32, 30, 0.5, ppid=31)]
    s2 = [proc("client", 30, 30, 0.0), proc("client", 31, 30, 0.3, ppid=30), proc("client", 32, 30, 1.4, ppid=31)]
    s3 = [proc("client", 30, 30, 0.0), proc("client", 31, 30, 0.4, children=1.5, ppid=30)]
    s4 = [proc("client", 30, 30, 0.0, children=1.9)]  # everything reaped by the root
    e = by(component_costs({"h1": [{"ts": 0.0, "procs": []}] + rows(s1, s2, s3, s4)}, 100, {"h1": 2}), "client")
    # all of it is the run's (the tree appeared after the first sample): 0.4 own + 1.5 worker
    assert e["cpu_s"] == pytest.approx(1.9)
    assert e["processes"] == 3


def test_a_worker_reaped_outside_the_tree_keeps_what_was_measured():
    s1 = [proc("client", 30, 30, 1.0)]
    s2 = [proc("client", 30, 30, 2.0)]
    s3 = [proc("sim", 40, 40, 0.0)]  # the client's tree is gone (its root was reaped by init)
    e = by(component_costs({"h1": rows([proc("sim", 40, 40, 0.0)], s1, s2, s3)}, 100, {"h1": 2}), "client")
    assert e["cpu_s"] == pytest.approx(2.0)


def test_peak_cores_is_the_busiest_interval_and_rss_peak_the_busiest_sample():
    samples = {
        "h1": rows(
            [proc("wsproxy", 1, 1, 0.0, rss=30), proc("wsproxy", 2, 2, 0.0, rss=30)],
            [proc("wsproxy", 1, 1, 0.9, rss=40), proc("wsproxy", 2, 2, 0.8, rss=45)],
            [proc("wsproxy", 1, 1, 1.0, rss=35), proc("wsproxy", 2, 2, 0.9, rss=35)],
        )
    }
    e = by(component_costs(samples, 100, {"h1": 8}), "wsproxy")
    assert e["peak_cores"] == pytest.approx(1.7)
    assert e["rss_peak_mb"] == pytest.approx(85.0)
    assert e["usable_cores"] == 2 and e["busy_processes"] == 2


def test_entries_are_per_component_and_host_and_shares_add_up():
    samples = {
        "h1": rows([proc("redis", 1, 1, 0.0)], [proc("redis", 1, 1, 1.0)]),
        "h2": rows([proc("wsproxy", 1, 1, 0.0)], [proc("wsproxy", 1, 1, 3.0)]),
    }
    entries = component_costs(samples, 1_000_000, {"h1": 1, "h2": 4})
    assert [(e["component"], e["host"]) for e in entries] == [("wsproxy", "h2"), ("redis", "h1")]
    assert sum(e["cpu_share"] for e in entries) == pytest.approx(1.0)
    assert by(entries, "wsproxy", "h2")["us_per_token"] == pytest.approx(3.0)


def test_bottleneck_compares_peak_with_the_cores_a_component_can_use():
    # haproxy may use every core of its host; one busy redis main thread may use one
    samples = {
        "lb": rows([proc("haproxy", 1, 1, 0.0)], [proc("haproxy", 1, 1, 3.0)]),
        "db": rows([proc("redis", 1, 1, 0.0)], [proc("redis", 1, 1, 0.9)]),
    }
    entries = component_costs(samples, 100, {"lb": 8, "db": 8})
    assert by(entries, "haproxy", "lb")["usable_cores"] == 8
    assert by(entries, "redis", "db")["usable_cores"] == 1
    assert bottleneck(entries) == {
        "component": "redis",
        "host": "db",
        "peak_cores": 0.9,
        "usable_cores": 1,
        "ratio": 0.9,
        "saturated": True,
        "resource": "component_cores",
    }


def test_a_bottleneck_far_from_its_cores_is_not_saturated_and_no_self_measurement_warning():
    from kit.report import kit_measured_itself

    samples = {
        "h": rows(
            [proc("sim", 1, 1, 0.0), proc("wsproxy", 2, 2, 0.0)], [proc("sim", 1, 1, 0.3), proc("wsproxy", 2, 2, 0.1)]
        )
    }
    neck = bottleneck(component_costs(samples, 100, {"h": 2}))
    assert neck["component"] == "sim" and neck["saturated"] is False
    assert not kit_measured_itself({"bottleneck": neck, "generator": {"generator_overloaded": False}})
    assert kit_measured_itself({"bottleneck": dict(neck, saturated=True), "generator": {}})
    assert kit_measured_itself({"bottleneck": neck, "generator": {"generator_overloaded": True}})


def test_idle_processes_do_not_widen_a_components_usable_cores():
    # a sim master that only supervises its one busy worker: the worker's single core is the limit
    samples = {
        "h1": rows(
            [proc("sim", 1, 1, 0.0), proc("sim", 2, 1, 0.0, ppid=1)],
            [proc("sim", 1, 1, 0.0), proc("sim", 2, 1, 0.95, ppid=1)],
        )
    }
    entries = component_costs(samples, 100, {"h1": 4})
    assert by(entries, "sim")["usable_cores"] == 1
    assert bottleneck(entries)["component"] == "sim"


def test_no_process_samples_give_no_components_and_no_bottleneck():
    samples = {"h1": [{"ts": 1.0, "cpu_percent": 3.0}, {"ts": 2.0, "cpu_percent": 4.0}]}
    assert component_costs(samples, 100, {"h1": 2}) == []
    assert bottleneck([]) is None


def test_load_host_samples_reads_every_hosts_jsonl_skipping_broken_lines(tmp_path):
    d = tmp_path / "hosts" / "h1"
    d.mkdir(parents=True)
    (d / "host.jsonl").write_text(json.dumps({"ts": 1.0, "procs": []}) + "\n{not json\n")
    assert load_host_samples(tmp_path) == {"h1": [{"ts": 1.0, "procs": []}]}


@pytest.mark.parametrize(
    "groups, n, programs",
    [
        (
            ["redis", "haproxy", "wsproxy", "sim", "generators"],
            2,
            [
                ("redis", "redis"),
                ("haproxy", "haproxy"),
                ("sim", "sim"),
                ("wsproxy", "wsproxy-0"),
                ("wsproxy", "wsproxy-1"),
            ],
        ),
        (["generators"], 1, []),
        (["wsproxy"], 1, [("wsproxy", "wsproxy-0")]),
    ],
)
def test_service_programs_are_the_kit_service_roles_names(groups, n, programs):
    assert service_programs(groups, n) == programs


def test_a_generators_own_cpu_figure_covers_what_the_monitor_missed_after_its_last_sample():
    samples = {"g": rows([proc("client", 5, 5, 0.0)], [proc("client", 5, 5, 1.0)])}
    assert by(component_costs(samples, 100, {"g": 2}, {"g": 1.4}), "client", "g")["cpu_s"] == 1.4
    assert by(component_costs(samples, 100, {"g": 2}, {"g": 0.5}), "client", "g")["cpu_s"] == 1.0


def test_a_saturated_host_whose_components_each_had_headroom_is_the_bottleneck():
    # one 2-core box: sim and client each under a core, together with the rest the host was full
    samples = {
        "box": [
            {"ts": 1.0, "cpu_percent": 99.0, "procs": [proc("sim", 1, 1, 0.0), proc("client", 2, 2, 0.0)]},
            {"ts": 2.0, "cpu_percent": 96.0, "procs": [proc("sim", 1, 1, 0.7), proc("client", 2, 2, 0.6)]},
            {"ts": 3.0, "cpu_percent": 60.0, "procs": [proc("sim", 1, 1, 1.2), proc("client", 2, 2, 1.3)]},
        ]
    }
    entries = component_costs(samples, 100, {"box": 2})
    assert host_cpu_peaks(samples) == {"box": 96.0}  # the first sample only starts the interval
    assert bottleneck(entries)["saturated"] is False
    neck = bottleneck(entries, host_cpu_peaks(samples))
    assert neck["resource"] == "host_cpu" and neck["saturated"] and neck["host"] == "box"
    assert neck["component"] == "client" and neck["shared_by"] == ["client", "sim"]
    quiet = {"box": [dict(r, cpu_percent=40.0) for r in samples["box"]]}
    assert bottleneck(entries, host_cpu_peaks(quiet))["resource"] == "component_cores"


def test_among_saturated_hosts_the_biggest_consumer_is_named():
    # lab hosts share one machine: every host reads the machine's CPU; the sim used the most of it
    samples = {
        "gen": [
            {"ts": 1.0, "cpu_percent": 99.0, "procs": [proc("client", 1, 1, 0.0)]},
            {"ts": 2.0, "cpu_percent": 99.0, "procs": [proc("client", 1, 1, 0.4)]},
        ],
        "sim": [
            {"ts": 1.0, "cpu_percent": 97.0, "procs": [proc("sim", 1, 1, 0.0)]},
            {"ts": 2.0, "cpu_percent": 97.0, "procs": [proc("sim", 1, 1, 0.6)]},
        ],
    }
    neck = bottleneck(component_costs(samples, 100, {"gen": 2, "sim": 2}), host_cpu_peaks(samples))
    assert (neck["component"], neck["host"], neck["host_cpu_peak_percent"]) == ("sim", "sim", 97.0)


def test_memory_per_session_is_rss_growth_over_the_most_sessions_held():
    from kit.run._components import host_sockets, memory_per_session, sessions_held

    series = {
        "wsproxy_connections_open": {"h3:wsproxy-0": {1.0: 100, 2.0: 2000}, "h3:wsproxy-1": {1.0: 50, 2.0: 2000}},
        "haproxy_server_sessions": {"h2:wsproxy/h3-wsproxy-0": {2.0: 2000}, "h2:sim/h1-sim": {2.0: 10}},
        "redis_pubsub_channels": {"h1:redis": {1.0: 0, 2.0: 0}},
    }
    held = sessions_held(series, {"h4": 4000.0, "h5": 0.0})
    assert held == {("h4", "client"): 4000.0, ("h3", "wsproxy"): 4000.0, ("h2", "haproxy"): 2010.0}
    entries = [
        {"host": "h3", "component": "wsproxy", "rss_first_mb": 50.0, "rss_peak_mb": 90.0},
        {"host": "h1", "component": "redis", "rss_first_mb": 10.0, "rss_peak_mb": 11.0},
    ]
    memory_per_session(entries, held)
    assert entries[0]["rss_per_session_kb"] == round(40 * 1024 / 4000, 1) and entries[0]["sessions_peak"] == 4000
    assert entries[1]["rss_per_session_kb"] is None  # held no session: no figure, never a division by zero
    socks = host_sockets(
        {
            "h1": [
                {"sockstat": {"tcp_inuse": 5, "tcp_mem_bytes": 4096}},
                {"sockstat": {"tcp_inuse": 9, "tcp_tw": 2, "tcp_mem_bytes": 2 * 2**20}},
                {},
            ]
        }
    )
    assert socks == {"h1": {"tcp_inuse": 9, "tcp_tw": 2, "tcp_mem_mb": 2.0}}


def test_the_ramp_ends_at_the_first_second_holding_99_percent_of_the_peak():
    from kit.run._run import ramp_seconds

    rows = [{"second": str(1000 + i), "active_sessions": str(n)} for i, n in enumerate([0, 300, 700, 995, 1000, 400])]
    assert ramp_seconds(rows, 1000.2, 1000) == 3.8
    assert ramp_seconds(rows, None, 1000) is None and ramp_seconds([], 1000.0, 0) is None


def _timeline(t0, seconds):
    """timeline.csv rows from t0: (active_sessions, tokens, queries_started) per second."""
    return [
        {"second": str(t0 + i), "active_sessions": str(a), "tokens": str(k), "queries_started": str(q)}
        for i, (a, k, q) in enumerate(seconds)
    ]


def test_the_idle_window_is_the_longest_quiet_stretch_with_every_session_connected_less_its_margins():
    # ramp (3 s), first queries (5 s), 30 quiet s, second queries (5 s), a 12-s quiet stretch at 50 %, the end
    secs = (
        [(300 * (i + 1), 0, 300) for i in range(3)]
        + [(1000, 200, 0)] * 5
        + [(1000, 0, 0)] * 30
        + [(1000, 180, 1000)]
        + [(1000, 200, 0)] * 4
        + [(500, 0, 0)] * 12
    )
    w = idle_window(_timeline(5000, secs), peak=1000)
    assert (w["from"], w["to"], w["seconds"]) == (5008 + 2, 5038 - 2, 26)
    assert w["sessions"] == 1000.0
    assert w["session_seconds"] == sum(a for a, _, _ in secs)
    # a token in the middle cuts it: quiet stretches of 14 and 15 s, the longer kept (11 s after the margins)
    secs[22] = (1000, 1, 0)
    assert idle_window(_timeline(5000, secs), peak=1000)["from"] == 5023 + 2
    secs[30] = (1000, 0, 1)  # a query started: 14, 7 and 7 s, the first kept
    w = idle_window(_timeline(5000, secs), peak=1000)
    assert (w["from"], w["seconds"]) == (5010, 10)
    assert idle_window(_timeline(5000, [(1000, 200, 0)] * 40), peak=1000) is None  # never quiet
    assert idle_window(_timeline(5000, [(1000, 0, 0)] * 13), peak=1000) is None  # 9 s after margins: too short
    assert idle_window([], peak=0) is None


def test_idle_cost_per_session_and_cost_per_token_net_of_it():
    # wsproxy: 0.2 cores while 1,000 sessions idle (t 1010-1020), 1.0 cores while 1,000 tokens/s flow
    cpu, samples = 0.0, []
    for i in range(30):
        samples.append([proc("wsproxy", 50, 50, cpu)])
        cpu += 0.2 if 10 <= i < 20 else 1.0
    window = {"from": 1010.0, "to": 1020.0, "seconds": 10, "sessions": 1000.0, "session_seconds": 29_000.0}
    [e] = component_costs({"h1": rows(*samples)}, tokens=19_000, cores={"h1": 2}, idle=window)
    assert e["idle_cores"] == pytest.approx(0.2)
    assert e["idle_us_per_session_s"] == pytest.approx(200.0)  # 0.2 cores / 1,000 sessions
    # 21.0 CPU-s over the run, 29,000 session-seconds x 200 us of them idle cost: 15.2 CPU-s for 19,000 tokens
    assert e["us_per_token"] == pytest.approx(21.0e6 / 19_000, rel=1e-3)
    assert e["us_per_token_net"] == pytest.approx(15.2e6 / 19_000, rel=1e-3)
    # a sample straddling the window's edge is not idle time: the window from 1010.5 keeps 9 intervals
    [e] = component_costs({"h1": rows(*samples)}, 19_000, {"h1": 2}, idle=window | {"from": 1010.5})
    assert e["idle_cores"] == pytest.approx(0.2)
    [e] = component_costs({"h1": rows(*samples)}, tokens=19_000, cores={"h1": 2})
    assert (e["idle_cores"], e["idle_us_per_session_s"], e["us_per_token_net"]) == (None, None, None)
