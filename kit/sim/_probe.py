"""The simulator's watch on Redis: what its shallow ``/health`` reads, and one log line per change.

A balancer checks every simulator every few seconds; a check that made a Redis round trip would tie
every simulator's health to the Redis host's latency, so that a slow Redis marks all of them DOWN
at once.  Instead each worker runs :func:`watch_redis` as a Quart background task (started by
:func:`start_redis_watch` from ``before_serving``): one PING per :data:`WATCH_INTERVAL_S` on one
connection of its own, whatever the number of checks, recording the outcome in a
:class:`RedisWatch` that ``/health`` reads without any I/O.  When a PING fails it logs one WARNING
naming the host and port (never the password) and how to fix it, PINGs again (1 s, doubling up to
:data:`RETRY_S`'s cap) and logs one INFO line when Redis answers again.  The first failure says
"at start-up" when Redis never answered yet, so a wrong ``REDIS_URL`` is one line at start.

The task ends when the app begins to shut down (``app.shutdown_event``), so it never delays a
shutdown.  ``/health/deep`` still makes its own round trip (``fab status``, the preflight).
"""

from __future__ import annotations

import asyncio
import logging
import urllib.parse
from dataclasses import dataclass

import redis.asyncio as aioredis
from quart import Quart
from redis.exceptions import RedisError

__all__ = [
    "RedisWatch",
    "start_redis_watch",
    "watch_redis",
    "redis_location",
    "RETRY_S",
    "PROBE_TIMEOUT_S",
    "WATCH_INTERVAL_S",
]

log = logging.getLogger(__name__)

#: seconds between PINGs while Redis answers
WATCH_INTERVAL_S = 1.0
#: seconds between PINGs of an unreachable Redis: first, doubling up to the last
RETRY_S = (1.0, 5.0)
#: bound on one PING (connect + AUTH + PING when the connection is new)
PROBE_TIMEOUT_S = 2.0


@dataclass
class RedisWatch:
    """The last outcome of the watch: ``ok`` None until the first PING has answered or failed."""

    ok: bool | None = None
    detail: str = "Redis not asked yet"


def redis_location(redis_url: str) -> str:
    """``host:port`` (or the socket path) of *redis_url*; never its user or password."""
    parts = urllib.parse.urlsplit(redis_url)
    if parts.scheme == "unix":
        return parts.path
    try:
        port = parts.port or 6379  # the redis:// scheme's default, not the kit's port
    except ValueError:
        port = 6379  # the redis:// scheme's default, not the kit's port
    host = parts.hostname or "localhost"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _reason(exc: BaseException, secret: str | None) -> str:
    text = f"{type(exc).__name__}: {str(exc).rstrip('.')}" if str(exc) else type(exc).__name__
    if secret:
        text = text.replace(secret, "***")
    return text


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass


async def watch_redis(
    redis_url: str,
    stop: asyncio.Event,
    watch: RedisWatch,
    *,
    interval: float = WATCH_INTERVAL_S,
    retry: tuple[float, float] = RETRY_S,
) -> None:
    """PING Redis every *interval* until *stop* is set, recording each outcome in *watch*.

    Logs once when Redis stops answering (or never did), once when it answers again.  Errors are
    logged, never raised.
    """
    where = redis_location(redis_url)
    secret = urllib.parse.urlsplit(redis_url).password
    secret = urllib.parse.unquote(secret) if secret else None
    client = aioredis.Redis.from_url(
        redis_url, socket_connect_timeout=PROBE_TIMEOUT_S, socket_timeout=PROBE_TIMEOUT_S, single_connection_client=True
    )
    delay, cap = retry
    ever_answered = False
    try:
        while not stop.is_set():
            try:
                async with asyncio.timeout(PROBE_TIMEOUT_S * 2):
                    await client.ping()
            except (RedisError, OSError, TimeoutError) as exc:
                reason = _reason(exc, secret)
                if watch.ok is not False:
                    when = "any more" if ever_answered else "at start-up"
                    log.warning(
                        "REDIS_URL is not usable %s: Redis at %s: %s. /health and the session endpoints "
                        "answer 503 until it is: fix REDIS_URL (host, port, password) or start "
                        "redis-server at %s; retrying in the background",
                        when,
                        where,
                        reason,
                        where,
                    )
                watch.ok, watch.detail = False, f"Redis at {where}: {reason}"
                if client.connection is not None:  # a fresh connection for the next PING
                    await client.connection.disconnect()
                await _sleep_or_stop(stop, delay)
                delay = min(delay * 2, cap)
                continue
            if watch.ok is False:
                log.info("Redis at %s answers now", where)
            watch.ok, watch.detail, ever_answered = True, "PONG", True
            delay = retry[0]
            await _sleep_or_stop(stop, interval)
    finally:
        await client.aclose()


def start_redis_watch(app: Quart, redis_url: str, watch: RedisWatch) -> None:
    """Run :func:`watch_redis` as a background task of *app* (call it from ``before_serving``)."""
    app.add_background_task(watch_redis, redis_url, app.shutdown_event, watch)
