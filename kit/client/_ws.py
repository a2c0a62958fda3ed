"""A minimal, fast client side of RFC 6455: a Sans-I/O protocol plus a trio driver.

Why not trio-websocket: with tokens arriving one frame per socket read its
per-message cost (tasks, memory channels, wsproto events) is several times
what the whole accounting costs; see ``bench/client_cpu.py``.

:class:`WsProtocol` is pure: ``feed(bytes)`` returns the complete data
messages (``bytes`` payloads) and queues any control replies (pong, close
echo) in ``outgoing``.  Server frames are unmasked; the loop has a fast path
for small final text frames (the token messages), everything else (16/64-bit
lengths, fragments, binary, ping/pong/close) goes through ``_slow``.  Text
payloads are not UTF-8 checked here: the caller parses them as JSON, which
validates.

:class:`WebSocket` owns one connected, non-blocking stdlib socket driven with
``trio.lowlevel.wait_readable``/``wait_writable`` (or, for ``wss://``, a
``trio.SSLStream``).  ``connect`` performs the handshake with extra headers
(``Authorization: Bearer ...``); ``receive_batch`` returns at least one
message or raises :class:`ConnectionClosed`; ``aclose`` sends a close frame,
waits briefly for the echo and closes the socket.  Cancellation during
``connect`` closes the socket; during ``receive_batch`` it leaves the
connection usable.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import socket
import ssl
import struct
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import trio

__all__ = [
    "WsProtocol",
    "WebSocket",
    "ProtocolError",
    "HandshakeError",
    "ConnectionClosed",
    "handshake_request",
    "parse_handshake",
    "encode_frame",
    "connect",
    "MAX_MESSAGE_BYTES",
    "RECV_BUFSIZE",
]

log = logging.getLogger(__name__)

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#: a message larger than this is a protocol error (1009)
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
#: bytes asked of the kernel per read
RECV_BUFSIZE = 65536
#: the longest HTTP response head accepted during the handshake
MAX_HANDSHAKE_BYTES = 16384
#: seconds ``aclose`` waits for the server's close echo
CLOSE_TIMEOUT = 1.0

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


def encode_frame(opcode: int, payload: bytes = b"", *, mask: bool = True, fin: bool = True,
                 key: bytes | None = None) -> bytes:
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

    __slots__ = ("_buf", "_frag", "_frag_len", "_frag_op", "outgoing", "closed", "close_sent",
                 "close_code", "close_reason", "pings", "max_message")

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
                out.append(buf[pos + 2:end])
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
        payload = buf[pos + hdr:end]
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


def handshake_request(host: str, path: str, headers: list[tuple[str, str]] | None = None,
                      key: str | None = None) -> tuple[bytes, str]:
    """The upgrade request and its ``Sec-WebSocket-Key``."""
    key = key or base64.b64encode(os.urandom(16)).decode()
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}", "Upgrade: websocket", "Connection: Upgrade",
             f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
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
        raise HandshakeError(status, reason, buf[end + 4:])
    if hdrs.get("upgrade", "").lower() != "websocket" or "upgrade" not in hdrs.get("connection", "").lower():
        raise ProtocolError("101 response without Upgrade: websocket / Connection: Upgrade")
    if hdrs.get("sec-websocket-accept") != accept_value(key):
        raise ProtocolError("wrong Sec-WebSocket-Accept")
    if hdrs.get("sec-websocket-extensions"):
        raise ProtocolError("server chose an extension we did not offer")
    return end + 4


# ---------------------------------------------------------------- trio driver


@dataclass(frozen=True)
class _Target:
    secure: bool
    host: str
    port: int
    host_header: str
    base_path: str


def _target(url: str) -> _Target:
    u = urlsplit(url)
    if u.scheme not in ("ws", "wss") or not u.hostname:
        raise ValueError(f"{url!r} is not a ws:// or wss:// URL")
    secure = u.scheme == "wss"
    port = u.port or (443 if secure else 80)
    default = 443 if secure else 80
    host_header = u.hostname if port == default else f"{u.hostname}:{port}"
    if ":" in u.hostname and port != default:
        host_header = f"[{u.hostname}]:{port}"
    return _Target(secure, u.hostname, port, host_header, u.path.rstrip("/"))


class WebSocket:
    """One client WebSocket connection.  Owns its socket; ``aclose`` releases it.

    Only one task may call ``receive_batch`` at a time; ``aclose`` may be called
    from another task (it then interrupts the reader with ConnectionClosed).
    """

    def __init__(self, sock: socket.socket | None, stream: trio.abc.Stream | None,
                 proto: WsProtocol) -> None:
        self._sock = sock
        self._stream = stream
        self.proto = proto
        self._send_lock = trio.Lock()
        self._full_read = False
        self._closed = False
        self._reading = False
        self._ended = trio.Event()  # set when the socket is closed
        self._pending: list[bytes] = []
        self._hub = None
        self._on_batch = None
        self._end_exc: ConnectionClosed | None = None
        self.bytes_received = 0
        self.reads = 0

    def fileno(self) -> int:
        assert self._sock is not None
        return self._sock.fileno()

    async def run_receiver(self, on_batch, hub=None) -> None:
        """Call ``on_batch(messages, monotonic_ns, wall_ns)`` for every read until the connection
        ends, then raise ConnectionClosed.  With a :class:`~kit.client._hub.Hub` (plain ``ws://``
        only) the reads happen in the hub's task and this task just waits for the end.
        """
        mono, wall = time.monotonic_ns, time.time_ns
        if self._pending:
            msgs, self._pending = self._pending, []
            on_batch(msgs, mono(), wall())
        if hub is None or self._sock is None:
            while True:
                batch = await self.receive_batch()
                on_batch(batch, mono(), wall())
        if self._closed:
            raise self._end_exc or ConnectionClosed(self.proto.close_code or 1006, "closed locally")
        self._on_batch = on_batch
        self._hub = hub
        hub.register(self)
        self._reading = True
        try:
            await self._ended.wait()
        finally:
            self._reading = False
            hub.unregister(self)
        raise self._end_exc or ConnectionClosed(self.proto.close_code or 1006, self.proto.close_reason or "closed locally")

    def _hub_readable(self) -> None:
        """The hub saw the socket readable: one read, parse, deliver (synchronously)."""
        sock = self._sock
        proto = self.proto
        try:
            data = sock.recv(RECV_BUFSIZE)
        except BlockingIOError:
            return
        except OSError as exc:
            self._hub_end(ConnectionClosed(1006, f"read failed: {exc}"))
            return
        if not data:
            self._hub_end(ConnectionClosed(proto.close_code or 1006, proto.close_reason or "connection lost (EOF)"))
            return
        self.reads += 1
        self.bytes_received += len(data)
        try:
            msgs = proto.feed(data)
        except ProtocolError as exc:
            proto.close(exc.code, str(exc))
            self._send_nowait()
            self._hub_end(ConnectionClosed(exc.code, f"protocol error: {exc}"))
            return
        if proto.outgoing:
            self._send_nowait()
        if msgs:
            try:
                self._on_batch(msgs, time.monotonic_ns(), time.time_ns())
            except Exception:
                log.exception("message handler failed; closing the connection")
                self._hub_end(ConnectionClosed(1011, "message handler failed"))
                return
        if proto.closed:
            self._hub_end(ConnectionClosed(proto.close_code or 1005, proto.close_reason))

    def _send_nowait(self) -> None:
        """Send queued control frames without blocking; what does not fit waits for the next flush."""
        data = self.proto.take_outgoing()
        try:
            sent = self._sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            return
        if sent < len(data):
            self.proto.outgoing[:0] = data[sent:]

    def _hub_end(self, exc: ConnectionClosed) -> None:
        if self._end_exc is None:
            self._end_exc = exc
        self.abort_nowait()

    async def receive_batch(self) -> list[bytes]:
        """Wait for, and return, at least one message; raise ConnectionClosed at the end."""
        if self._pending:
            msgs, self._pending = self._pending, []
            await trio.lowlevel.checkpoint()
            return msgs
        self._reading = True
        try:
            return await self._receive()
        finally:
            self._reading = False

    async def _receive(self) -> list[bytes]:
        proto = self.proto
        while True:
            if self._closed:
                raise ConnectionClosed(proto.close_code or 1006, proto.close_reason or "closed locally")
            sock = self._sock
            try:
                if sock is not None:
                    if not self._full_read:
                        await trio.lowlevel.wait_readable(sock)
                    try:
                        data = sock.recv(RECV_BUFSIZE)
                    except BlockingIOError:
                        self._full_read = False
                        continue
                    self._full_read = len(data) == RECV_BUFSIZE
                    if self._full_read and self.reads % 16 == 0:
                        await trio.lowlevel.checkpoint()
                else:
                    assert self._stream is not None
                    data = await self._stream.receive_some(RECV_BUFSIZE)
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                await self._abort()
                raise ConnectionClosed(1006, f"read failed: {exc}") from None
            self.reads += 1
            if not data:
                await self._abort()
                raise ConnectionClosed(proto.close_code or 1006, proto.close_reason or "connection lost (EOF)")
            self.bytes_received += len(data)
            try:
                msgs = proto.feed(data)
            except ProtocolError as exc:
                proto.close(exc.code, str(exc))
                await self._flush()
                await self._abort()
                raise ConnectionClosed(exc.code, f"protocol error: {exc}") from None
            if proto.outgoing:
                await self._flush()
            if msgs:
                return msgs
            if proto.closed:
                await self._abort()
                raise ConnectionClosed(proto.close_code or 1005, proto.close_reason)

    async def send_text(self, text: str | bytes) -> None:
        payload = text.encode() if isinstance(text, str) else text
        self.proto.outgoing += encode_frame(OP_TEXT, payload)
        await self._flush()

    async def ping(self, payload: bytes = b"") -> None:
        self.proto.outgoing += encode_frame(OP_PING, payload)
        await self._flush()

    async def _flush(self) -> None:
        async with self._send_lock:
            data = self.proto.take_outgoing()
            if data:
                try:
                    await _send_all(self._sock, self._stream, data)
                except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
                    pass  # the read side reports the failure

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        """Send close, wait up to CLOSE_TIMEOUT for the echo, close the socket.  Idempotent."""
        if self._closed:
            return
        try:
            if not self.proto.close_sent:
                self.proto.close(code, reason)
                await self._flush()
            with trio.move_on_after(CLOSE_TIMEOUT):
                if self._reading:  # another task reads: it sees the echo and closes the socket
                    await self._ended.wait()
                while not self.proto.closed and not self._closed:
                    try:
                        await self.receive_batch()
                    except ConnectionClosed:
                        break
        finally:
            await self._abort()

    def abort_nowait(self) -> None:
        """Close the socket without a close handshake (cleanup after cancellation)."""
        if self._closed:
            return
        if self._hub is not None:
            self._hub.unregister(self)
        self._closed = True
        self._ended.set()
        if self._sock is not None:
            trio.lowlevel.notify_closing(self._sock)
            self._sock.close()

    async def _abort(self) -> None:
        if self._closed:
            return
        if self._hub is not None:
            self._hub.unregister(self)
        self._closed = True
        self._ended.set()
        if self._sock is not None:
            trio.lowlevel.notify_closing(self._sock)
            self._sock.close()
        elif self._stream is not None:
            with trio.CancelScope(shield=True):
                with trio.move_on_after(CLOSE_TIMEOUT):
                    await self._stream.aclose()

    @property
    def closed(self) -> bool:
        return self._closed


async def _send_all(sock: socket.socket | None, stream: trio.abc.Stream | None, data: bytes) -> None:
    if sock is None:
        assert stream is not None
        await stream.send_all(data)
        return
    view = memoryview(data)
    while view:
        try:
            sent = sock.send(view)
        except BlockingIOError:
            await trio.lowlevel.wait_writable(sock)
            continue
        view = view[sent:]


async def _connect_socket(host: str, port: int) -> socket.socket:
    infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    last: OSError | None = None
    for family, type_, proto, _, addr in infos:
        sock = socket.socket(family, type_, proto)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            err = sock.connect_ex(addr)
            if err not in (0, 115, 36):  # EINPROGRESS (Linux 115), EINPROGRESS (BSD 36)
                raise OSError(err, os.strerror(err))
            await trio.lowlevel.wait_writable(sock)
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise OSError(err, os.strerror(err))
            return sock
        except BaseException as exc:
            trio.lowlevel.notify_closing(sock)
            sock.close()
            if not isinstance(exc, OSError):
                raise
            last = exc
    raise last or OSError(f"no address for {host}")


async def connect(url: str, path: str = "", headers: list[tuple[str, str]] | None = None, *,
                  ssl_context: ssl.SSLContext | None = None,
                  max_message: int = MAX_MESSAGE_BYTES) -> WebSocket:
    """Open a TCP (or TLS) connection to *url* + *path* and perform the upgrade.

    Raises OSError (connect), HandshakeError (non-101), ProtocolError.  The
    caller bounds it with a timeout; on any error or cancellation the socket
    is closed.
    """
    t = _target(url)
    full_path = (t.base_path + path) or "/"
    request, key = handshake_request(t.host_header, full_path, headers)
    proto = WsProtocol(max_message)
    sock: socket.socket | None = None
    stream: trio.abc.Stream | None = None
    if t.secure:
        stream = await trio.open_ssl_over_tcp_stream(
            t.host, t.port, ssl_context=ssl_context or ssl.create_default_context())
    else:
        sock = await _connect_socket(t.host, t.port)
    ws = WebSocket(sock, stream, proto)
    try:
        await _send_all(sock, stream, request)
        buf = b""
        while True:
            if sock is not None:
                await trio.lowlevel.wait_readable(sock)
                try:
                    chunk = sock.recv(RECV_BUFSIZE)
                except BlockingIOError:
                    continue
            else:
                assert stream is not None
                chunk = await stream.receive_some(RECV_BUFSIZE)
            if not chunk:
                raise ConnectionClosed(1006, "connection closed during the handshake")
            buf += chunk
            try:
                consumed = parse_handshake(buf, key)
            except HandshakeError as exc:
                exc.body = buf[buf.find(b"\r\n\r\n") + 4:]
                raise
            if consumed is not None:
                break
        rest = buf[consumed:]
        if rest:  # frames that came with the 101: the first receive_batch returns them
            ws._pending = proto.feed(rest)
        return ws
    except BaseException:
        with trio.CancelScope(shield=True):
            await ws._abort()
        raise
