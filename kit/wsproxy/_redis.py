"""Redis pub/sub for the wsproxy: raw asyncio connections parsed by hiredis.

Why not redis-py's ``PubSub``: per forwarded message it costs about three times
the CPU of this module (measured: 30-36 us against 10-12 us with aiohttp), and
the forward path is the whole job of a wsproxy.

Ownership:

- :class:`PubSubPool` owns at most ``max_connections`` :class:`PubSubConnection`
  objects, opened lazily: a channel goes to the least-loaded open connection
  unless that one already carries ``CHANNELS_PER_CONNECTION`` channels and the
  cap is not reached, in which case a new connection is opened.  Filling
  connections first matters: one event loop reads them all, and a connection
  per couple of channels costs a read and a wake-up per message (measured with
  bench/wsproxy_forward.py: ~18 us of CPU per forwarded message with 512
  connections for 1,000 sessions against ~9 us with a handful).  Each
  connection carries many channel subscriptions; each channel lives on exactly
  one connection (``PubSubPool.owner``), so a message is never delivered twice.
- A subscriber is any object with ``send_frame(frame: bytes)`` (called from
  ``data_received``; it must never block or await) and ``redis_lost()``
  (called when the connection carrying its channel dies).  ``frame_builder``
  turns one payload into the bytes handed to every subscriber of its channel, so
  the work is done once per message, not once per socket.
- When a connection is lost, every subscriber on it gets ``redis_lost()``, its
  channels are forgotten, and the next subscription opens a new connection.
- :meth:`PubSubPool.keep` (a task of the service) keeps at least one connection open, idle or
  not, and reopens it with a backoff when it is lost: whether one is up (:attr:`PubSubPool.up`)
  is the instance's Redis health, read by ``/health`` without a round trip, and an upgrade
  answers 503 at once while none is.
- Dead links are noticed two ways.  Each connection's socket has TCP keepalive and a user timeout of
  a few seconds (:data:`KEEPALIVE`), so a link whose far end is gone (a partition, a host gone, its
  packets dropped) is closed by the kernel within :data:`DEAD_LINK_S`.  And a connection that has
  received nothing for :data:`PING_IDLE_S` sends a PING (RESP2 allows it in subscribed mode); if
  nothing at all comes back within :data:`PING_TIMEOUT_S`, the link is dead even though the kernel
  still ACKs (a Redis stopped or hung): it is aborted, its WebSockets get 1012 and reconnect, and
  upgrades are answered 503 at once (``last_error`` names the silence) until a connection is up
  again.  A link that carries messages is never pinged; one PING every two ticks on an idle one.

Errors: :class:`RedisUnavailable` when a connection cannot be opened or
authenticated, or a subscription is not confirmed in time.  Its message never
carries the password.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
from collections.abc import Callable
from typing import Any, Protocol

import hiredis

from kit._resp import (
    RedisAddress,
    RedisUnavailable,
    auth_command,
    describe,
    encode_command,
    parse_redis_url,
)

__all__ = [
    "RedisAddress",
    "RedisUnavailable",
    "PubSubConnection",
    "PubSubPool",
    "CHANNELS_PER_CONNECTION",
    "parse_redis_url",
    "redis_ping",
    "encode_command",
    "KEEPALIVE",
    "DEAD_LINK_S",
    "PING_IDLE_S",
    "PING_TIMEOUT_S",
]

log = logging.getLogger(__name__)

#: seconds to open + authenticate a connection, or to get a SUBSCRIBE confirmed
CONNECT_TIMEOUT = 5.0
#: channels a connection carries before the pool opens another (up to its cap)
CHANNELS_PER_CONNECTION = 256
#: TCP keepalive of every pub/sub socket: first probe after IDLE s of silence, then every INTVL s,
#: dead after CNT unanswered.  The kernel does it (no CPU of ours, unaffected by a busy event loop),
#: and a paused Redis still ACKs.
KEEPALIVE = {"IDLE": 2, "INTVL": 2, "CNT": 3}
#: seconds within which a silently dead pub/sub link is closed (its WebSockets get 1012); also the
#: TCP user timeout, which bounds data left unacknowledged on a link that is not idle
DEAD_LINK_S = KEEPALIVE["IDLE"] + KEEPALIVE["INTVL"] * KEEPALIVE["CNT"]
#: a pub/sub connection that received nothing for this many seconds sends a PING ...
PING_IDLE_S = 1.0
#: ... and is dead when nothing at all arrived this many seconds after it.  Long enough for a Redis
#: that is busy (a reply waits behind the commands before it, at most a few event-loop turns of Redis),
#: short enough that a WebSocket on a dead link gets its 1012 within 2 x PING_IDLE_S + PING_TIMEOUT_S
PING_TIMEOUT_S = 5.0
#: seconds between :meth:`PubSubPool.keep`'s looks at the pool; its reconnect backoff (first, cap)
KEEP_INTERVAL_S = 0.5
KEEP_RETRY_S = (1.0, 30.0)


_PING = b"*1\r\n$4\r\nPING\r\n"


class Subscriber(Protocol):
    def send_frame(self, frame: bytes) -> None: ...

    def redis_lost(self) -> None: ...


class _ReplyProtocol(asyncio.Protocol):
    """Feeds bytes to an owner's ``_feed``; reports loss to its ``_lost``."""

    def __init__(self, owner: Any) -> None:
        self._owner = owner

    def data_received(self, data: bytes) -> None:
        self._owner._feed(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._owner._lost(exc)


class _Simple:
    """A plain request/response Redis connection (used for the health check)."""

    def __init__(self) -> None:
        self.reader = hiredis.Reader()
        self.replies: asyncio.Queue[Any] = asyncio.Queue()

    def _feed(self, data: bytes) -> None:
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            self.replies.put_nowait(reply)

    def _lost(self, exc: Exception | None) -> None:
        self.replies.put_nowait(RedisUnavailable("connection closed"))


async def redis_ping(address: RedisAddress, timeout: float = 2.0) -> None:
    """Open a fresh connection, AUTH, PING, close; raise RedisUnavailable on any failure."""
    loop = asyncio.get_running_loop()
    owner = _Simple()
    transport = None
    try:
        async with asyncio.timeout(timeout):
            transport, _ = await loop.create_connection(lambda: _ReplyProtocol(owner), address.host, address.port)
            auth = auth_command(address)
            transport.write((auth or b"") + encode_command(b"PING"))
            for _ in range(2 if auth else 1):
                reply = await owner.replies.get()
                if isinstance(reply, Exception):
                    raise RedisUnavailable(describe(reply))
    except (OSError, TimeoutError) as exc:
        raise RedisUnavailable(f"cannot reach Redis at {address.host}:{address.port} ({describe(exc)})") from None
    finally:
        if transport is not None:
            transport.close()


def _keepalive(transport: asyncio.BaseTransport) -> None:
    """TCP keepalive and user timeout (:data:`KEEPALIVE`) on the socket of *transport*."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE["IDLE"])
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE["INTVL"])
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE["CNT"])
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, DEAD_LINK_S * 1000)


class PubSubConnection:
    """One Redis connection in subscribe mode, carrying many channels.

    Owned by a :class:`PubSubPool`; ``channels`` maps each channel this
    connection carries to its subscribers.  Commands are written straight to the
    transport; replies are parsed by hiredis in ``_feed``.  ``_acks`` holds, in
    command order, the (kind, channel, future) each SUBSCRIBE/UNSUBSCRIBE reply
    answers (Redis answers one reply per channel, in order).
    """

    def __init__(self, pool: PubSubPool, index: int) -> None:
        self.pool = pool
        self.index = index
        self.channels: dict[bytes, set[Subscriber]] = {}
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._reader = hiredis.Reader()
        self._acks: collections.deque[tuple[bytes, bytes, asyncio.Future | None]] = collections.deque()
        self._auth_future: asyncio.Future | None = None
        self._unsent: list[bytes] = []  # SUBSCRIBEs asked for before the connection was ready
        self.ready: asyncio.Future = asyncio.get_running_loop().create_future()
        #: open, authenticated and not lost: it can carry subscriptions now
        self.up = False
        # liveness (see the module docstring): bytes came since the last tick; when the PING went out
        self._heard = False
        self._ping_sent: float | None = None
        self._tick_handle: asyncio.TimerHandle | None = None
        self._dead: str | None = None  # why the link was aborted as dead, for the loss's log line

    # -- lifecycle -----------------------------------------------------------------
    async def open(self) -> None:
        """Connect and authenticate; then send the SUBSCRIBEs that queued meanwhile."""
        loop = asyncio.get_running_loop()
        address = self.pool.address
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                transport, _ = await loop.create_connection(lambda: _ReplyProtocol(self), address.host, address.port)
                self.transport = transport
                _keepalive(transport)
                auth = auth_command(address)
                if auth is not None:
                    self._auth_future = loop.create_future()
                    transport.write(auth)
                    await self._auth_future
        except (OSError, TimeoutError, RedisUnavailable, hiredis.ReplyError) as exc:
            error = RedisUnavailable(f"pub/sub connection to {address.host}:{address.port} failed: {describe(exc)}")
            self._fail(error)
            if self.transport is not None:
                self.transport.close()  # connection_lost tells the pool
            else:
                self.pool._connection_lost(self, count=False)
            raise error from None
        if self.closed:  # lost while authenticating
            raise RedisUnavailable("pub/sub connection closed while opening")
        if self._unsent:
            self.transport.write(b"".join(self._unsent))
            self._unsent.clear()
        self.up = True
        self.ready.set_result(None)
        self._tick_handle = loop.call_later(PING_IDLE_S, self._tick)

    def close(self) -> None:
        self.closed = True
        self._stop_ticking()
        if self.transport is not None:
            self.transport.close()

    # -- liveness ------------------------------------------------------------------
    def _tick(self) -> None:
        """Every PING_IDLE_S while up: nothing heard since the last tick sends a PING; a PING left
        without any byte back for PING_TIMEOUT_S has the link judged (:meth:`_judge`)."""
        self._tick_handle = None
        if self.closed or self.transport is None:
            return
        loop = asyncio.get_running_loop()
        if self._heard:
            self._heard = False
            self._ping_sent = None
        elif self._ping_sent is None:
            self._ping_sent = loop.time()
            self.transport.write(_PING)
        elif loop.time() - self._ping_sent >= PING_TIMEOUT_S:
            # judge after the loop has polled the socket once more: a timer that fired late (a busy
            # loop) must not beat a reply that is already there (uvloop runs timers before I/O)
            self._tick_handle = loop.call_later(0.001, self._judge)
            return
        self._tick_handle = loop.call_later(PING_IDLE_S, self._tick)

    def _judge(self) -> None:
        self._tick_handle = None
        if self.closed or self.transport is None:
            return
        if self._heard:
            self._tick()
            return
        where = f"{self.pool.address.host}:{self.pool.address.port}"
        self._dead = f"no reply from Redis at {where} within {PING_TIMEOUT_S:g} s of a PING"
        stats = self.pool.stats
        stats["pubsub_ping_timeouts"] = stats.get("pubsub_ping_timeouts", 0) + 1
        if not any(c.up for c in self.pool.connections if c is not self):
            self.pool.last_error = f"pub/sub connection silent: {self._dead}"
        self.transport.abort()  # connection_lost follows: _lost closes the link's WebSockets (1012)

    def _stop_ticking(self) -> None:
        if self._tick_handle is not None:
            self._tick_handle.cancel()
            self._tick_handle = None

    # -- commands ------------------------------------------------------------------
    def subscribe(self, channel: bytes) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        self._acks.append((b"subscribe", channel, fut))
        self._write(encode_command(b"SUBSCRIBE", channel))
        return fut

    def unsubscribe(self, channel: bytes) -> None:
        self._acks.append((b"unsubscribe", channel, None))
        self._write(encode_command(b"UNSUBSCRIBE", channel))

    def _write(self, data: bytes) -> None:
        if self.closed:
            return
        if self.ready.done():
            self.transport.write(data)  # type: ignore[union-attr]
        else:
            self._unsent.append(data)

    # -- protocol callbacks ----------------------------------------------------------
    def _feed(self, data: bytes) -> None:
        self._heard = True
        reader = self._reader
        reader.feed(data)
        channels = self.channels
        deliver = self.pool.deliver
        try:
            while (reply := reader.gets()) is not False:
                if type(reply) is list and reply[0] == b"message":
                    subs = channels.get(reply[1])
                    if subs:
                        deliver(subs, reply[2])
                    continue
                self._control(reply)
        except hiredis.ProtocolError:
            log.error("pub/sub connection %d: Redis sent bytes that are not RESP; reconnecting", self.index)
            if self.transport is not None:
                self.transport.abort()

    def _control(self, reply: Any) -> None:
        if self._auth_future is not None and not self._auth_future.done():
            if isinstance(reply, hiredis.ReplyError):
                self._auth_future.set_exception(RedisUnavailable(describe(reply)))
            else:
                self._auth_future.set_result(None)
            return
        if reply == b"PONG" or (isinstance(reply, list) and reply and reply[0] == b"pong"):
            return  # a liveness PING's answer (subscribed mode answers with a list); _feed heard it
        if isinstance(reply, list) and reply and reply[0] in (b"subscribe", b"unsubscribe"):
            if self._acks and self._acks[0][0] == reply[0] and self._acks[0][1] == reply[1]:
                _, _, fut = self._acks.popleft()
                if fut is not None and not fut.done():
                    fut.set_result(None)
                return
        log.warning("pub/sub connection %d: unexpected reply of type %s", self.index, type(reply).__name__)

    def _lost(self, exc: Exception | None) -> None:
        was_closing = self.closed
        self._fail(RedisUnavailable("pub/sub connection lost"))
        if not was_closing:
            log.warning(
                "pub/sub connection %d lost (%s); closing its %d sessions",
                self.index,
                self._dead or exc or "closed by Redis",
                sum(len(s) for s in self.channels.values()),
            )
        self.pool._connection_lost(self, count=not was_closing)

    def _fail(self, error: Exception) -> None:
        self.closed = True
        self.up = False
        self._stop_ticking()
        if self._auth_future is not None and not self._auth_future.done():
            self._auth_future.set_exception(error)
        while self._acks:
            _, _, fut = self._acks.popleft()
            if fut is not None and not fut.done():
                fut.set_exception(error)
        if not self.ready.done():
            self.ready.set_exception(error)
            self.ready.exception()  # retrieved: nobody else need await it


class PubSubPool:
    """At most ``max_connections`` pub/sub connections; channel -> connection -> subscribers.

    ``deliver(subscribers, payload)`` is called for every message (from the
    connection's ``data_received``) and must not block.  ``stats`` is a mutable
    mapping the pool increments (``pubsub_disconnects``, ``redis_messages``).
    """

    def __init__(
        self,
        address: RedisAddress,
        max_connections: int,
        deliver: Callable[[set[Subscriber], bytes], None],
        stats: dict[str, Any],
    ) -> None:
        self.address = address
        self.max_connections = max_connections
        self.deliver = deliver
        self.stats = stats
        self.connections: list[PubSubConnection] = []
        self.owner: dict[bytes, PubSubConnection] = {}
        self._next_index = 0
        self._closing = False
        #: why the last connection attempt failed, while no connection is up (None: none failed)
        self.last_error: str | None = None

    @property
    def subscription_count(self) -> int:
        return len(self.owner)

    @property
    def up(self) -> bool:
        """At least one connection is open: subscriptions can be made now (the instance's Redis health)."""
        return any(c.up for c in self.connections)

    async def keep(self, *, interval: float = KEEP_INTERVAL_S, retry: tuple[float, float] = KEEP_RETRY_S) -> None:
        """Keep at least one connection open until cancelled (the service runs it as a task).

        When none is open or opening, open one; when that fails, log it once (naming host and port,
        never the password), retry after *retry* (first, doubling to the cap), and log once more when
        Redis answers again.  Never raises but for cancellation.
        """
        where = f"{self.address.host}:{self.address.port}"
        delay = retry[0]
        when = "at start-up"
        while not self._closing:
            if not any(c.up or not c.ready.done() for c in self.connections):
                conn = self._new_connection()
                try:
                    await asyncio.shield(conn.ready)
                except RedisUnavailable as exc:
                    if self.last_error is None:
                        reason = str(exc) if where in str(exc) else f"Redis at {where}: {exc}"
                        log.warning(
                            "REDIS_URL is not usable %s: %s. /health and WebSocket upgrades answer 503 "
                            "until it is: fix REDIS_URL (host, port, user, password) or start redis-server "
                            "at %s; retrying in the background",
                            when,
                            reason,
                            where,
                        )
                    self.last_error = str(exc)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, retry[1])
                    continue
                if self.last_error is not None:
                    log.info("Redis at %s answers now", where)
                self.last_error = None
                delay = retry[0]
                when = "any more"

            await asyncio.sleep(interval)

    def _pick(self) -> PubSubConnection:
        best = min(self.connections, key=lambda c: len(c.channels), default=None)
        if best is not None and (
            len(best.channels) < CHANNELS_PER_CONNECTION or len(self.connections) >= self.max_connections
        ):
            return best
        return self._new_connection()

    def _new_connection(self) -> PubSubConnection:
        conn = PubSubConnection(self, self._next_index)
        self._next_index += 1
        self.connections.append(conn)
        task = asyncio.get_running_loop().create_task(conn.open())
        task.add_done_callback(_consume_exception)
        return conn

    async def subscribe(self, channel: bytes, sub: Subscriber) -> None:
        """Add *sub* to *channel*; return once Redis confirmed the channel's subscription.

        On RedisUnavailable the caller still owns the cleanup: call :meth:`unsubscribe`.
        """
        if self._closing:
            raise RedisUnavailable("shutting down")
        conn = self.owner.get(channel)
        ack: asyncio.Future | None
        if conn is None:
            conn = self._pick()
            self.owner[channel] = conn
            conn.channels[channel] = {sub}
            ack = conn.subscribe(channel)
        else:
            conn.channels[channel].add(sub)
            # wait for the pending SUBSCRIBE of this channel, if there is one
            ack = next((f for kind, ch, f in reversed(conn._acks) if ch == channel and kind == b"subscribe"), None)
            if ack is None:
                return
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT * 2):
                await asyncio.shield(ack)
        except TimeoutError:
            raise RedisUnavailable("SUBSCRIBE not confirmed in time") from None

    def unsubscribe(self, channel: bytes, sub: Subscriber) -> None:
        """Remove *sub*; UNSUBSCRIBE the channel when its last subscriber leaves."""
        conn = self.owner.get(channel)
        if conn is None:
            return
        subs = conn.channels.get(channel)
        if subs is None:
            return
        subs.discard(sub)
        if not subs:
            del conn.channels[channel]
            del self.owner[channel]
            conn.unsubscribe(channel)

    def _connection_lost(self, conn: PubSubConnection, *, count: bool) -> None:
        if conn in self.connections:
            self.connections.remove(conn)
        if count and not self._closing:
            self.stats["pubsub_disconnects"] += 1
        lost = conn.channels
        conn.channels = {}
        for channel, subs in lost.items():
            if self.owner.get(channel) is conn:
                del self.owner[channel]
            if not self._closing:
                for sub in subs:
                    sub.redis_lost()

    def close(self) -> None:
        self._closing = True
        for conn in list(self.connections):
            conn.close()


def _consume_exception(task: asyncio.Task) -> None:
    if not task.cancelled():
        task.exception()
