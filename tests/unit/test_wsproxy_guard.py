"""kit.wsproxy._guard.MaskedFramesOnly: the frame-header walk in front of aiohttp's reader; the close
codes a client may send; kit.wsproxy._edge: the request head's bounds in front of aiohttp's parser.

Whatever way the bytes are split into reads, every byte before the first unmasked
frame reaches the reader unchanged, nothing from that frame on does, and the
queue gets one WebSocketError with 1002.
"""

from __future__ import annotations

import os
import struct

import pytest
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.http_websocket import WebSocketError

from kit.wsproxy._edge import EdgeRunner, HeadLimits, HeadTooLarge, _BoundedHead, refusal_status
from kit.wsproxy._guard import UNMASKED_FRAME_REASON, MaskedFramesOnly, close_code_allowed


class _Reader:
    def __init__(self) -> None:
        self.data = b""
        self.eof = False

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        self.data += data
        return False, b""

    def feed_eof(self) -> None:
        self.eof = True


class _Queue:
    def __init__(self) -> None:
        self.errors: list[BaseException] = []

    def set_exception(self, exc: BaseException) -> None:
        self.errors.append(exc)


def _frame(payload: bytes, *, opcode: int = 0x1, masked: bool = True) -> bytes:
    n = len(payload)
    if n < 126:
        length = bytes((n,))
    elif n < 65536:
        length = bytes((126,)) + struct.pack("!H", n)
    else:
        length = bytes((127,)) + struct.pack("!Q", n)
    if not masked:
        return bytes((0x80 | opcode,)) + length + payload
    mask = os.urandom(4)
    return (
        bytes((0x80 | opcode, length[0] | 0x80))
        + length[1:]
        + mask
        + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    )


