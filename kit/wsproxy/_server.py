"""The reference wsproxy: aiohttp WebSockets fed by Redis pub/sub.

Routes: ``GET /{agent_id}/ws/{session_id}`` (WebSocket), ``GET /health``,
``GET /health/deep``, ``GET /stats`` (JSON counters), ``GET /metrics`` (the same in the Prometheus
text format).

Health, for a balancer that checks every instance every few seconds: ``/health`` (the contract's
``kit_health_path``) answers from state the instance holds, with no I/O: 200 when its event loop
runs this handler and at least one pub/sub connection to Redis is up (the pool keeps one open,
:meth:`PubSubPool.keep`), else 503.  A balancer check therefore never opens a Redis connection and
costs one small response, so a busy Redis or many balancers cannot make every instance look down at
once.  ``/health/deep`` (``kit_deep_health_path``) adds a round trip to Redis on a fresh
connection (AUTH, PING): what ``fab status`` and the preflight ask.

A WebSocket request is handled in this order, and nothing later happens when
an earlier step refuses:

0. before any handler runs (:mod:`._edge`): the request head is bounded in size (431) and in
   time (closed), and connections per client address by an optional limit (429);
1. authentication (``Authorization: Bearer <jwt>``, size-capped, via
   :mod:`kit.auth`): refused with 401 JSON before any upgrade or Redis work;
   only the reason code is counted and logged, never any part of the token;
2. the handshake as RFC 6455 4.1/4.2.2 has it, which aiohttp does not enforce: HTTP/1.0 gets 400,
   a ``Sec-WebSocket-Version`` other than 13 gets 426 naming 13;
3. ``session:{id}:down`` is subscribed and Redis has confirmed it (so nothing
   published after the client sees the 101 is missed): 503 if Redis fails, and at once while
   no pub/sub connection is up and the last attempt failed or the last link went silent;
4. the upgrade; then frames queued during it are flushed.  A client's close frame is answered
   1000, or 1002 when its code may not travel on the wire (RFC 6455 7.4).

Forward path (the hot one): the pub/sub connection's ``data_received`` calls
:func:`_Forwarder.deliver`, which builds the frame once and hands the bytes to
each subscribed :class:`_Client`.  A client writes straight to its transport,
never awaiting: a client whose kernel buffer is full and whose user-space
buffer then keeps growing for more than ``ws_send_buffer_messages`` frames is
aborted and counted in ``slow_client_drops``, so one stalled reader never
delays another.  Every client is pinged every ``ws_ping_interval_secs``; a peer that leaves
a ping unanswered for ``ws_ping_timeout_secs`` is dropped and counted in ``ping_timeouts``.
The pings and their deadlines of all clients share one timer (:class:`_Pinger`), which wakes at
most every ``PING_BATCH_S`` and sends what fell due together: an idle connection costs its write
and its pong, not three wake-ups of its own (measured in docs/benchmarks.md, idle_sessions).

Ownership: the application owns the pool and the set of open clients; a
handler owns its client and always unsubscribes it in ``finally``.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import struct
from collections import deque

from aiohttp import WSMsgType, web
from aiohttp.http_exceptions import HttpProcessingError

from kit import _gc, contract
from kit._prom import CONTENT_TYPE as PROM_CONTENT_TYPE
from kit.auth import AuthError, bearer_token, verify_token
from kit.config import WsproxySettings

from ._edge import EdgeRunner, HeadLimits
from ._guard import GuardedWebSocketResponse, close_code_allowed
from ._redis import PubSubPool, RedisAddress, RedisUnavailable, Subscriber, parse_redis_url, redis_ping
from ._settings import Settings
from ._stats import Stats, metrics_text

__all__ = ["create_app", "serve", "text_frame", "WEBSOCKET_VERSION"]

log = logging.getLogger(__name__)

#: the one WebSocket version served (RFC 6455 4.4: any other is answered 426 naming it)
WEBSOCKET_VERSION = "13"
#: largest frame a client may send us (we expect none but control frames)
MAX_CLIENT_MESSAGE_BYTES = 64 * 1024
#: seconds handlers get to finish on shutdown before aiohttp closes them
SHUTDOWN_TIMEOUT = 5.0

_PING_FRAME = b"\x89\x00"
#: the ping timer wakes at most this often (or a quarter of the interval, if that is shorter): pings
#: that fall due in between go out together, at most this late
PING_BATCH_S = 0.1
_SMALL_TEXT_HEADERS = [bytes((0x81, n)) for n in range(126)]
_U16 = struct.Struct("!BBH")
_U64 = struct.Struct("!BBQ")


def text_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """An unmasked, final WebSocket frame (server to client) carrying *payload*."""
    n = len(payload)
    if n < 126:
        if opcode == 0x1:
            return _SMALL_TEXT_HEADERS[n] + payload
        return bytes((0x80 | opcode, n)) + payload
    if n < 65536:
        return _U16.pack(0x80 | opcode, 126, n) + payload
    return _U64.pack(0x80 | opcode, 127, n) + payload


def _close_frame(code: int, reason: bytes) -> bytes:
    return text_frame(code.to_bytes(2, "big") + reason, opcode=0x8)


class _Client:
    """One upgraded (or upgrading) WebSocket: its transport, buffer accounting and ping timers."""

    __slots__ = (
        "fwd",
        "ws",
        "transport",
        "pending",
        "backlog",
        "closed",
        "unanswered_since",
    )

    def __init__(self, fwd: _Forwarder) -> None:
        self.fwd = fwd
        self.ws: web.WebSocketResponse | None = None
        self.transport: asyncio.Transport | None = None
        self.pending: list[bytes] = []  # frames that arrived while the upgrade was in flight
        self.backlog = 0  # frames written since the transport's buffer was last seen empty
        self.closed = False
        self.unanswered_since: float | None = None  # the loop time of the oldest ping not answered

    # -- forward path: called from Redis data_received; never awaits --------------------
    def send_frame(self, frame: bytes) -> None:
        if self.closed:
            return
        transport = self.transport
        if transport is None:
            self.pending.append(frame)
            if len(self.pending) > self.fwd.buffer_limit:
                self._slow()
            return
        if transport.is_closing():  # the peer left; the handler will clean up
            self.closed = True
            return
        if transport.get_write_buffer_size():
            self.backlog += 1
            if self.backlog > self.fwd.buffer_limit:
                self._slow()
                return
        else:
            self.backlog = 0
        transport.write(frame)
        self.fwd.stats.messages_forwarded += 1

    def _slow(self) -> None:
        self.fwd.stats.slow_client_drops += 1
        log.info("dropping a slow client: more than %d frames buffered", self.fwd.buffer_limit)
        self.drop(1008, b"send buffer overflow")

    def redis_lost(self) -> None:
        if self.closed:
            return
        if self.transport is not None:  # not yet upgraded: the handler answers 503 instead
            self.fwd.stats.redis_lost_drops += 1
        self.drop(1012, b"redis connection lost; reconnect")

    def drop(self, code: int, reason: bytes) -> None:
        """Close now: a close frame if it can go out at once, then close (or abort if backed up)."""
        if self.closed:
            return
        self.closed = True
        self.pending.clear()
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if transport.get_write_buffer_size():
            transport.abort()
        else:
            transport.write(_close_frame(code, reason))
            transport.close()

    def release(self) -> None:
        """The handler is done with this client: stop its pings and forwarding (no close frame)."""
        self.closed = True
        self.pending.clear()

    # -- lifecycle --------------------------------------------------------------------
    def attach(self, ws: web.WebSocketResponse, transport: asyncio.Transport) -> None:
        self.ws = ws
        self.transport = transport
        pending, self.pending = self.pending, []
        for frame in pending:
            self.send_frame(frame)
        if not self.closed:
            self.fwd.pinger.add(self)

    def ping(self) -> bool:
        """Send a ping if this client is still there; False when it is not (no more pings)."""
        transport = self.transport
        if self.closed or transport is None:
            return False
        if transport.is_closing():  # the peer left and its handler has not run yet (a busy loop)
            self.release()  # writing would raise "the handler is closed", once per ping
            return False
        transport.write(_PING_FRAME)
        return True

    def pong(self) -> None:
        self.unanswered_since = None

    def ping_unanswered(self) -> None:
        self.fwd.stats.ping_timeouts += 1
        log.info("dropping a client that left a ping unanswered for %.3gs", self.fwd.ping_timeout)
        self.drop(1011, b"ping timeout")


class _Pinger:
    """The pings and pong deadlines of every client on one timer.

    Each client's next ping is due at (now + interval) and each deadline at (now + timeout), and the
    loop's clock only moves forward, so both queues stay in due order by appending: a sweep pops what
    is due from their heads.  A sweep runs at most every ``batch`` seconds, so pings that fall due
    close together go out in one wake-up (and their pongs come back together).  A client that closed
    stays queued until its turn and is then skipped; a deadline whose ping was answered (or replaced
    by a later one) is skipped too.
    """

    __slots__ = ("interval", "timeout", "batch", "pings", "deadlines", "sweeps", "_handle", "_last")

    def __init__(self, interval: float, timeout: float) -> None:
        self.interval = interval
        self.timeout = timeout
        self.batch = min(PING_BATCH_S, interval / 4)
        self.pings: deque[tuple[float, _Client]] = deque()
        self.deadlines: deque[tuple[float, _Client]] = deque()
        self.sweeps = 0  # wake-ups of the timer (a test counts them)
        self._handle: asyncio.TimerHandle | None = None
        self._last = float("-inf")

    def add(self, client: _Client) -> None:
        loop = asyncio.get_running_loop()
        self.pings.append((loop.time() + self.interval, client))
        if self._handle is None:
            self._arm(loop)

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        heads = [q[0][0] for q in (self.pings, self.deadlines) if q]
        if heads:
            self._handle = loop.call_at(max(min(heads), self._last + self.batch), self._sweep)

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        self._handle = None
        self.sweeps += 1
        now = self._last = loop.time()
        deadlines, pings = self.deadlines, self.pings
        while deadlines and deadlines[0][0] <= now:
            due, client = deadlines.popleft()
            since = client.unanswered_since
            if not client.closed and since is not None and since + self.timeout == due:
                client.ping_unanswered()
        while pings and pings[0][0] <= now:
            client = pings.popleft()[1]
            if client.ping():
                pings.append((now + self.interval, client))
                if client.unanswered_since is None:
                    client.unanswered_since = now
                    deadlines.append((now + self.timeout, client))
        self._arm(loop)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self.pings.clear()
        self.deadlines.clear()


class _Forwarder:
    """Process-wide state: settings, stats, the pub/sub pool and the open clients."""

    def __init__(self, settings: WsproxySettings, address: RedisAddress) -> None:
        self.settings = settings
        self.address = address
        self.stats = Stats()
        self.buffer_limit = settings.ws_send_buffer_messages
        self.ping_timeout = settings.ws_ping_timeout_secs
        self.pinger = _Pinger(settings.ws_ping_interval_secs, settings.ws_ping_timeout_secs)
        self.clients: set[_Client] = set()
        self.pool: PubSubPool | None = None  # made on startup, inside the loop
        self._keeper: asyncio.Task | None = None  # PubSubPool.keep, from startup to shutdown

    def deliver(self, subs: set[Subscriber], payload: bytes) -> None:
        """Forward one pub/sub payload to every subscriber of its channel (hot path)."""
        self.stats.redis_messages += 1
        if payload.isascii():
            frame = text_frame(payload)
        else:
            try:
                payload.decode("utf-8")
                frame = text_frame(payload)
            except UnicodeDecodeError:
                self.stats.binary_forwarded += 1
                frame = text_frame(payload, opcode=0x2)
        if len(subs) == 1:
            for sub in subs:
                sub.send_frame(frame)
        else:
            for sub in tuple(subs):
                sub.send_frame(frame)

    # -- handlers ----------------------------------------------------------------------
    def _refuse(self, reason: str) -> web.Response:
        self.stats.auth_failure(reason)
        log.info("refused a WebSocket: %s", reason)  # the reason code only, never the token
        return web.json_response({"error": "unauthorized", "detail": reason}, status=401)

    async def handle_ws(self, request: web.Request) -> web.StreamResponse:
        settings = self.settings
        session_id = request.match_info["session_id"]
        headers = request.headers.getall("Authorization", [])
        try:
            if len(headers) > 1:
                raise AuthError("malformed")
            token = bearer_token(headers[0] if headers else None, max_bytes=settings.max_auth_header_bytes)
            verify_token(token, secret=settings.jwt_secret, session_id=session_id, algorithm=settings.jwt_algorithm)
        except AuthError as exc:
            return self._refuse(exc.reason)
        del token

        refused = _refuse_handshake(request)
        if refused is not None:
            return refused
        # frames a client sends must be masked (RFC 6455 5.1): aiohttp does not check, the guard does.
        # autoclose off: _receive_loop answers a client's close itself (aiohttp echoes 1000 to any code)
        ws = GuardedWebSocketResponse(
            autoping=False, autoclose=False, compress=False, max_msg_size=MAX_CLIENT_MESSAGE_BYTES, timeout=2.0
        )
        if not ws.can_prepare(request).ok:
            return web.json_response(
                {"error": "not_websocket", "detail": "this path only accepts a WebSocket upgrade request"}, status=400
            )

        assert self.pool is not None
        if not self.pool.up and self.pool.last_error is not None:  # fail fast: Redis is known to be away
            self.stats.redis_unavailable += 1
            return web.json_response({"error": "unavailable", "detail": f"Redis: {self.pool.last_error}"}, status=503)
        channel = contract.pubsub_channel(session_id)
        client = _Client(self)
        try:
            try:
                await self.pool.subscribe(channel, client)
            except RedisUnavailable as exc:
                self.stats.redis_unavailable += 1
                log.warning("refused a WebSocket: cannot subscribe (%s)", exc)
                return web.json_response({"error": "unavailable", "detail": f"Redis: {exc}"}, status=503)
            if client.closed:  # overflowed or Redis died while subscribing
                return web.json_response({"error": "unavailable", "detail": "subscription lost"}, status=503)
            # the client may have left while its upgrade waited (a busy instance: its handler ran late, or
            # the subscription took long): counted, never a traceback; on a saturated instance thousands of
            # them each cost a traceback's CPU and made the instance later still
            transport = request.transport
            if transport is None or transport.is_closing():
                self.stats.upgrades_abandoned += 1
                return ws
            try:
                await ws.prepare(request)
            except ConnectionResetError:  # it left between that check and the answer
                self.stats.upgrades_abandoned += 1
                return ws
            transport = request.transport
            if transport is None or transport.is_closing():  # it left right after the 101
                return ws
            client.attach(ws, transport)
            self.clients.add(client)
            self.stats.connections_open += 1
            self.stats.connections_total += 1
            try:
                await self._receive_loop(ws, client)
            finally:
                self.stats.connections_open -= 1
                self.clients.discard(client)
        finally:
            client.release()
            self.pool.unsubscribe(channel, client)
        return ws

    @staticmethod
    async def _receive_loop(ws: web.WebSocketResponse, client: _Client) -> None:
        while not client.closed:
            msg = await ws.receive()
            kind = msg.type
            if kind is WSMsgType.PONG:
                client.pong()
            elif kind is WSMsgType.PING:
                await ws.pong(msg.data)
            elif kind is WSMsgType.ERROR:  # a protocol error: aiohttp has sent the close frame (1002, 1009)
                log.info("closed a WebSocket: %s", msg.data)  # the parser's reason, no client bytes
                return
            elif kind is WSMsgType.CLOSE:
                # RFC 6455 7.4: 1005, 1006, 1015 and codes outside 1000-4999 never travel in a close
                # frame, nor unassigned ones below 3000: such a close is a protocol error (1002)
                if close_code_allowed(msg.data):
                    await ws.close(code=1000)
                else:
                    log.info("closed a WebSocket: its close frame carried code %s, not allowed on the wire", msg.data)
                    await ws.close(code=1002, message=b"close code not allowed on the wire (RFC 6455 7.4)")
                return
            elif kind in (WSMsgType.CLOSING, WSMsgType.CLOSED):
                return
            # text / binary from a client carry nothing in this protocol: ignored

    def _health(self) -> tuple[int, dict]:
        """The shallow check: state held, no I/O (see the module's docstring)."""
        pool = self.pool
        body = {
            "status": "ok",
            "connections_open": self.stats.connections_open,
            "subscriptions": pool.subscription_count if pool else 0,
            "pubsub_connections_up": sum(c.up for c in pool.connections) if pool else 0,
        }
        if pool is None or not pool.up:
            why = pool.last_error if pool is not None and pool.last_error else "no pub/sub connection to Redis yet"
            return 503, body | {"status": "unavailable", "detail": f"Redis: {why}"}
        return 200, body

    async def handle_health(self, request: web.Request) -> web.Response:
        self.stats.health_checks += 1
        status, body = self._health()
        return web.json_response(body, status=status)

    async def handle_deep_health(self, request: web.Request) -> web.Response:
        status, body = self._health()
        try:
            await redis_ping(self.address)
        except RedisUnavailable as exc:
            return web.json_response(body | {"status": "unavailable", "detail": str(exc)}, status=503)
        return web.json_response(body, status=status)

    def _stats(self) -> dict:
        pool = self.pool
        return self.stats.to_dict(
            subscriptions=pool.subscription_count if pool else 0,
            pubsub_connections=len(pool.connections) if pool else 0,
        )

    async def handle_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self._stats())

    async def handle_metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=metrics_text(self._stats()).encode(), headers={"Content-Type": PROM_CONTENT_TYPE})

    # -- lifecycle ---------------------------------------------------------------------
    async def on_startup(self, app: web.Application) -> None:
        self.pool = PubSubPool(self.address, self.settings.pubsub_pool_size, self.deliver, self.stats.pool)
        self._keeper = asyncio.get_running_loop().create_task(self.pool.keep(), name="wsproxy pub/sub keeper")

    async def on_shutdown(self, app: web.Application) -> None:
        if self._keeper is not None:
            self._keeper.cancel()
        self.pinger.close()
        for client in list(self.clients):
            client.drop(1001, b"server shutting down")
        if self.pool is not None:
            self.pool.close()


