"""Closes heard by every worker: ``POST /session/{id}/close`` cancels the session's queries wherever they run.

A session's ``/run`` requests are spread over every worker of every simulator host (HAProxy's roundrobin,
the kernel's accept), so its queries in flight may sit in any worker's publisher.  The worker that answers
a close cancels its own at once and PUBLISHes the session id on :data:`CLOSE_CHANNEL`
(:func:`announce_close`); every worker listens there (:func:`listen_for_closes`, one connection of its
own) and cancels that session's queries in its publisher (each ends with a ``done`` marked cancelled,
:mod:`kit.wire`).  A close costs one PUBLISH and, per worker, one message: O(1) per close whatever the
number of sessions.

Errors: a lost subscription is made again (1 s, doubling to 5 s) with one WARNING per outage and one
INFO line when it is back; closes published meanwhile are not heard by this worker (its queries of those
sessions run to their bounded end, as before).  A dead link is noticed by TCP keepalive within ~15 s.
Redis ACL: the simulator's user needs ``+subscribe +unsubscribe`` and the channel (the contract's
``kit_sim_close_channel``; the redis role grants both)
(``redis_acl_sim_rules``); without them a close cancels only the answering worker's queries, and one
WARNING per worker says so and how to fix it.  A ``/run`` whose session check raced a close on another
worker (answered "open" just before the close, submitted just after its message arrived) runs to its
end: a window of one Redis round trip, for a client that closes a session while it still asks.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoPermissionError, RedisError

from kit import contract
from kit._resp import RedisUnavailable

from ._probe import redis_location

__all__ = ["CLOSE_CHANNEL", "listen_for_closes", "announce_close", "CloseListener"]

log = logging.getLogger(__name__)

#: the Redis channel closes are announced on (payload: the session id)
CLOSE_CHANNEL = contract.sim_close_channel()
#: seconds between tries to subscribe again: first, doubling up to the last
RETRY_S = (1.0, 5.0)
_CONNECT_TIMEOUT_S = 2.0
#: how often the listener looks up from an idle subscription (to stop on shutdown)
_POLL_S = 1.0
#: seconds between WARNINGs about announcing closes failing
_LOG_EVERY_S = 60.0
_KEEPALIVE = {
    opt: value for opt, value in (("TCP_KEEPIDLE", 5), ("TCP_KEEPINTVL", 3), ("TCP_KEEPCNT", 3)) if hasattr(socket, opt)
}


def _acl_hint() -> str:
    return (
        "the simulator's Redis user may not SUBSCRIBE to or PUBLISH on %s: add '&%s +subscribe +unsubscribe' "
        "to redis_acl_sim_rules" % (CLOSE_CHANNEL.decode(), CLOSE_CHANNEL.decode())
    )


class CloseListener:
    """What a worker's listener reports: whether it listens, and how many closes it heard."""

    def __init__(self) -> None:
        self.listening = False
        self.heard = 0
        self.announce_failures = 0
        self._last_announce_log = -_LOG_EVERY_S


async def listen_for_closes(
    redis_url: str,
    stop: asyncio.Event,
    on_close: Callable[[str], object],
    listener: CloseListener,
    *,
    retry: tuple[float, float] = RETRY_S,
) -> None:
    """Call *on_close(session_id)* for every close announced, until *stop* is set; errors are logged, never
    raised (see the module docstring)."""
    where = redis_location(redis_url)
    secret = urllib.parse.urlsplit(redis_url).password
    delay, cap = retry
    warned = False
    keepalive = {getattr(socket, opt): value for opt, value in _KEEPALIVE.items()}
    while not stop.is_set():
        client = aioredis.Redis.from_url(
            redis_url,
            socket_connect_timeout=_CONNECT_TIMEOUT_S,
            socket_keepalive=True,
            socket_keepalive_options=keepalive,
        )
        pubsub = client.pubsub()  # not ignoring subscribe messages: the first is the confirmation awaited
        try:
            async with asyncio.timeout(_CONNECT_TIMEOUT_S * 2):
                await pubsub.subscribe(CLOSE_CHANNEL)
                # the confirmation (a refusal, NOPERM, comes back as an error in its place)
                while (confirmed := await pubsub.get_message(timeout=_CONNECT_TIMEOUT_S)) is None or confirmed.get(
                    "type"
                ) != "subscribe":
                    pass
            if warned:
                log.info("listening for closes on Redis at %s again", where)
            listener.listening, warned, delay = True, False, retry[0]
            while not stop.is_set():
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=_POLL_S)
                if message is not None and message.get("type") == "message":
                    listener.heard += 1
                    data = message["data"]
                    on_close(data.decode("ascii", "replace") if isinstance(data, bytes) else str(data))
        except (RedisError, OSError, TimeoutError) as exc:
            listener.listening = False
            if not warned:
                reason = f"{type(exc).__name__}: {exc}"
                if secret:
                    reason = reason.replace(urllib.parse.unquote(secret), "***")
                what = _acl_hint() if isinstance(exc, NoPermissionError) else f"Redis at {where}: {reason}"
                log.warning(
                    "not listening for closes (%s): a close cancels only the queries of the worker that "
                    "answers it until this is fixed; retrying in the background",
                    what,
                )
                warned = True
            try:
                await asyncio.wait_for(stop.wait(), delay)
            except TimeoutError:
                pass
            delay = min(delay * 2, cap)
        finally:
            listener.listening = False
            try:
                await pubsub.aclose()
                await client.aclose()
            except (RedisError, OSError):
                pass


async def announce_close(redis: Callable[..., Awaitable[list[Any]]], session_id: str, listener: CloseListener) -> None:
    """PUBLISH *session_id* on CLOSE_CHANNEL for every worker through *redis* (commands in, replies out,
    :class:`~kit._resp.RedisUnavailable` on failure); a failure is counted and logged (at most once a
    minute), never raised: the close itself has been made."""
    try:
        await redis((b"PUBLISH", CLOSE_CHANNEL, session_id))
    except RedisUnavailable as exc:
        listener.announce_failures += 1
        now = time.monotonic()
        if now - listener._last_announce_log >= _LOG_EVERY_S:
            listener._last_announce_log = now
            what = _acl_hint() if getattr(exc, "code", None) == "NOPERM" else str(exc)
            log.warning(
                "could not announce a close to the other workers (%s); %d failed so far: their queries "
                "of closed sessions run to their end",
                what,
                listener.announce_failures,
            )
