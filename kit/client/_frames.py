"""RFC 6455, client side, without I/O: frames, the parser state machine and the handshake.

:class:`WsProtocol` is pure: ``feed(bytes)`` returns the complete data messages
(``bytes`` payloads) and queues control replies (pong, close echo) in
``outgoing``.  Server frames are unmasked; ``feed`` has a fast path for small
final text frames (the token messages); everything else (16/64-bit lengths,
fragments, binary, ping/pong/close, violations) goes through ``_slow``.  Text
payloads are not UTF-8 checked here: the caller parses them as JSON, which
validates.  The trio driver is ``kit.client._ws``.
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct

__all__ = [
    "WsProtocol",
    "ProtocolError",
    "HandshakeError",
    "ConnectionClosed",
    "handshake_request",
    "parse_handshake",
    "accept_value",
    "encode_frame",
    "MAX_MESSAGE_BYTES",
    "MAX_HANDSHAKE_BYTES",
    "OP_CONT",
    "OP_TEXT",
    "OP_BINARY",
    "OP_CLOSE",
    "OP_PING",
    "OP_PONG",
]

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#: a message larger than this is a protocol error (1009)
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
#: the longest HTTP response head accepted during the handshake
MAX_HANDSHAKE_BYTES = 16384

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


class ProtocolError(Exception):
    """The server broke RFC 6455; ``code`` is the close code we answer with."""

    def __init__(self, msg: str, code: int = 1002) -> None:
        super().__init__(msg)
        self.code = code


class HandshakeError(Exception):
    """The server did not upgrade (e.g. HTTP 401); carries the status and a bit of the body."""

    def __init__(self, status: int, reason: str, body: bytes = b"") -> None:
        self.status = status
        self.reason = reason
        self.body = body
        snippet = body[:200].decode("utf-8", "replace").strip()
        super().__init__(f"HTTP {status} {reason}" + (f": {snippet}" if snippet else ""))


class ConnectionClosed(Exception):
    """The connection ended: a close frame (``code``/``reason``), EOF or a socket error (1006)."""

    def __init__(self, code: int = 1006, reason: str = "") -> None:
        super().__init__(f"websocket closed ({code}{': ' + reason if reason else ''})")
        self.code = code
        self.reason = reason


# ---------------------------------------------------------------- frames


def _mask(payload: bytes, key: bytes) -> bytes:
    n = len(payload)
    if not n:
        return b""
    k = int.from_bytes((key * (n // 4 + 1))[:n], "big")
    return (int.from_bytes(payload, "big") ^ k).to_bytes(n, "big")


def encode_frame(
    opcode: int, payload: bytes = b"", *, mask: bool = True, fin: bool = True, key: bytes | None = None
) -> bytes:
    """One frame; clients mask (RFC 6455 5.3), servers (tests, benches) pass ``mask=False``."""
    n = len(payload)
    head = bytearray([(0x80 if fin else 0) | opcode])
    mbit = 0x80 if mask else 0
    if n < 126:
        head.append(mbit | n)
    elif n < 65536:
        head.append(mbit | 126)
        head += struct.pack("!H", n)
    else:
        head.append(mbit | 127)
        head += struct.pack("!Q", n)
    if mask:
        key = key if key is not None else os.urandom(4)
        return bytes(head) + key + _mask(payload, key)
    return bytes(head) + payload


class WsProtocol:
    """Client-side frame parser and control-frame state machine (no I/O)."""

    __slots__ = (
        "_buf",
        "_frag",
        "_frag_len",
        "_frag_op",
        "outgoing",
        "closed",
        "close_sent",
        "close_code",
        "close_reason",
        "pings",
        "max_message",
    )

    def __init__(self, max_message: int = MAX_MESSAGE_BYTES) -> None:
        self._buf = b""
        self._frag: list[bytes] | None = None
        self._frag_len = 0
        self._frag_op = 0
        #: bytes that must be sent to the server (pong, close echo); the driver empties it
        self.outgoing = bytearray()
        self.closed = False  # the server's close frame has been received
        self.close_sent = False
        self.close_code: int | None = None
        self.close_reason = ""
        self.pings = 0
        self.max_message = max_message

    def feed(self, data: bytes) -> list[bytes]:
        """Consume *data*; return the payloads of the messages it completed, in order."""
        buf = self._buf + data if self._buf else data
        out: list[bytes] = []
        pos = 0
        n = len(buf)
        fast = self._frag is None and not self.closed
        while n - pos >= 2:
            b1 = buf[pos + 1]
            if fast and buf[pos] == 0x81 and b1 < 126:  # small final unmasked text frame
                end = pos + 2 + b1
                if end > n:
                    break
                out.append(buf[pos + 2 : end])
                pos = end
                continue
            nxt = self._slow(buf, pos, n, out)
            if nxt < 0:
                break
            pos = nxt
            fast = self._frag is None and not self.closed
        self._buf = buf[pos:] if pos < n else b""
        return out

    def _slow(self, buf: bytes, pos: int, n: int, out: list[bytes]) -> int:
        """Parse one frame at *pos*; return the next position, or -1 if it is incomplete."""
        b0 = buf[pos]
        b1 = buf[pos + 1]
        if self.closed:
            raise ProtocolError("data after the close frame")
        if b0 & 0x70:
            raise ProtocolError("reserved bits set without a negotiated extension")
        if b1 & 0x80:
            raise ProtocolError("the server masked a frame")
        fin = b0 & 0x80
        op = b0 & 0x0F
        length = b1 & 0x7F
        hdr = 2
        if length == 126:
            if n - pos < 4:
                return -1
            length = (buf[pos + 2] << 8) | buf[pos + 3]
            hdr = 4
        elif length == 127:
            if n - pos < 10:
                return -1
            (length,) = struct.unpack_from("!Q", buf, pos + 2)
            if length >> 63:
                raise ProtocolError("64-bit length with the top bit set")
            hdr = 10
        if op >= 0x8:
            if not fin or length > 125:
                raise ProtocolError("control frame fragmented or longer than 125 bytes")
        elif length > self.max_message or self._frag_len + length > self.max_message:
            raise ProtocolError(f"message longer than {self.max_message} bytes", 1009)
        end = pos + hdr + length
        if end > n:
            return -1
        payload = buf[pos + hdr : end]
        if op == OP_TEXT or op == OP_BINARY:
            if self._frag is not None:
                raise ProtocolError("new data frame while a fragmented message is open")
            if fin:
                out.append(payload)
            else:
                self._frag, self._frag_len, self._frag_op = [payload], length, op
        elif op == OP_CONT:
            if self._frag is None:
                raise ProtocolError("continuation frame without a message to continue")
            self._frag.append(payload)
            self._frag_len += length
            if fin:
                out.append(b"".join(self._frag))
                self._frag, self._frag_len = None, 0
        elif op == OP_PING:
            self.pings += 1
            if not self.close_sent:
                self.outgoing += encode_frame(OP_PONG, payload)
        elif op == OP_PONG:
            pass
        elif op == OP_CLOSE:
            if length == 1:
                raise ProtocolError("close frame with a 1-byte payload")
            if length >= 2:
                self.close_code = (payload[0] << 8) | payload[1]
                self.close_reason = payload[2:].decode("utf-8", "replace")
            else:
                self.close_code = 1005
            self.closed = True
            if not self.close_sent:
                self.outgoing += encode_frame(OP_CLOSE, payload[:2])
                self.close_sent = True
        else:
            raise ProtocolError(f"unknown opcode {op:#x}")
        return end

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Queue our close frame (once)."""
        if not self.close_sent:
            self.outgoing += encode_frame(OP_CLOSE, struct.pack("!H", code) + reason.encode()[:120])
            self.close_sent = True

    def take_outgoing(self) -> bytes:
        data = bytes(self.outgoing)
        self.outgoing.clear()
        return data