def _splits(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


MASKED = (
    _frame(b"") + _frame(b"a" * 125) + _frame(b"b" * 126, opcode=0x2) + _frame(b"c" * 70000) + _frame(b"p", opcode=0x9)
)


@pytest.mark.parametrize("size", [1, 2, 3, 7, 14, 1000, len(MASKED)])
def test_masked_frames_pass_unchanged_however_they_are_split(size: int) -> None:
    reader, queue = _Reader(), _Queue()
    guard = MaskedFramesOnly(reader, queue)
    for part in _splits(MASKED, size):
        assert guard.feed_data(part) == (False, b"")
    assert reader.data == MASKED
    assert queue.errors == []


@pytest.mark.parametrize("size", [1, 2, 5, 13, 1000, 200000])
@pytest.mark.parametrize(
    "bad",
    [_frame(b"x", masked=False), _frame(b"", opcode=0x9, masked=False), _frame(b"y" * 300, masked=False)],
    ids=["text", "ping", "text_16bit_length"],
)
def test_first_unmasked_frame_stops_the_bytes_and_raises_1002(size: int, bad: bytes) -> None:
    reader, queue = _Reader(), _Queue()
    guard = MaskedFramesOnly(reader, queue)
    results = [guard.feed_data(part) for part in _splits(MASKED + bad + _frame(b"after"), size)]
    # the reader got every masked frame and at most the first byte of the unmasked one (one read
    # may end between its two header bytes), never its payload or anything after it
    assert reader.data in (MASKED, MASKED + bad[:1])
    assert len(queue.errors) == 1
    err = queue.errors[0]
    assert isinstance(err, WebSocketError) and err.code == 1002 and str(err) == UNMASKED_FRAME_REASON
    first_refusal = next(i for i, r in enumerate(results) if r[0])
    assert all(r == (True, b"") for r in results[first_refusal:])


def test_eof_is_passed_on() -> None:
    reader = _Reader()
    MaskedFramesOnly(reader, _Queue()).feed_eof()
    assert reader.eof


# -- close codes a client may send (RFC 6455 7.4): anything else is answered 1002 ---------------------


@pytest.mark.parametrize(
    "code", [0, 1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999, 4000, 4999]
)
def test_close_codes_allowed_on_the_wire(code: int) -> None:
    assert close_code_allowed(code)


@pytest.mark.parametrize("code", [1, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535])
def test_close_codes_never_sent_reserved_or_out_of_range_are_not_allowed(code: int) -> None:
    assert not close_code_allowed(code)


# -- kit.wsproxy._edge: the request head's bounds, in front of aiohttp's parser ---------------------------


class _Parser:
    """Stands in for aiohttp's HttpRequestParser: a head is complete at a blank line."""

    def __init__(self, error: Exception | None = None) -> None:
        self.fed: list[bytes] = []
        self.error = error

    def feed_data(self, data: bytes) -> tuple[list, bool, bytes]:
        self.fed.append(data)
        if self.error is not None:
            raise self.error
        return [("head", None)] * data.count(b"\r\n\r\n"), False, b""

    def message_consumed(self) -> str:
        return "the parser's"


def test_head_bytes_past_the_bound_are_cut_and_refused_and_later_bytes_dropped() -> None:
    parser = _Parser()
    head = _BoundedHead(parser, 100)
    assert head.feed_data(b"GET / HTTP/1.1\r\n" + b"a" * 40) == ([], False, b"")
    with pytest.raises(HeadTooLarge) as caught:
        head.feed_data(b"b" * 1000)
    assert sum(map(len, parser.fed)) == 100  # the parser never saw a byte past the bound
    assert head.feed_data(b"c" * 10) == ([], False, b"") and sum(map(len, parser.fed)) == 100
    assert refusal_status(caught.value, line_too_long=False) == 431


def test_each_head_gets_the_whole_bound_and_the_read_that_ends_one_counts_towards_the_next() -> None:
    head = _BoundedHead(_Parser(), 100)
    for _ in range(5):  # keep-alive: many heads, each within the bound, on one connection
        head.feed_data(b"x" * 60)
        assert head.feed_data(b"\r\n\r\n")[0]
    head.feed_data(b"x" * 60 + b"\r\n\r\n" + b"y" * 30)  # ends one head, starts the next
    with pytest.raises(HeadTooLarge):
        head.feed_data(b"z" * 40)  # 64 + 30 + 40 > 100: strict


def test_a_parser_refusal_is_passed_on_and_later_bytes_dropped() -> None:
    parser = _Parser(LineTooLong(b"x", 16))
    head = _BoundedHead(parser, 1000)
    with pytest.raises(LineTooLong):
        head.feed_data(b"GET / HTTP/1.1\r\nX: " + b"x" * 20)
    parser.error = None
    assert head.feed_data(b"\r\n\r\n") == ([], False, b"") and len(parser.fed) == 1
    assert head.message_consumed() == "the parser's"


def test_request_line_length_tells_414_from_431() -> None:
    head = _BoundedHead(_Parser(), 100_000)
    head.feed_data(b"GET /" + b"p" * 9000)
    assert head.line_bytes == 9005
    head = _BoundedHead(_Parser(), 100_000)
    head.feed_data(b"GET / HTTP/1.1\r\nX: " + b"v" * 9000)
    assert head.line_bytes == len(b"GET / HTTP/1.1\r")
    assert refusal_status(LineTooLong(b"x", 8190), line_too_long=True) == 414
    assert refusal_status(LineTooLong(b"x", 8190), line_too_long=False) == 431
    assert refusal_status(BadHttpMessage("Too many headers received"), line_too_long=False) == 431
    assert refusal_status(BadHttpMessage("Invalid method"), line_too_long=False) is None


def test_limits_are_a_few_times_the_authorization_cap() -> None:
    limits = HeadLimits.for_auth_bytes(4096)
    assert (limits.field_bytes, limits.head_bytes, limits.per_address) == (4 * 4096, 8 * 4096, 0)
    assert 4096 < limits.field_bytes < limits.head_bytes


def test_edge_runner_serves_with_the_bounded_handler_of_the_installed_aiohttp() -> None:
    """Pins the aiohttp names _edge relies on (AppRunner._make_server, Server._kwargs, RequestHandler._parser)."""
    import asyncio

    from aiohttp import web

    from kit.wsproxy._stats import Stats

    async def main() -> None:
        runner = EdgeRunner(
            web.Application(), limits=HeadLimits.for_auth_bytes(4096), stats=Stats(), keepalive_timeout=3.0
        )
        await runner.setup()
        try:
            handler = runner.server()
            assert type(handler).__name__ == "_EdgeHandler"
            assert isinstance(handler._parser, _BoundedHead)
            assert (handler.max_field_size, handler.max_headers, handler.keepalive_timeout) == (16384, 128, 3.0)
        finally:
            await runner.cleanup()

    asyncio.run(main())
