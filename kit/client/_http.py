"""The load client's HTTP/1.1 keep-alive pool for the session's hot path (create, run, close).

Why not httpx here: httpcore's ``AsyncConnectionPool`` rescans every connection and
every queued request on each request (and polls every idle socket in
``has_expired``), so its cost per request grows with the sessions of the process;
py-spy put 88 % of a 2,500-session generator's CPU there.  Bounding its pool only
moves the queue (the scan also covers queued requests).  This pool is O(1) per
request whatever the number of sessions: check-out is a semaphore acquire plus a
pop from a deque of idle connections, check-in an append; only the connection
being checked out is probed for a close by the server (one ``MSG_PEEK`` recv).
``bench/client_http.py`` measures both side by side.  httpx stays for everything
that is not the hot path (preflight, the controller).

:class:`HttpPool` owns its connections (``aclose`` closes them).  A request holds
one connection from the moment it is checked out until its response is read
whole; on any error or cancellation that connection is closed, never reused.
The time a request waited for a free connection (all ``max_connections`` busy)
is returned separately (``Response.pool_wait_ns``) so that the session's
timings measure the server, not a queue in the client.

The protocol subset: requests with ``Content-Length`` bodies; responses with
``Content-Length``, ``Transfer-Encoding: chunked`` or read-to-close bodies;
``Connection: close`` honoured.  ``https://`` goes through ``trio.SSLStream`` with the pool's
``ssl_context`` (:func:`~kit.client._ws.client_ssl_context`: a CA file or the system store); a
refused server certificate is :class:`CertificateError`.
"""

from __future__ import annotations

import collections
import errno
import re
import socket
import ssl
import time
from urllib.parse import urlsplit

import orjson
import trio

from ._ws import TLSError, _connect_socket, _send_all, open_tcp, open_tls

__all__ = [
    "HttpPool",
    "Response",
    "HTTPError",
    "ConnectError",
    "ConnectTimeout",
    "CertificateError",
    "ReadTimeout",
    "RemoteProtocolError",
    "ReadError",
    "MAX_HEAD_BYTES",
    "MAX_BODY_BYTES",
    "DEFAULT_MAX_CONNECTIONS",
    "mask_url",
]

#: the longest response head accepted
MAX_HEAD_BYTES = 65536
#: the longest response body accepted (the simulator's answers are a few hundred bytes)
MAX_BODY_BYTES = 16 * 1024 * 1024
#: keep-alive connections per pool (per generator process): the requests are short, so a few hundred
#: carry thousands of sessions (cost per request does not depend on it); a ramp of 500 sessions/s
#: against a server answering in 100 ms queued 16 % of requests behind 64; waiting is recorded apart
DEFAULT_MAX_CONNECTIONS = 256
_RECV = 65536
#: a URL's scheme and userinfo (up to the authority's last ``@``, as :func:`urllib.parse.urlsplit` reads it)
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/?#\s]*)@")


def mask_url(text: str) -> str:
    """*text* (a URL, an argv element or a message quoting URLs) with every URL's credentials masked.

    ``http://user:pw@host`` becomes ``http://user:***@host``; a userinfo without a password
    (``https://TOKEN@host``, often a token) becomes ``***``.  Whatever prints or writes a URL a user gave
    (meta.json, error messages, logs) passes it through this first: credentials are never written.
    """

    def hide(m: re.Match) -> str:
        user, colon, _ = m["userinfo"].partition(":")
        return f"{m['scheme']}{user}:***@" if colon else f"{m['scheme']}***@"

    return _USERINFO.sub(hide, text)


class HTTPError(Exception):
    """A request failed before a complete response was read (exception tree below)."""


class ConnectError(HTTPError):
    """The TCP (or TLS) connection could not be opened."""


class CertificateError(ConnectError):
    """The server's TLS certificate was refused (not signed by the trusted CA, wrong name, expired)."""


class ConnectTimeout(ConnectError):
    """Opening the connection took longer than the request's timeout."""