# ---------------------------------------------------------------- handshake


def handshake_request(
    host: str, path: str, headers: list[tuple[str, str]] | None = None, key: str | None = None
) -> tuple[bytes, str]:
    """The upgrade request and its ``Sec-WebSocket-Key``."""
    key = key or base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    for name, value in headers or ():
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
            raise ValueError(f"header {name!r} contains a line break")
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"), key


def accept_value(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()


def parse_handshake(buf: bytes, key: str) -> int | None:
    """If *buf* holds the whole response head, check it and return its length (the rest is frames).

    Returns None when more bytes are needed; raises HandshakeError (non-101) or ProtocolError.
    """
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        if len(buf) > MAX_HANDSHAKE_BYTES:
            raise ProtocolError("handshake response head too long")
        return None
    head = buf[:end].decode("latin-1").split("\r\n")
    parts = head[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise ProtocolError(f"not an HTTP response: {head[0][:80]!r}")
    status = int(parts[1])
    reason = parts[2] if len(parts) > 2 else ""
    hdrs: dict[str, str] = {}
    for line in head[1:]:
        name, _, value = line.partition(":")
        hdrs[name.strip().lower()] = value.strip()
    if status != 101:
        raise HandshakeError(status, reason, buf[end + 4 :])
    if hdrs.get("upgrade", "").lower() != "websocket" or "upgrade" not in hdrs.get("connection", "").lower():
        raise ProtocolError("101 response without Upgrade: websocket / Connection: Upgrade")
    if hdrs.get("sec-websocket-accept") != accept_value(key):
        raise ProtocolError("wrong Sec-WebSocket-Accept")
    if hdrs.get("sec-websocket-extensions"):
        raise ProtocolError("server chose an extension we did not offer")
    return end + 4
