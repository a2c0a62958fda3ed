"""The simulator's start-up probe of Redis: a wrong ``REDIS_URL`` is one log line at start.

Without it a simulator whose Redis is unreachable (a wrong host or port, a wrong
password, redis-server not started) starts silently and answers 503 to every
request; the reason shows only in the first request's log line.

:func:`start_redis_probe` is called from the app's ``before_serving``: it runs
:func:`probe_redis` as a Quart background task, which PINGs Redis once and, if
that fails, logs one WARNING naming the host and port (never the password) and
how to fix it, then PINGs again (1 s, doubling up to 30 s) until Redis answers
and says so in one INFO line.  The app serves all the while (``/health`` stays
503 until Redis answers).  The task ends when Redis answered or when the app
begins to shut down (``app.shutdown_event``), so it never delays a shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import urllib.parse

import redis.asyncio as aioredis
from quart import Quart
from redis.exceptions import RedisError

__all__ = ["start_redis_probe", "probe_redis", "redis_location", "RETRY_S", "PROBE_TIMEOUT_S"]

log = logging.getLogger(__name__)

#: seconds between probes of an unreachable Redis: first, doubling up to the last
RETRY_S = (1.0, 30.0)
#: bound on one probe (connect + AUTH + PING)
PROBE_TIMEOUT_S = 2.0


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


async def _ping(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url, socket_connect_timeout=PROBE_TIMEOUT_S,
                                     socket_timeout=PROBE_TIMEOUT_S, single_connection_client=True)
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_S * 2):
            await client.ping()
    finally:
        await client.aclose()


async def probe_redis(redis_url: str, stop: asyncio.Event, *, retry: tuple[float, float] = RETRY_S) -> bool:
    """PING Redis until it answers or *stop* is set; log once when it does not, once when it comes.

    Returns whether Redis answered.  Errors are logged, never raised.
    """
    where = redis_location(redis_url)
    secret = urllib.parse.urlsplit(redis_url).password
    secret = urllib.parse.unquote(secret) if secret else None
    delay, cap = retry
    failing = False
    while not stop.is_set():
        try:
            await _ping(redis_url)
        except (RedisError, OSError, TimeoutError) as exc:
            if not failing:
                failing = True
                log.warning("REDIS_URL is not usable at start-up: Redis at %s: %s. /health and the session "
                            "endpoints answer 503 until it is: fix REDIS_URL (host, port, password) or start "
                            "redis-server at %s; retrying in the background", where, _reason(exc, secret), where)
            try:
                await asyncio.wait_for(stop.wait(), delay)
            except TimeoutError:
                pass
            delay = min(delay * 2, cap)
            continue
        if failing:
            log.info("Redis at %s answers now", where)
        return True
    return False


def start_redis_probe(app: Quart, redis_url: str) -> None:
    """Run :func:`probe_redis` as a background task of *app* (call it from ``before_serving``)."""
    app.add_background_task(probe_redis, redis_url, app.shutdown_event)