def create_app(settings: WsproxySettings) -> web.Application:
    """The aiohttp application; Redis is first touched on startup (pool) and per request."""
    fwd = _Forwarder(settings, parse_redis_url(settings.redis_url))
    app = web.Application()
    app[_APP_STATE] = fwd
    app.router.add_get(contract.health_path(), fwd.handle_health)
    app.router.add_get(contract.deep_health_path(), fwd.handle_deep_health)
    app.router.add_get("/stats", fwd.handle_stats)
    app.router.add_get("/metrics", fwd.handle_metrics)
    app.router.add_get("/{agent_id}/ws/{session_id}", fwd.handle_ws)
    app.on_startup.append(fwd.on_startup)
    app.on_shutdown.append(fwd.on_shutdown)
    return app


def _refuse_handshake(request: web.Request) -> web.Response | None:
    """RFC 6455 4.1/4.2.2, which aiohttp does not enforce: an upgrade needs HTTP/1.1 or later (else
    400) and ``Sec-WebSocket-Version: 13`` (another version: 426 naming 13); None when both hold."""
    if request.version < (1, 1):
        return web.json_response({"error": "not_websocket", "detail": "a WebSocket upgrade needs HTTP/1.1"}, status=400)
    version = request.headers.getall("Sec-WebSocket-Version", [])
    if version and version != [WEBSOCKET_VERSION]:
        return web.json_response(
            {"error": "unsupported_websocket_version", "detail": f"only Sec-WebSocket-Version: {WEBSOCKET_VERSION}"},
            status=426,
            headers={"Sec-WebSocket-Version": WEBSOCKET_VERSION},
        )
    return None


