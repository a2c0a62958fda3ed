"""A real wsproxy against peers that break HTTP or WebSocket rules on purpose, over raw sockets.

- a request head trickled in (slow loris) or never sent is closed after
  ``WS_REQUEST_HEADER_TIMEOUT_SECS``; an upgraded WebSocket is never closed by it;
- a client frame that is not masked (RFC 6455 5.1) gets a close frame with 1002 and
  the connection is closed; masked frames keep working.

Every wait is a deadline on the socket (select), never a sleep standing in for readiness.
"""

from __future__ import annotations

import base64
import os
import select
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from wsraw import read_101

from devkit.localstack import Proc, RedisServer, start_wsproxy
from kit.auth import issue_token

pytestmark = pytest.mark.timeout(60)

SECRET = "wsproxy-hostile-secret-" + "x" * 32
HEADER_TIMEOUT = 1.0
#: what the server may take beyond its bound to close (timer granularity, a loaded CI machine)
SLACK = 1.5


class _Proxy:
    def __init__(self, proc: Proc, port: int, server: RedisServer) -> None:
        self.proc = proc
        self.port = port
        self.redis = redis.Redis(host=server.host, port=server.port, password=server.password)


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer) -> Iterator[_Proxy]:
    workdir = tmp_path_factory.mktemp("wsproxy-hostile")
    proc, port = start_wsproxy(
        workdir,
        redis_url=redis_server.url,
        jwt_secret=SECRET,
        WS_REQUEST_HEADER_TIMEOUT_SECS=HEADER_TIMEOUT,
        WS_PING_INTERVAL_SECS=60,
    )
    try:
        yield _Proxy(proc, port, redis_server)
        assert "Traceback" not in proc.log_tail(500), proc.log_tail(500)
    finally:
        proc.stop()


def _sid(tag: str) -> str:
    return f"{tag}-{os.urandom(8).hex()}"


def _upgrade_request(port: int, sid: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET /agent/ws/{sid} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"Authorization: Bearer {issue_token(SECRET, sid)}\r\n\r\n"
    ).encode()


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _upgrade(port: int, sid: str, after: bytes = b"") -> tuple[socket.socket, bytes]:
    """A completed handshake (with *after* sent in the same write); the socket and bytes past the 101."""
    sock = _connect(port)
    sock.sendall(_upgrade_request(port, sid) + after)
    return sock, read_101(sock)


def _closed_within(
    sock: socket.socket, seconds: float, *, trickle: bytes = b"", every: float = 0.1, start: float | None = None
) -> float | None:
    """Seconds from *start* (default now; a time taken before the connect, since the server's clock starts
    at its accept, which a busy machine can run well before connect() returns here) until the server closed
    *sock* (EOF or reset), or None if it was still open after *seconds*.  Meanwhile writes *trickle* one
    byte per *every* seconds, and reads and drops whatever the server sends."""
    start = time.monotonic() if start is None else start
    deadline = start + seconds
    pos = 0
    while True:
        now = time.monotonic()
        if now >= deadline:
            return None
        readable, _, _ = select.select([sock], [], [], min(every, deadline - now))
        if readable:
            try:
                if not sock.recv(4096):
                    return time.monotonic() - start
            except ConnectionResetError:
                return time.monotonic() - start
        elif pos < len(trickle):
            try:
                sock.send(trickle[pos : pos + 1])
            except (BrokenPipeError, ConnectionResetError):
                return time.monotonic() - start
            pos += 1


def _masked(opcode: int, payload: bytes) -> bytes:
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    n = len(payload)
    length = bytes((0x80 | n,)) if n < 126 else bytes((0x80 | 126,)) + struct.pack("!H", n)
    return bytes((0x80 | opcode,)) + length + mask + body


def _unmasked(opcode: int, payload: bytes) -> bytes:
    assert len(payload) < 126
    return bytes((0x80 | opcode, len(payload))) + payload


def _read_frames(
    sock: socket.socket, buf: bytes, seconds: float, until=lambda frames: False
) -> tuple[list[tuple[int, bytes]], bool]:
    """Server frames (opcode, payload) until a close frame, EOF, ``until(frames)`` or the deadline;
    and whether EOF came."""
    frames: list[tuple[int, bytes]] = []
    deadline = time.monotonic() + seconds
    eof = False
    while True:
        while len(buf) >= 2:
            n, off = buf[1] & 0x7F, 2
            if n == 126:
                if len(buf) < 4:
                    break
                n, off = struct.unpack("!H", buf[2:4])[0], 4
            elif n == 127:
                if len(buf) < 10:
                    break
                n, off = struct.unpack("!Q", buf[2:10])[0], 10
            if len(buf) < off + n:
                break
            frames.append((buf[0] & 0x0F, buf[off : off + n]))
            buf = buf[off + n :]
        if eof or (frames and frames[-1][0] == 0x8) or until(frames):
            break
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        readable, _, _ = select.select([sock], [], [], remaining)
        if readable:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                eof = True
            buf += chunk
    return frames, eof


def _wait_eof(sock: socket.socket, seconds: float) -> bool:
    return _closed_within(sock, seconds) is not None


# -- F3: request-header timeout -----------------------------------------------------------------------


