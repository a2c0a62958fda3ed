"""kit.wsproxy._guard.MaskedFramesOnly: the frame-header walk in front of aiohttp's reader.

Whatever way the bytes are split into reads, every byte before the first unmasked
frame reaches the reader unchanged, nothing from that frame on does, and the
queue gets one WebSocketError with 1002.
"""

from __future__ import annotations

import os
import struct

import pytest
from aiohttp.http_websocket import WebSocketError

from kit.wsproxy._guard import UNMASKED_FRAME_REASON, MaskedFramesOnly


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
    return bytes((0x80 | opcode, length[0] | 0x80)) + length[1:] + mask + bytes(
        b ^ mask[i % 4] for i, b in enumerate(payload))


def _splits(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


MASKED = _frame(b"") + _frame(b"a" * 125) + _frame(b"b" * 126, opcode=0x2) + _frame(b"c" * 70000) + _frame(
    b"p", opcode=0x9)


@pytest.mark.parametrize("size", [1, 2, 3, 7, 14, 1000, len(MASKED)])
def test_masked_frames_pass_unchanged_however_they_are_split(size: int) -> None:
    reader, queue = _Reader(), _Queue()
    guard = MaskedFramesOnly(reader, queue)
    for part in _splits(MASKED, size):
        assert guard.feed_data(part) == (False, b"")
    assert reader.data == MASKED
    assert queue.errors == []


@pytest.mark.parametrize("size", [1, 2, 5, 13, 1000, 200000])
@pytest.mark.parametrize("bad", [_frame(b"x", masked=False), _frame(b"", opcode=0x9, masked=False),
                                 _frame(b"y" * 300, masked=False)], ids=["text", "ping", "text_16bit_length"])
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
