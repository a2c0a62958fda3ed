"""The preflight's health look waits for HAProxy to mark healthy servers UP, and for nothing else (pure: the
look itself is handed in; check_health against real services is tested in tests/integration)."""

from __future__ import annotations

import time

from kit.run._services import settled_health


def _rec(service: str, ok: bool, detail: str = "") -> dict:
    return {"host": "h", "service": service, "target": "127.0.0.1:1", "ok": ok, "detail": detail}


def _looks(*rounds: list[dict]):
    seen: list[float] = []

    def check(inv):
        seen.append(time.monotonic())
        return rounds[min(len(seen), len(rounds)) - 1]

    return check, seen


def test_servers_haproxy_still_marks_down_are_looked_at_again_until_up():
    rising = [_rec("wsproxy-0", True), _rec("haproxy", False, "14 stats rows; servers DOWN: wsproxy/h-wsproxy-0")]
    up = [_rec("wsproxy-0", True), _rec("haproxy", True, "14 stats rows")]
    check, seen = _looks(rising, rising, up)
    assert settled_health(None, settle_s=10.0, check=check) == up
    assert len(seen) == 3


def test_a_service_failing_its_own_check_is_reported_at_once_and_a_server_that_stays_down_after_the_bound():
    broken = [_rec("wsproxy-0", False, "redis: connection refused"), _rec("haproxy", False, "servers DOWN: ws/0")]
    check, seen = _looks(broken)
    assert settled_health(None, settle_s=10.0, check=check) == broken and len(seen) == 1
    down = [_rec("wsproxy-0", True), _rec("haproxy", False, "14 stats rows; servers DOWN: wsproxy/h-wsproxy-0")]
    check, seen = _looks(down)
    t0 = time.monotonic()
    assert settled_health(None, settle_s=1.0, check=check) == down
    assert 1.0 <= time.monotonic() - t0 < 3.0 and len(seen) >= 2
    healthy = [_rec("redis", True), _rec("haproxy", True)]
    check, seen = _looks(healthy)
    assert settled_health(None, check=check) == healthy and len(seen) == 1