def test_upgrade_request_sent_a_byte_at_a_time_is_closed_after_the_header_timeout(proxy: _Proxy) -> None:
    request = _upgrade_request(proxy.port, _sid("loris"))
    assert len(request) * 0.1 > HEADER_TIMEOUT + SLACK + 5  # it could not finish in the time we wait
    t0 = time.monotonic()
    with _connect(proxy.port) as sock:
        took = _closed_within(sock, HEADER_TIMEOUT + SLACK, trickle=request, every=0.1, start=t0)
    assert took is not None, f"a trickled request head was still open after {HEADER_TIMEOUT + SLACK:g} s"
    assert took >= HEADER_TIMEOUT * 0.8, f"closed after {took:.2f} s, before the {HEADER_TIMEOUT:g} s bound"


def test_connection_that_sends_nothing_is_closed_after_the_header_timeout(proxy: _Proxy) -> None:
    with _connect(proxy.port) as sock:
        took = _closed_within(sock, HEADER_TIMEOUT + SLACK)
    assert took is not None, "a silent connection was still open"


def test_request_head_completed_in_time_is_served(proxy: _Proxy) -> None:
    """Trickled but complete within the bound: answered as usual."""
    request = b"GET /stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    with _connect(proxy.port) as sock:
        for i in range(0, len(request), 10):
            sock.sendall(request[i : i + 10])
            time.sleep(HEADER_TIMEOUT / 2 / (len(request) / 10))  # the pace of the trickle, not a readiness wait
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200"), data[:200]


def test_upgraded_websocket_is_not_closed_by_the_header_timeout(proxy: _Proxy) -> None:
    sid = _sid("long")
    sock, rest = _upgrade(proxy.port, sid)
    with sock:
        assert _closed_within(sock, HEADER_TIMEOUT * 2 + SLACK) is None, "the upgraded socket was closed"
        proxy.redis.publish(f"session:{sid}:down", b'{"still":"open"}')
        frames, eof = _read_frames(sock, rest, 10, until=lambda f: f)
        assert frames == [(0x1, b'{"still":"open"}')] and not eof


def test_bad_header_timeout_setting_exits_2_naming_it(tmp_path: Path) -> None:
    import subprocess
    import sys

    env = dict(os.environ, JWT_SECRET=SECRET, WS_REQUEST_HEADER_TIMEOUT_SECS="0", PORT="0")
    r = subprocess.run([sys.executable, "-m", "kit.wsproxy"], env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    assert "WS_REQUEST_HEADER_TIMEOUT_SECS" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


# -- F6: unmasked client frames ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("opcode", "payload"),
    [(0x1, b"hello"), (0x9, b"ping?"), (0x2, b""), (0xA, b"")],
    ids=["text", "ping", "binary_empty", "pong"],
)
def test_unmasked_client_frame_gets_close_1002_and_the_connection_closes(
    proxy: _Proxy, opcode: int, payload: bytes
) -> None:
    sock, rest = _upgrade(proxy.port, _sid("unmasked"))
    with sock:
        sock.sendall(_unmasked(opcode, payload))
        frames, eof = _read_frames(sock, rest, 10)
        closes = [p for op, p in frames if op == 0x8]
        assert closes, f"no close frame, got {frames}"
        assert struct.unpack("!H", closes[0][:2])[0] == 1002
        assert not any(op == 0xA for op, _ in frames), "the unmasked ping was answered"
        assert eof or _wait_eof(sock, 5.0), "the connection stayed open after the 1002 close"
    assert "client frame is not masked" in proxy.proc.log_tail(50)


def test_unmasked_frame_sent_with_the_upgrade_request_is_refused_too(proxy: _Proxy) -> None:
    sock, rest = _upgrade(proxy.port, _sid("pipelined"), after=_unmasked(0x9, b"early"))
    with sock:
        frames, eof = _read_frames(sock, rest, 10)
        assert [struct.unpack("!H", p[:2])[0] for op, p in frames if op == 0x8] == [1002]
        assert not any(op == 0xA for op, _ in frames)
        assert eof or _wait_eof(sock, 5.0)


def test_unmasked_frame_after_masked_ones_answers_those_then_closes_1002(proxy: _Proxy) -> None:
    sock, rest = _upgrade(proxy.port, _sid("mixed"))
    with sock:
        # one write: a masked ping (answered), a masked 200-byte text (skipped over), then an unmasked ping
        sock.sendall(_masked(0x9, b"first") + _masked(0x1, b"t" * 200) + _unmasked(0x9, b"second"))
        frames, eof = _read_frames(sock, rest, 10)
        assert frames[0] == (0xA, b"first")
        assert frames[-1][0] == 0x8 and struct.unpack("!H", frames[-1][1][:2])[0] == 1002
        assert (0xA, b"second") not in frames


def test_masked_frames_keep_working(proxy: _Proxy) -> None:
    sid = _sid("masked")
    sock, rest = _upgrade(proxy.port, sid)
    with sock:
        header_split = _masked(0x9, b"abc")
        sock.sendall(_masked(0x1, b"ignored text") + header_split[:1])  # a frame header split over two writes
        sock.sendall(header_split[1:])
        frames, _ = _read_frames(sock, rest, 10, until=lambda f: f)
        assert frames == [(0xA, b"abc")]
        proxy.redis.publish(f"session:{sid}:down", b'{"after":"pings"}')
        more, eof = _read_frames(sock, b"", 10, until=lambda f: f)
        assert more == [(0x1, b'{"after":"pings"}')] and not eof
        sock.sendall(_masked(0x8, struct.pack("!H", 1000)))
        closing, eof = _read_frames(sock, b"", 10)
        assert closing and closing[-1][0] == 0x8 and struct.unpack("!H", closing[-1][1][:2])[0] == 1000
