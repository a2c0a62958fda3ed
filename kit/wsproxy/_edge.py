"""Everything a peer sends before a handler runs is bounded in memory and in time.

How aiohttp (3.14, its C parser) bounds a request head: three numbers and nothing else.  The request
line is refused past ``max_line_size``, one header field (name and value together) past
``max_field_size`` (both raise ``LineTooLong`` as the bytes arrive, nothing past the bound is kept),
and the field count past ``max_headers`` (128 by default).  Nothing bounds a head as a whole but the
product, and every field is held twice (bytes and str) until the head completes.  The wsproxy used to
raise ``max_field_size`` to 2 MiB so that an oversized ``Authorization`` reached its own 401: one
connection that never finished its head could make it hold 128 x 2 MiB (measured: RSS 49 -> 520 MB,
and 393 MB still after the connection closed).

Bounds (``B`` is ``WS_MAX_AUTH_HEADER_BYTES``, 4096 by default; :class:`HeadLimits`):

- one header field, name and value: ``FIELD_FACTOR * B`` bytes (16 KiB), so an ``Authorization``
  header a little over ``B`` still gets the 401 ``too_large`` that names the reason;
- the whole head: ``HEAD_FACTOR * B`` bytes (32 KiB), counted over every byte the connection sent
  since its previous head completed (the read that completes one head counts towards the next, so the
  bound errs on the strict side; a body counts too: no wsproxy route takes one);
- fields: ``MAX_HEADERS``; the request line: ``MAX_LINE_BYTES`` (aiohttp's default);
- time: ``WS_REQUEST_HEADER_TIMEOUT_SECS`` from the accept (or the previous response) to a complete
  head, aiohttp's keep-alive timer (see ``serve``); later the connection is closed;
- connections per client address: ``WS_MAX_CONNECTIONS_PER_ADDRESS`` (:mod:`._settings`), 0 (no
  limit) by default; past it a new connection gets 429 at once and is closed, unread.

A head over a size bound is answered 431 (RFC 6585; 414 when the request line itself is too long),
with a body that names the bounds and echoes no byte of the request, and the connection is closed;
nothing more of it is parsed or kept.  Each refusal is counted (``head_refusals``,
``address_refusals``) and logged as one line by ``_server._QuietBadRequests``.

Ownership: :class:`EdgeRunner` is an ``AppRunner`` whose server makes :class:`_EdgeHandler`
protocols; a handler owns its parser's wrapper (:class:`_BoundedHead`) and its place in the
per-address count, given back in ``connection_lost``.  This reaches into aiohttp's
``RequestHandler._parser``, ``AppRunner._make_server`` and ``Server._kwargs``/``_loop``;
:func:`_check_aiohttp` names them when a release moves them, and tests/unit/test_wsproxy_guard.py
pins them against the installed aiohttp.
"""

from __future__ import annotations

import asyncio
import collections
import json
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler

__all__ = ["EdgeRunner", "HeadLimits", "HeadTooLarge", "FIELD_FACTOR", "HEAD_FACTOR", "MAX_HEADERS", "MAX_LINE_BYTES"]

#: one header field (name + value) may be this many times WS_MAX_AUTH_HEADER_BYTES
FIELD_FACTOR = 4
#: a whole request head may be this many times WS_MAX_AUTH_HEADER_BYTES
HEAD_FACTOR = 8
#: header fields in one head (aiohttp's default; a browser sends about 15)
MAX_HEADERS = 128
#: bytes of the request line (aiohttp's default)
MAX_LINE_BYTES = 8190

_TOO_MANY_HEADERS = "Too many headers received"  # aiohttp's message for max_headers


