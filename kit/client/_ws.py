"""The trio driver of the client WebSocket (the protocol itself is ``kit.client._frames``).

Why not trio-websocket: with tokens arriving one frame per socket read its
per-message cost (tasks, memory channels, wsproto events) is several times
what the whole accounting costs; see ``bench/client_cpu.py``.

:class:`WebSocket` owns one connected, non-blocking stdlib socket driven with
``trio.lowlevel.wait_readable``/``wait_writable`` (or, for ``wss://``, a
``trio.SSLStream``).  :func:`connect` performs the handshake with extra headers
(``Authorization: Bearer ...``) and times its three steps on the returned socket
(``tcp_ns``, ``tls_ns`` (0 for ``ws://``), ``upgrade_ns``); a failed TLS handshake raises
:class:`TLSError` (``certificate`` True when the server's certificate was refused).
Reading is either ``receive_batch`` (at least one message, or ConnectionClosed) or
``run_receiver(on_batch, hub)``, which with a :class:`~kit.client._hub.Hub` lets the hub's task do the reads.
``aclose`` sends a close frame, waits briefly for the echo and closes the
socket.  Cancellation during ``connect`` closes the socket; during a read it
leaves the connection usable.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import trio

from ._frames import (
    MAX_MESSAGE_BYTES,
    OP_PING,
    OP_TEXT,
    encode_frame,
    handshake_request,
    parse_handshake,
)
from ._frames import (
    OP_CLOSE as OP_CLOSE,
)
from ._frames import (
    ConnectionClosed as ConnectionClosed,
)
from ._frames import (
    HandshakeError as HandshakeError,
)
from ._frames import (
    ProtocolError as ProtocolError,
)
from ._frames import (
    WsProtocol as WsProtocol,
)
from ._hub import SO_TIMESTAMPNS, STAMP_SPACE, TIMESPEC

__all__ = [
    "SOURCES",
    "SourceAddresses",
    "open_tcp",
    "WebSocket",
    "connect",
    "ConnectionClosed",
    "HandshakeError",
    "ProtocolError",
    "WsProtocol",
    "TLSError",
    "client_ssl_context",
    "RECV_BUFSIZE",
    "CLOSE_TIMEOUT",
]

log = logging.getLogger(__name__)

#: bytes asked of the kernel per read
RECV_BUFSIZE = 65536
#: seconds ``aclose`` waits for the server's close echo
CLOSE_TIMEOUT = 1.0


class TLSError(OSError):
    """The TLS handshake failed; ``certificate`` is True when the server's certificate was refused
    (unknown CA, wrong name, expired): that one does not get better by retrying."""

    def __init__(self, message: str, *, certificate: bool) -> None:
        super().__init__(message)
        self.certificate = certificate


def client_ssl_context(ca_file: str | None = None) -> ssl.SSLContext:
    """The context every ``https://`` and ``wss://`` connection of a process shares: certificates
    verified against *ca_file* (PEM), or the system store when None.  There is no "insecure" mode."""
    return ssl.create_default_context(cafile=ca_file)


async def open_tls(sock_stream: trio.SocketStream, host: str, ssl_context: ssl.SSLContext | None) -> trio.SSLStream:
    """TLS over *sock_stream* (the handshake done); on failure the TCP stream is closed and
    :class:`TLSError` says why."""
    stream = trio.SSLStream(sock_stream, ssl_context or client_ssl_context(), server_hostname=host)
    try:
        await stream.do_handshake()
    except (trio.BrokenResourceError, ssl.SSLError) as exc:
        cause = exc if isinstance(exc, ssl.SSLError) else exc.__cause__
        with trio.CancelScope(shield=True):
            await sock_stream.aclose()
        if isinstance(cause, ssl.SSLCertVerificationError):
            raise TLSError(
                f"TLS: the server's certificate was refused: {cause.verify_message or cause}", certificate=True
            ) from None
        raise TLSError(f"TLS handshake failed: {cause or exc or type(exc).__name__}", certificate=False) from None
    except BaseException:
        with trio.CancelScope(shield=True):
            await sock_stream.aclose()
        raise
    return stream


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

    def __init__(self, sock: socket.socket | None, stream: trio.abc.Stream | None, proto: WsProtocol) -> None:
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
        #: reads take the kernel's arrival stamp (:meth:`enable_stamps`, the hub's path)
        self._stamped = False
        self._on_batch: Callable[[list[bytes], int, int], None] | None = None
        self._end_exc: ConnectionClosed | None = None
        self.bytes_received = 0
        self.reads = 0
        #: how long connect's steps took: TCP connect, TLS handshake (0 for ws://), HTTP upgrade
        self.tcp_ns = 0
        self.tls_ns = 0
        self.upgrade_ns = 0

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
        raise self._end_exc or ConnectionClosed(
            self.proto.close_code or 1006, self.proto.close_reason or "closed locally"
        )

    def enable_stamps(self) -> None:
        """Have the kernel stamp this socket's received segments (SO_TIMESTAMPNS; OSError if refused)."""
        assert self._sock is not None
        self._sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self._stamped = True

    def _hub_readable(self) -> None:
        """The hub saw the socket readable: one read, parse, deliver (synchronously)."""
        sock, on_batch = self._sock, self._on_batch
        assert sock is not None and on_batch is not None  # run_receiver hands the hub plain sockets only
        proto = self.proto
        arrived = 0
        try:
            if self._stamped:
                data, ancillary, _, _ = sock.recvmsg(RECV_BUFSIZE, STAMP_SPACE)
                if ancillary:  # the one option enabled: (SOL_SOCKET, SCM_TIMESTAMPNS, struct timespec)
                    sec, nsec = TIMESPEC.unpack_from(ancillary[0][2])
                    arrived = sec * 1_000_000_000 + nsec
            else:
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
            mono, wall = time.monotonic_ns(), time.time_ns()
            if arrived and arrived < wall:  # the kernel's arrival, on both clocks
                mono, wall = mono - (wall - arrived), arrived
            try:
                on_batch(msgs, mono, wall)
            except Exception:
                log.exception("message handler failed; closing the connection")
                self._hub_end(ConnectionClosed(1011, "message handler failed"))
                return
        if proto.closed:
            self._hub_end(ConnectionClosed(proto.close_code or 1005, proto.close_reason))

    def _send_nowait(self) -> None:
        """Send queued control frames without blocking; what does not fit waits for the next flush."""
        data = self.proto.take_outgoing()
        assert self._sock is not None  # the hub's path: a plain socket
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
                    data = await self._stream.receive_some(RECV_BUFSIZE)  # type: ignore[assignment]  # trio types every stream's read bytes | bytearray; SSLStream's is ssl's bytes
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
        """Close the socket without a close handshake (cleanup after cancellation).

        A TLS stream cannot be closed without awaiting; its socket goes when the stream is collected.
        """
        if not self._closed:
            self._shut()

    def _shut(self) -> None:
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
        self._shut()
        if self._sock is None and self._stream is not None:
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