class ReadTimeout(HTTPError):
    """The response did not arrive whole within the request's timeout."""


class ReadError(HTTPError):
    """The connection failed (reset, EOF) while the response was awaited."""


class RemoteProtocolError(HTTPError):
    """The server's answer was not HTTP/1.1 this client understands."""


class Response:
    """A complete response: ``status_code``, ``headers`` (lower-case names), ``content``."""

    __slots__ = ("status_code", "headers", "content", "pool_wait_ns")

    def __init__(self, status_code: int, headers: dict[bytes, bytes], content: bytes, pool_wait_ns: int) -> None:
        self.status_code = status_code
        self.headers = headers
        self.content = content
        self.pool_wait_ns = pool_wait_ns

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self):
        return orjson.loads(self.content)


class _Conn:
    """One keep-alive connection: a non-blocking socket (or a TLS stream) and its read buffer."""

    __slots__ = ("sock", "stream", "buf", "requests")

    def __init__(self, sock: socket.socket | None, stream: trio.SSLStream[trio.SocketStream] | None) -> None:
        self.sock = sock
        self.stream = stream
        self.buf = b""
        self.requests = 0

    def usable(self) -> bool:
        """False when the server closed it (or sent something unasked) while it was idle."""
        if self.buf:
            return False
        sock = self.sock
        if sock is None:
            return True  # TLS: a stale stream shows as an EOF before any byte, and is retried
        try:
            sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return True
        except OSError:
            return False
        return False  # b"" = EOF, or bytes nobody asked for

    async def recv(self) -> bytes | bytearray:
        sock = self.sock
        if sock is None:
            assert self.stream is not None  # a connection holds a socket or a TLS stream
            return await self.stream.receive_some(_RECV)
        while True:
            try:
                return sock.recv(_RECV)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(sock)

    def close(self) -> None:
        if self.sock is not None:
            trio.lowlevel.notify_closing(self.sock)
            self.sock.close()
            self.sock = None
        elif self.stream is not None:
            stream, self.stream = self.stream, None
            # closing TLS needs an await; the transport goes with the object
            try:
                stream.transport_stream.socket.close()
            except Exception:  # noqa: BLE001 - best effort on an already broken stream
                pass


