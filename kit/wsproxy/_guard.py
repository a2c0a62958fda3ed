"""What aiohttp does not check of a client's WebSocket frames: RFC 6455 5.1, every frame masked;
and 7.4, the close codes a close frame may carry (:func:`close_code_allowed`).

aiohttp's frame reader (the Cython one and the Python one alike) unmasks a masked
frame and accepts an unmasked one.  RFC 6455 section 5.1: "The server MUST close
the connection upon receiving a frame that is not masked", and 7.4.1 names the
status, 1002 (protocol error).

:class:`MaskedFramesOnly` sits in front of aiohttp's reader: it walks the frame
headers of the bytes the connection receives (two to fourteen bytes per frame,
payloads skipped unread) and passes every byte up to the first unmasked frame on
to aiohttp's reader unchanged.  At an unmasked frame it feeds aiohttp's message
queue a ``WebSocketError(1002)``, exactly what aiohttp's reader does with a
protocol error of its own, so ``ws.receive()`` sends a close frame with 1002,
closes and returns an ``ERROR`` message; nothing of that frame or after it
reaches the reader.

:class:`GuardedWebSocketResponse` installs the guard when the upgrade completes,
bytes that came with the upgrade request included.  It reaches into three
private names of aiohttp (``WebSocketResponse._post_start``,
``RequestHandler._message_tail`` and ``._payload_parser``); they are checked when
the response is made, and tests/integration/test_wsproxy_hostile.py pins the
behaviour against the installed aiohttp.
"""

from __future__ import annotations

from typing import Any

from aiohttp import WSCloseCode, web
from aiohttp.http_websocket import WebSocketError
from aiohttp.web_protocol import RequestHandler

__all__ = ["GuardedWebSocketResponse", "MaskedFramesOnly", "UNMASKED_FRAME_REASON", "close_code_allowed"]

UNMASKED_FRAME_REASON = "client frame is not masked (RFC 6455 5.1)"

_PRIVATE_NAMES_OK = hasattr(web.WebSocketResponse, "_post_start") and {"_message_tail", "_payload_parser"} <= set(
    getattr(RequestHandler, "__slots__", ())
)


#: close codes below 3000 a peer may send (RFC 6455 7.4.1 and IANA's registry: 1012-1014 were added
#: after the RFC); 1004 is reserved, 1005, 1006 and 1015 are never sent, the rest is unassigned
_WIRE_CLOSE_CODES = frozenset((1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014))


def close_code_allowed(code: int) -> bool:
    """Whether a close frame may carry *code* (RFC 6455 7.4); 0 stands for a close frame without one.

    aiohttp's reader lets 1006 through (it is in its ``WSCloseCode``) and anything from 3000 up,
    5000 and 65535 included; RFC 6455 7.4.2 allows 3000-3999 (registered) and 4000-4999 (private).
    """
    return code == 0 or code in _WIRE_CLOSE_CODES or 3000 <= code <= 4999


class MaskedFramesOnly:
    """A stand-in for aiohttp's ``WebSocketReader`` that refuses unmasked frames.

    *reader* is aiohttp's reader (it parses what passes), *queue* its message queue
    (it gets the error).  State across calls: the bytes of a header not complete yet
    and the payload bytes of the current frame still to skip.
    """

    __slots__ = ("_reader", "_queue", "_head", "_skip", "_refused")

    def __init__(self, reader: Any, queue: Any) -> None:
        self._reader = reader
        self._queue = queue
        self._head = b""
        self._skip = 0
        self._refused = False

    def _first_unmasked(self, data: bytes) -> int:
        """Offset in *data* where the first unmasked frame starts, or -1; advances the state."""
        i, n = 0, len(data)
        while i < n:
            if self._skip:
                step = min(self._skip, n - i)
                self._skip -= step
                i += step
                continue
            old = len(self._head)
            head = self._head + data[i : i + 14 - old]
            if len(head) < 2:
                self._head = head
                return -1
            if not head[1] & 0x80:
                return i
            length = head[1] & 0x7F
            size = 6 + (2 if length == 126 else 8 if length == 127 else 0)
            if len(head) < size:
                self._head = head
                return -1
            if length == 126:
                length = int.from_bytes(head[2:4], "big")
            elif length == 127:
                length = int.from_bytes(head[2:10], "big")
            self._head = b""
            self._skip = length
            i += size - old
        return -1

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        if self._refused:
            return True, b""
        data = bytes(data)
        at = self._first_unmasked(data)
        if at < 0:
            return self._reader.feed_data(data)
        self._refused = True
        if at:
            eof, _ = self._reader.feed_data(data[:at])
            if eof:  # the reader had a complaint of its own first: that one stands
                return True, b""
        self._queue.set_exception(WebSocketError(WSCloseCode.PROTOCOL_ERROR, UNMASKED_FRAME_REASON))
        return True, b""

    def feed_eof(self) -> None:
        self._reader.feed_eof()


class GuardedWebSocketResponse(web.WebSocketResponse):
    """``web.WebSocketResponse`` whose incoming frames pass :class:`MaskedFramesOnly` first."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if not _PRIVATE_NAMES_OK:  # an aiohttp release renamed what the guard hooks into
            raise RuntimeError(
                "this aiohttp has no WebSocketResponse._post_start or RequestHandler."
                "_message_tail/_payload_parser: update kit/wsproxy/_guard.py for it"
            )
        super().__init__(*args, **kwargs)

    def _post_start(self, request: web.BaseRequest, protocol: str | None, writer: Any) -> None:
        handler = request.protocol
        tail, handler._message_tail = handler._message_tail, b""  # frames sent along with the upgrade
        super()._post_start(request, protocol, writer)
        guard = MaskedFramesOnly(handler._payload_parser, self._reader)
        handler._payload_parser = guard
        if tail:
            eof, _ = guard.feed_data(tail)
            if eof:
                handler.close()
