"""The wsproxy's counters, served as ``GET /stats`` (JSON) and ``GET /metrics`` (Prometheus text).

Owned by the server (one :class:`Stats` per process); the forward path
increments plain attributes (no locks: one event loop).  ``to_dict`` is the
JSON shape of ``/stats``; names are part of the wire contract.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Mapping
from typing import Any

from kit._prom import Metric, exposition

__all__ = ["Stats", "METRICS", "metrics_text"]

#: what /metrics exposes, one line per figure: (the /stats key, kind, help); named wsproxy_<key>
METRICS = (
    ("connections_open", "gauge", "WebSockets open now"),
    ("connections_total", "counter", "WebSockets upgraded since the start"),
    ("messages_forwarded", "counter", "frames written to WebSockets"),
    ("redis_messages", "counter", "pub/sub messages received that had a subscriber"),
    ("binary_forwarded", "counter", "payloads that were not UTF-8, forwarded as binary frames"),
    ("auth_failures", "counter", "upgrades refused with 401"),
    ("slow_client_drops", "counter", "WebSockets dropped because their send buffer overflowed"),
    ("ping_timeouts", "counter", "WebSockets dropped because a ping went unanswered"),
    ("redis_lost_drops", "counter", "WebSockets closed (1012) because their pub/sub connection died"),
    ("redis_unavailable", "counter", "upgrades refused with 503 because Redis could not subscribe"),
    ("health_checks", "counter", "GET /health answered (the balancers' checks)"),
    ("pubsub_disconnects", "counter", "pub/sub connections lost"),
    ("pubsub_ping_timeouts", "counter", "pub/sub connections closed because Redis left a PING unanswered"),
    ("head_refusals", "counter", "requests refused with 431 or 414: a request head over its size bounds"),
    ("address_refusals", "counter", "connections refused with 429: their address had its maximum open"),
    ("upgrades_abandoned", "counter", "upgrades whose client had left before the WebSocket was accepted"),
    ("subscriptions", "gauge", "channels subscribed now"),
    ("pubsub_connections", "gauge", "pub/sub connections to Redis now"),
)


def metrics_text(stats: Mapping[str, Any]) -> str:
    """/metrics of one wsproxy process from its /stats dict (failures by reason as a labelled family)."""
    families = [Metric(f"wsproxy_{key}", kind, help_, value=stats[key]) for key, kind, help_ in METRICS]
    by_reason = stats.get("auth_failures_by_reason") or {}
    families.append(
        Metric(
            "wsproxy_auth_failures_by_reason",
            "counter",
            "upgrades refused with 401, by reason",
            samples={(("reason", r),): n for r, n in by_reason.items()},
        )
    )
    return exposition(families)


class Stats:
    """Counters of one wsproxy process."""

    def __init__(self) -> None:
        self.started = time.time()
        self.connections_open = 0
        self.connections_total = 0
        self.messages_forwarded = 0  # frames written to sockets
        self.redis_messages = 0  # pub/sub messages received that had a subscriber
        self.binary_forwarded = 0  # payloads that were not UTF-8, forwarded as binary frames
        self.auth_failures = 0
        self.auth_failures_by_reason: collections.Counter[str] = collections.Counter()
        self.slow_client_drops = 0
        self.ping_timeouts = 0
        self.redis_lost_drops = 0  # sockets closed because their pub/sub connection died
        self.redis_unavailable = 0  # upgrades refused with 503: Redis could not subscribe
        self.health_checks = 0  # GET /health answered (the balancers' checks)
        self.head_refusals = 0  # request heads refused for their size (431 / 414), by _edge
        self.address_refusals = 0  # connections refused (429) for their address's count, by _edge
        self.upgrades_abandoned = 0  # the client left before its upgrade was answered
        # the pool increments this mapping directly
        self.pool: dict[str, int] = {"pubsub_disconnects": 0, "pubsub_ping_timeouts": 0}

    def auth_failure(self, reason: str) -> None:
        self.auth_failures += 1
        self.auth_failures_by_reason[reason] += 1

    def to_dict(self, *, subscriptions: int, pubsub_connections: int) -> dict[str, object]:
        return {
            "uptime_seconds": round(time.time() - self.started, 3),
            "connections_open": self.connections_open,
            "connections_total": self.connections_total,
            "messages_forwarded": self.messages_forwarded,
            "redis_messages": self.redis_messages,
            "binary_forwarded": self.binary_forwarded,
            "auth_failures": self.auth_failures,
            "auth_failures_by_reason": dict(self.auth_failures_by_reason),
            "slow_client_drops": self.slow_client_drops,
            "ping_timeouts": self.ping_timeouts,
            "redis_lost_drops": self.redis_lost_drops,
            "redis_unavailable": self.redis_unavailable,
            "health_checks": self.health_checks,
            "pubsub_disconnects": self.pool["pubsub_disconnects"],
            "pubsub_ping_timeouts": self.pool["pubsub_ping_timeouts"],
            "head_refusals": self.head_refusals,
            "address_refusals": self.address_refusals,
            "upgrades_abandoned": self.upgrades_abandoned,
            "subscriptions": subscriptions,
            "pubsub_connections": pubsub_connections,
        }