class HttpPool:
    """Keep-alive connections to one origin (``http://host:port`` or ``https://...``)."""

    def __init__(
        self,
        base_url: str,
        *,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        timeout: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        u = urlsplit(base_url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"{base_url!r} is not an http:// or https:// URL")
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self.secure = u.scheme == "https"
        self.host = u.hostname
        self.port = u.port or (443 if self.secure else 80)
        default = 443 if self.secure else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        self._host_header = (host if self.port == default else f"{host}:{self.port}").encode()
        self.base_path = u.path.rstrip("/")
        self.timeout = timeout
        self.max_connections = max_connections
        self._ssl = ssl_context
        self._slots = trio.Semaphore(max_connections)
        self._idle: collections.deque[_Conn] = collections.deque()
        self._closed = False
        # statistics()
        self.requests = 0
        self.connections_opened = 0
        self.connections_reused = 0
        self.stale_discarded = 0
        self.retries = 0
        self.waited = 0
        self.wait_ns_total = 0

    def statistics(self) -> dict[str, int]:
        return {
            "requests": self.requests,
            "connections_opened": self.connections_opened,
            "connections_reused": self.connections_reused,
            "idle": len(self._idle),
            "in_use": self.max_connections - self._slots.value,
            "stale_discarded": self.stale_discarded,
            "retries": self.retries,
            "requests_waited": self.waited,
            "pool_wait_ms_total": self.wait_ns_total // 1_000_000,
        }

    async def post(self, path: str, json: object | None = None) -> Response:
        body = b"" if json is None else orjson.dumps(json)
        return await self.request(b"POST", path, body, b"application/json" if json is not None else None)

    async def get(self, path: str) -> Response:
        return await self.request(b"GET", path, b"", None)

    async def request(self, method: bytes, path: str, body: bytes = b"", content_type: bytes | None = None) -> Response:
        """Send one request and read its response whole, within ``timeout`` seconds (pool wait excluded).

        Raises a subclass of :class:`HTTPError`; never leaves a half-read connection in the pool.
        """
        if self._closed:
            raise RuntimeError("the pool is closed")
        head = b"%s %s HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n" % (
            method,
            (self.base_path + path).encode(),
            self._host_header,
            len(body),
        )
        if content_type:
            head += b"Content-Type: %s\r\n" % content_type
        data = head + b"\r\n" + body
        slots = self._slots
        t0 = time.monotonic_ns()
        try:
            slots.acquire_nowait()
            waited = 0
        except trio.WouldBlock:
            await slots.acquire()
            waited = time.monotonic_ns() - t0
            self.waited += 1
            self.wait_ns_total += waited
        try:
            self.requests += 1
            phase = ["connect"]
            with trio.move_on_after(self.timeout) as scope:
                resp = await self._exchange(data, method == b"HEAD", phase)
            if scope.cancelled_caught:
                if phase[0] == "connect":
                    raise ConnectTimeout(f"connecting to {self.host}:{self.port} took over {self.timeout:g} s")
                raise ReadTimeout(f"no complete answer from {self.host}:{self.port} within {self.timeout:g} s")
        finally:
            slots.release()
        resp.pool_wait_ns = waited
        return resp

    async def _exchange(self, data: bytes, head_only: bool, phase: list[str]) -> Response:
        """Check out (or open) a connection, send, read; ``phase[0]`` says how far it got."""
        conn = None
        try:
            reused = False
            idle = self._idle
            while idle:
                c = idle.pop()  # most recently used first: the likeliest to be alive
                if c.usable():
                    conn, reused = c, True
                    self.connections_reused += 1
                    break
                self.stale_discarded += 1
                c.close()
            for attempt in (0, 1):
                if conn is None:
                    phase[0] = "connect"
                    conn = await self._open()
                    reused = False
                phase[0] = "read"
                try:
                    await _send_all(conn.sock, conn.stream, data)
                    resp = await self._read_response(conn, head_only)
                except (OSError, trio.BrokenResourceError, trio.ClosedResourceError, _EarlyEof) as exc:
                    conn.close()
                    conn = None
                    # a kept-alive connection the server closed as we sent: nothing was read, safe to retry once
                    if reused and attempt == 0 and isinstance(exc, (_EarlyEof, ConnectionResetError, BrokenPipeError)):
                        self.retries += 1
                        continue
                    raise ReadError(_describe(exc)) from None
                conn.requests += 1
                if resp.headers.get(b"connection", b"").lower() == b"close" or self._closed:
                    conn.close()
                else:
                    self._idle.append(conn)
                conn = None
                return resp
            raise AssertionError("unreachable")
        except BaseException:  # errors and cancellation: a half-used connection is never reused
            if conn is not None:
                conn.close()
            raise

    async def _open(self) -> _Conn:
        try:
            if self.secure:
                tcp = await open_tcp(self.host, self.port)
                conn = _Conn(None, await open_tls(tcp, self.host, self._ssl))
            else:
                conn = _Conn(await _connect_socket(self.host, self.port), None)
        except TLSError as exc:
            if exc.certificate:
                raise CertificateError(f"cannot connect to {self.host}:{self.port}: {exc}") from None
            raise ConnectError(f"cannot connect to {self.host}:{self.port}: {exc}") from None
        except (OSError, trio.BrokenResourceError, ssl.SSLError) as exc:
            raise ConnectError(f"cannot connect to {self.host}:{self.port}: {_describe(exc)}") from None
        self.connections_opened += 1
        return conn

    async def _read_response(self, conn: _Conn, head_only: bool) -> Response:
        buf = conn.buf
        while True:
            end = buf.find(b"\r\n\r\n")
            if end >= 0:
                break
            if len(buf) > MAX_HEAD_BYTES:
                raise RemoteProtocolError(f"response head longer than {MAX_HEAD_BYTES} bytes")
            chunk = await conn.recv()
            if not chunk:
                if buf:
                    raise RemoteProtocolError("connection closed in the middle of the response head")
                raise _EarlyEof("connection closed before any response byte")
            buf += chunk
        lines = buf[:end].split(b"\r\n")
        status_line = lines[0].split(b" ", 2)
        if len(status_line) < 2 or not status_line[0].startswith(b"HTTP/1.") or not status_line[1].isdigit():
            raise RemoteProtocolError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
        status = int(status_line[1])
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep:
                raise RemoteProtocolError(f"malformed header line: {line[:80]!r}")
            headers[name.strip().lower()] = value.strip()
        rest = buf[end + 4 :]
        if head_only or status in (204, 304) or 100 <= status < 200:
            conn.buf = rest
            return Response(status, headers, b"", 0)
        if b"transfer-encoding" in headers and headers[b"transfer-encoding"].lower() != b"identity":
            body, rest = await _read_chunked(conn, rest)
        elif b"content-length" in headers:
            try:
                n = int(headers[b"content-length"])
            except ValueError:
                raise RemoteProtocolError("malformed Content-Length") from None
            if n < 0 or n > MAX_BODY_BYTES:
                raise RemoteProtocolError(f"Content-Length {n} out of range")
            while len(rest) < n:
                chunk = await conn.recv()
                if not chunk:
                    raise RemoteProtocolError("connection closed in the middle of the body")
                rest += chunk
            body, rest = rest[:n], rest[n:]
        else:  # read to close
            parts: list[bytes | bytearray] = [rest]
            size = len(rest)
            while True:
                chunk = await conn.recv()
                if not chunk:
                    break
                size += len(chunk)
                if size > MAX_BODY_BYTES:
                    raise RemoteProtocolError(f"body longer than {MAX_BODY_BYTES} bytes")
                parts.append(chunk)
            body, rest = b"".join(parts), b""
            headers[b"connection"] = b"close"
        conn.buf = rest
        return Response(status, headers, body, 0)

    async def aclose(self) -> None:
        """Close every idle connection; connections in use close when their request ends."""
        self._closed = True
        while self._idle:
            self._idle.pop().close()
        await trio.lowlevel.checkpoint()


class _EarlyEof(Exception):
    """EOF before any byte of the response (a kept-alive connection closed by the server)."""


async def _read_chunked(conn: _Conn, buf: bytes) -> tuple[bytes, bytes]:
    parts: list[bytes] = []
    size = 0
    while True:
        while b"\r\n" not in buf:
            chunk = await conn.recv()
            if not chunk:
                raise RemoteProtocolError("connection closed in a chunked body")
            buf += chunk
        line, buf = buf.split(b"\r\n", 1)
        try:
            n = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise RemoteProtocolError("malformed chunk size") from None
        if n == 0:
            # trailers: up to an empty line
            while True:
                while b"\r\n" not in buf:
                    chunk = await conn.recv()
                    if not chunk:
                        raise RemoteProtocolError("connection closed in the trailers")
                    buf += chunk
                line, buf = buf.split(b"\r\n", 1)
                if not line:
                    return b"".join(parts), buf
        size += n
        if size > MAX_BODY_BYTES:
            raise RemoteProtocolError(f"body longer than {MAX_BODY_BYTES} bytes")
        while len(buf) < n + 2:
            chunk = await conn.recv()
            if not chunk:
                raise RemoteProtocolError("connection closed in a chunk")
            buf += chunk
        parts.append(buf[:n])
        buf = buf[n + 2 :]


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"{errno.errorcode.get(exc.errno, exc.errno)}: {exc.strerror or exc}"
    return str(exc) or type(exc).__name__
