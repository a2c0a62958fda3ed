"""The balancer's decisions read from HAProxy's log (kit/run/_balancer.py): real HAProxy 2.6 lines, iso format."""

from __future__ import annotations

import datetime
from pathlib import Path

from kit.report import server_event_lines
from kit.run._balancer import balancer_verdict, parse_haproxy_log, server_events

START = datetime.datetime(2026, 12, 4, 7, 0, 0, tzinfo=datetime.UTC).timestamp()

# message bodies as HAProxy 2.6 wrote them in the lab runs (haproxy -db, log stdout format iso)
LOG = """\
[NOTICE]   (6371) : New worker (6380) forked
2026-12-04T06:59:58.000100+00:00 Server wsproxy/lk-h5-wsproxy-0 is DOWN, reason: Layer7 timeout, check duration: 5001ms. 3 active and 0 backup servers left. 12 sessions active, 0 requeued, 0 remaining in queue.
[WARNING]  (6371) : Server wsproxy/lk-h6-wsproxy-1 is DOWN, reason: Layer7 timeout, check duration: 5002ms. 3 active and 0 backup servers left. 1889 sessions active, 0 requeued, 0 remaining in queue.
2026-12-04T07:00:41.250000+00:00 Server wsproxy/lk-h6-wsproxy-1 is DOWN, reason: Layer7 timeout, check duration: 5002ms. 3 active and 0 backup servers left. 1889 sessions active, 0 requeued, 0 remaining in queue.
2026-12-04T07:00:44.500000+00:00 Server wsproxy/lk-h5-wsproxy-0 is DOWN, reason: Layer4 connection problem, info: "Connection refused", check duration: 0ms. 2 active and 0 backup servers left. 2096 sessions active, 0 requeued, 0 remaining in queue.
2026-12-04T07:00:49.000000+00:00 Server wsproxy/lk-h6-wsproxy-1 is UP, reason: Layer7 check passed, code: 200, check duration: 64ms. 3 active and 0 backup servers online. 0 sessions requeued, 0 total in queue.
2026-12-04T07:00:52.000000+00:00 backend wsproxy has no server available!
10.0.0.1:4242 [04/Dec/2026:07:00:53.000] ws_in wsproxy/lk-h5-wsproxy-0 0/0/1/2/3 101 166 - - ---- 1/1/0/0/0 0/0 "GET /a/ws/x HTTP/1.1"
"""


def test_state_changes_are_parsed_with_their_reason_check_time_and_sessions():
    evs = parse_haproxy_log(LOG.splitlines())
    assert [(e["server"], e["state"]) for e in evs] == [
        ("lk-h5-wsproxy-0", "DOWN"),
        ("lk-h6-wsproxy-1", "DOWN"),
        ("lk-h5-wsproxy-0", "DOWN"),
        ("lk-h6-wsproxy-1", "UP"),
        (None, "NO_SERVER"),
    ]  # stderr copies and traffic lines skipped
    down = evs[1]
    assert down["backend"] == "wsproxy" and down["reason"] == "Layer7 timeout" and down["check_ms"] == 5002
    assert down["servers_left"] == 3 and down["sessions"] == 1889
    assert evs[2]["reason"] == 'Layer4 connection problem, info: "Connection refused"' and evs[2]["check_ms"] == 0
    assert evs[3]["sessions"] is None and evs[3]["reason"] == "Layer7 check passed"


def test_only_the_runs_window_counts_and_times_are_relative_to_the_agreed_start(tmp_path: Path):
    (tmp_path / "lb1").mkdir()
    (tmp_path / "lb1" / "haproxy.log").write_text(LOG)
    evs = server_events(tmp_path, ["lb1", "lb-without-log"], START, START + 50)
    assert [e["at_s"] for e in evs] == [41.25, 44.5, 49.0]  # before the start and after the end: left out
    assert {e["balancer"] for e in evs} == {"lb1"}


def test_the_verdict_names_the_servers_times_reasons_and_whether_their_sessions_were_closed(tmp_path: Path):
    (tmp_path / "lb1").mkdir()
    (tmp_path / "lb1" / "haproxy.log").write_text(LOG)
    evs = server_events(tmp_path, ["lb1"], START, START + 60)
    kept = balancer_verdict(evs, {"wsproxy": 4, "sim": 1}, {"lb1": False})
    assert kept == [
        "HAProxy marked 2 of 4 wsproxy servers DOWN 2 times at 41-44 s (Layer4 connection problem, "
        "Layer7 timeout); the 3,985 sessions they held were kept; no server was left 1 time"
    ]
    closed = balancer_verdict(evs, {"wsproxy": 4}, {"lb1": True})
    assert "and closed 3,985 sessions (haproxy_shutdown_sessions_on_down)" in closed[0]
    assert balancer_verdict([e for e in evs if e["state"] == "UP"], {"wsproxy": 4}, {}) == []
    lines = server_event_lines({"server_events": evs})
    assert (
        lines[0]
        == "Server event  41.2 s lb1: wsproxy/lk-h6-wsproxy-1 DOWN (Layer7 timeout, check 5002 ms, 1,889 sessions)"
    )
    assert lines[-1] == "Server event  52.0 s lb1: wsproxy: no server left"