#: Linux's IP_BIND_ADDRESS_NO_PORT: a socket bound to a source address gets its port at connect(), so
#: one address's ephemeral ports serve every destination (not once per bound socket)
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


class SourceAddresses:
    """The local addresses this process's connections leave from, round-robin (none: the kernel's choice).

    Toward one balancer address:port a host has its ephemeral port range per source address, so
    several addresses multiply the sessions one generator host holds (Tsung's answer to the same cap).
    """

    def __init__(self) -> None:
        self.addresses: tuple[str, ...] = ()
        self._next = 0

    def set(self, addresses: list[str] | tuple[str, ...]) -> None:
        self.addresses, self._next = tuple(addresses), 0

    def take(self) -> str | None:
        if not self.addresses:
            return None
        a = self.addresses[self._next % len(self.addresses)]
        self._next += 1
        return a


#: the process's source addresses (``--source-addresses``)
SOURCES = SourceAddresses()


def _bind_source(sock: socket.socket, family: int, source: str | None) -> None:
    if source is None:
        return
    if family == socket.AF_INET:
        sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
    sock.bind((source, 0))


async def open_tcp(host: str, port: int) -> trio.SocketStream:
    """trio's TCP stream (the TLS path) from the next source address."""
    source = SOURCES.take()
    return await trio.open_tcp_stream(host, port, local_address=source)


async def _connect_socket(host: str, port: int) -> socket.socket:
    infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    last: OSError | None = None
    source = SOURCES.take()
    for family, type_, proto, _, addr in infos:
        sock = socket.socket(family, type_, proto)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            _bind_source(sock, family, source)
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


async def connect(
    url: str,
    path: str = "",
    headers: list[tuple[str, str]] | None = None,
    *,
    ssl_context: ssl.SSLContext | None = None,
    max_message: int = MAX_MESSAGE_BYTES,
) -> WebSocket:
    """Open a TCP (or TLS) connection to *url* + *path* and perform the upgrade.

    Raises OSError (connect; :class:`TLSError` for the TLS handshake), HandshakeError (non-101),
    ProtocolError.  The caller bounds it with a timeout; on any error or cancellation the socket
    is closed.  The returned socket carries the time of each step (``tcp_ns``, ``tls_ns``, ``upgrade_ns``).
    """
    t = _target(url)
    full_path = (t.base_path + path) or "/"
    request, key = handshake_request(t.host_header, full_path, headers)
    proto = WsProtocol(max_message)
    sock: socket.socket | None = None
    stream: trio.abc.Stream | None = None
    t0 = time.monotonic_ns()
    if t.secure:
        tcp = await open_tcp(t.host, t.port)
        t1 = time.monotonic_ns()
        stream = await open_tls(tcp, t.host, ssl_context)
    else:
        sock = await _connect_socket(t.host, t.port)
        t1 = time.monotonic_ns()
    t2 = time.monotonic_ns() if t.secure else t1
    ws = WebSocket(sock, stream, proto)
    ws.tcp_ns, ws.tls_ns = t1 - t0, t2 - t1
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
                chunk = await stream.receive_some(RECV_BUFSIZE)  # type: ignore[assignment]  # trio types every stream's read bytes | bytearray; SSLStream's is ssl's bytes
            if not chunk:
                raise ConnectionClosed(1006, "connection closed during the handshake")
            buf += chunk
            try:
                consumed = parse_handshake(buf, key)
            except HandshakeError as exc:
                exc.body = buf[buf.find(b"\r\n\r\n") + 4 :]
                raise
            if consumed is not None:
                break
        rest = buf[consumed:]
        if rest:  # frames that came with the 101: the first receive_batch returns them
            ws._pending = proto.feed(rest)
        ws.upgrade_ns = time.monotonic_ns() - t2
        return ws
    except BaseException:
        with trio.CancelScope(shield=True):
            await ws._abort()
        raise