_APP_STATE = web.AppKey("wsproxy", _Forwarder)


class _QuietBadRequests(logging.Filter):
    """aiohttp logs a malformed request with a traceback and up to 100 bytes of the offending
    header, which may be an Authorization header: keep one line naming the error class only."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.msg = "refused a malformed HTTP request: %s (HTTP %s)"
            record.args = (type(exc).__name__, exc.code)
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


async def serve(settings: Settings) -> None:
    """Listen until SIGTERM or SIGINT, then close every socket and return."""
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, _QuietBadRequests) for f in server_log.filters):
        server_log.addFilter(_QuietBadRequests())
    app = create_app(settings)
    # aiohttp arms its keep-alive timer when a connection is accepted and re-arms it after each
    # response; when it fires while no complete request head has arrived, it closes the
    # connection, however many bytes trickled in.  That is the request-header timeout (a
    # slow-loris bound), and it also bounds idle keep-alive; a handler that is running (an
    # upgraded WebSocket) is never touched by it.  The head's size is bounded by _edge.
    limits = HeadLimits.for_auth_bytes(settings.max_auth_header_bytes, per_address=settings.max_connections_per_address)
    runner = EdgeRunner(
        app,
        limits=limits,
        stats=app[_APP_STATE].stats,
        handle_signals=False,
        access_log=None,
        shutdown_timeout=SHUTDOWN_TIMEOUT,
        keepalive_timeout=settings.ws_request_header_timeout_secs,
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.host, settings.port, backlog=4096)
        await site.start()
        _gc.tune()  # start-up done: frozen, and collections rare (kit/_gc.py)
        log.info(
            "wsproxy listening on %s:%d (pub/sub pool of at most %d connections)",
            settings.host,
            settings.port,
            settings.pubsub_pool_size,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("wsproxy shutting down")
    finally:
        await runner.cleanup()