@dataclass(frozen=True, kw_only=True)
class HeadLimits:
    """The bounds of one request head and of connections per address (see the module docstring)."""

    field_bytes: int
    head_bytes: int
    max_headers: int = MAX_HEADERS
    line_bytes: int = MAX_LINE_BYTES
    #: connections one client address may hold open at once (0: no limit)
    per_address: int = 0

    @classmethod
    def for_auth_bytes(cls, max_auth_header_bytes: int, *, per_address: int = 0) -> HeadLimits:
        return cls(
            field_bytes=FIELD_FACTOR * max_auth_header_bytes,
            head_bytes=HEAD_FACTOR * max_auth_header_bytes,
            per_address=per_address,
        )

    def describe(self) -> str:
        return (
            f"a request head may have at most {self.head_bytes} bytes, {self.max_headers} header fields "
            f"and {self.field_bytes} bytes per field"
        )


class HeadTooLarge(BadHttpMessage):
    """The head as a whole passed :attr:`HeadLimits.head_bytes` (answered 431)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"request head larger than {limit} bytes")


class _BoundedHead:
    """Stands in for a connection's ``HttpRequestParser``: counts the head's bytes before it parses them.

    A read that would take the head past the bound is cut at the bound (the parser may then name a
    field too long, else it is :class:`HeadTooLarge`).  After a refusal (its own or the parser's) it
    drops every later byte: the parser is in an error state and nothing more is kept.  Everything but
    ``feed_data`` is the parser's.
    """

    __slots__ = ("_parser", "_limit", "_seen", "_line_ended", "line_bytes", "refused")

    def __init__(self, parser: Any, limit: int) -> None:
        self._parser = parser
        self._limit = limit
        self._seen = 0
        self._line_ended = False
        #: bytes of the current head's request line so far (a LineTooLong with this over the line bound
        #: is the request line's, else a header field's)
        self.line_bytes = 0
        self.refused = False

    def _count_line(self, data: bytes) -> None:
        if not self._line_ended:
            end = data.find(b"\n")
            self._line_ended = end >= 0
            self.line_bytes += len(data) if end < 0 else end

    def feed_data(self, data: bytes) -> tuple[list, bool, bytes]:
        if self.refused:
            return [], False, b""
        room = self._limit - self._seen
        over = len(data) > room
        if over:  # the parser sees the bytes up to the bound: its own complaint is the more precise one
            self.refused = True
            data = data[:room]
        self._count_line(data)
        try:
            messages, upgraded, tail = self._parser.feed_data(data) if data else ([], False, b"")
        except HttpProcessingError:
            self.refused = True
            raise
        if over:
            raise HeadTooLarge(self._limit)
        if messages:  # a head completed in this read: what follows it starts the next one
            self._seen = len(data)
            self._line_ended, self.line_bytes = False, 0
            self._count_line(data.rpartition(b"\r\n\r\n")[2])
        else:
            self._seen += len(data)
        return messages, upgraded, tail

    def __getattr__(self, name: str) -> Any:
        return getattr(self._parser, name)


def refusal_status(exc: BaseException, *, line_too_long: bool) -> int | None:
    """The status a head refused for its size gets: 431, or 414 when *line_too_long* (the request
    line passed its bound); None: *exc* is not a size refusal."""
    if isinstance(exc, HeadTooLarge):
        return 431
    if isinstance(exc, LineTooLong):
        return 414 if line_too_long else 431
    if isinstance(exc, BadHttpMessage) and exc.message == _TOO_MANY_HEADERS:
        return 431
    return None


def _plain_response(status: int, reason: str, body: dict) -> bytes:
    payload = json.dumps(body).encode()
    return (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode() + payload


class _EdgeHandler(RequestHandler):
    """aiohttp's connection protocol with the head bounded (:class:`_BoundedHead`) and connections
    counted per client address."""

    __slots__ = ("_edge", "_head", "_address", "_refused_at_accept")

    def __init__(self, manager: _EdgeServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._edge = manager.edge
        self._head = _BoundedHead(self._parser, self._edge.limits.head_bytes)
        # a stand-in with the parser's interface (feed_data; the rest through __getattr__), where aiohttp's
        # annotation names its own parser class
        self._parser = self._head  # type: ignore[assignment]
        self._address: str | None = None  # counted in edge.open_by_address while this is set
        self._refused_at_accept = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        edge = self._edge
        if edge.limits.per_address:
            peer = transport.get_extra_info("peername")
            address = peer[0] if isinstance(peer, tuple) and peer else None
            if address is not None:
                if edge.open_by_address[address] >= edge.limits.per_address:
                    self._refused_at_accept = True
                    edge.refuse_address(address, transport)  # type: ignore[arg-type]
                    return
                edge.open_by_address[address] += 1
                self._address = address
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._address is not None:
            self._edge.release(self._address)
            self._address = None
        if self._refused_at_accept:
            return
        super().connection_lost(exc)

    def handle_error(
        self, request: Any, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> web.StreamResponse:
        if exc is not None:
            bounded = refusal_status(exc, line_too_long=self._head.line_bytes > self._edge.limits.line_bytes)
            if bounded is not None:
                self._edge.stats.head_refusals += 1
                status = bounded
                exc.code = bounded  # type: ignore[attr-defined]  # the log line names the status answered
                what = "request line too long" if bounded == 414 else "request header fields too large"
                message = f"{what}: {self._edge.limits.describe()}"
        return super().handle_error(request, status, exc, message)


class _Edge:
    """Process-wide: the limits, the open connections per client address, the counters."""

    def __init__(self, limits: HeadLimits, stats: Any) -> None:
        self.limits = limits
        self.stats = stats
        self.open_by_address: collections.Counter[str] = collections.Counter()
        self._refusal = _plain_response(
            429,
            "Too Many Requests",
            {
                "error": "too_many_connections",
                "detail": f"at most {limits.per_address} connections per client address (WS_MAX_CONNECTIONS_PER_ADDRESS)",
            },
        )

    def refuse_address(self, address: str, transport: asyncio.Transport) -> None:
        self.stats.address_refusals += 1
        transport.write(self._refusal)
        transport.close()

    def release(self, address: str) -> None:
        left = self.open_by_address[address] - 1
        if left > 0:
            self.open_by_address[address] = left
        else:
            del self.open_by_address[address]


class _EdgeServer(web.Server):
    """``web.Server`` whose connections are :class:`_EdgeHandler` protocols."""

    def __init__(self, edge: _Edge, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.edge = edge

    def __call__(self) -> RequestHandler:
        return _EdgeHandler(self, loop=self._loop, **self._kwargs)


def _check_aiohttp() -> None:
    missing = [
        name
        for name, ok in (
            ("RequestHandler._parser", any("_parser" in getattr(c, "__slots__", ()) for c in RequestHandler.__mro__)),
            ("AppRunner._make_server", hasattr(web.AppRunner, "_make_server")),
        )
        if not ok
    ]
    if missing:
        raise RuntimeError(f"this aiohttp has no {', '.join(missing)}: update kit/wsproxy/_edge.py for it")


class EdgeRunner(web.AppRunner):
    """``web.AppRunner`` that serves *app* with the request head and connections per address bounded
    by *limits*; refusals are counted in *stats* (``head_refusals``, ``address_refusals``).

    The other keyword arguments are ``AppRunner``'s; ``max_line_size``, ``max_field_size`` and
    ``max_headers`` come from *limits*.
    """

    def __init__(self, app: web.Application, *, limits: HeadLimits, stats: Any, **kwargs: Any) -> None:
        _check_aiohttp()
        super().__init__(
            app,
            max_line_size=limits.line_bytes,
            max_field_size=limits.field_bytes,
            max_headers=limits.max_headers,
            **kwargs,
        )
        self._edge = _Edge(limits, stats)

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()  # the app's startup runs here
        kwargs = getattr(server, "_kwargs", None)
        if kwargs is None:
            raise RuntimeError("this aiohttp's web.Server has no _kwargs: update kit/wsproxy/_edge.py for it")
        return _EdgeServer(
            self._edge,
            server.request_handler,
            request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation,
            loop=asyncio.get_running_loop(),
            **kwargs,
        )
