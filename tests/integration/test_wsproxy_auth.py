"""A real wsproxy refuses every bad token with HTTP 401 before any upgrade and before any Redis work.

Each test resets Redis's command statistics first and checks afterwards that
Redis saw no SUBSCRIBE, that no channel has subscribers and that the wsproxy
holds no subscription and opened no pub/sub connection.
"""

from __future__ import annotations

import http.client
import importlib.util
import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from devkit.localstack import Proc, RedisServer, start_redis, start_wsproxy
from kit.auth import issue_token

pytestmark = pytest.mark.timeout(60)

_spec = importlib.util.spec_from_file_location("_auth_battery", Path(__file__).parents[1] / "unit" / "test_auth.py")
_battery = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_battery)

SECRET = _battery.SECRET
SESSION = _battery.SESSION
HOSTILE_NAMES = _battery.HOSTILE_NAMES


class _Proxy:
    def __init__(self, proc: Proc, port: int, redis_server: RedisServer) -> None:
        self.proc = proc
        self.port = port
        self.redis = redis.Redis(host=redis_server.host, port=redis_server.port, password=redis_server.password)

    def upgrade(self, session_id: str, authorization: str | list[str] | None) -> tuple[int, dict, bytes]:
        """A WebSocket upgrade request; returns (status, headers, body) of the answer."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.putrequest("GET", f"/load-test-agent/ws/{session_id}")
            for name, value in (
                ("Upgrade", "websocket"),
                ("Connection", "Upgrade"),
                ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
                ("Sec-WebSocket-Version", "13"),
            ):
                conn.putheader(name, value)
            values = [authorization] if isinstance(authorization, str) else (authorization or [])
            for value in values:
                conn.putheader("Authorization", value)
            conn.endheaders()
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def stats(self) -> dict:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("GET", "/stats")
            return json.loads(conn.getresponse().read())
        finally:
            conn.close()

    def subscribe_calls(self) -> int:
        return int(self.redis.info("commandstats").get("cmdstat_subscribe", {}).get("calls", 0))


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Proxy]:
    """An own Redis (so its command statistics are ours alone) and a wsproxy on free ports."""
    workdir = tmp_path_factory.mktemp("wsproxy-auth")
    server = start_redis(workdir)
    try:
        proc, port = start_wsproxy(workdir, redis_url=server.url, jwt_secret=SECRET)
        try:
            p = _Proxy(proc, port, server)
            yield p
            log = proc.log_path.read_text(errors="replace")
            assert "Traceback" not in log
        finally:
            proc.stop()
    finally:
        server.proc.stop()


@pytest.fixture
def clean(proxy: _Proxy) -> _Proxy:
    proxy.redis.config_resetstat()
    return proxy


def _assert_refused_without_redis(proxy: _Proxy, status: int, headers: dict, body: bytes, reason: str) -> None:
    assert status == 401
    assert "upgrade" not in headers and "sec-websocket-accept" not in headers
    assert json.loads(body) == {"error": "unauthorized", "detail": reason}
    assert proxy.subscribe_calls() == 0, "Redis saw a SUBSCRIBE for a refused request"
    assert proxy.redis.pubsub_numsub(f"session:{SESSION}:down") == [(f"session:{SESSION}:down".encode(), 0)]
    stats = proxy.stats()
    assert stats["subscriptions"] == 0
    assert stats["pubsub_connections"] == 1  # the one the pool keeps open for its health: no more
    assert stats["connections_open"] == 0


@pytest.mark.parametrize(
    ("authorization", "reason"),
    [
        (None, "missing"),
        ("", "missing"),
        ("Basic dXNlcjpwYXNzd29yZA==", "malformed"),
        ("Bearer", "malformed"),
        ("Bearer not-a-jwt", "malformed"),
        ("Bearer a.b.c", "malformed"),
        ("Bearer " + "a" * 5000, "too_large"),
    ],
    ids=[
        "no_header",
        "empty_header",
        "basic_scheme",
        "bearer_without_token",
        "not_a_jwt",
        "garbage_jwt",
        "token_over_the_auth_bound",
    ],
)
def test_bad_authorization_header_gets_401_before_upgrade(clean: _Proxy, authorization, reason: str) -> None:
    status, headers, body = clean.upgrade(SESSION, authorization)
    _assert_refused_without_redis(clean, status, headers, body, reason)


def test_two_authorization_headers_are_refused(clean: _Proxy) -> None:
    good = "Bearer " + issue_token(SECRET, SESSION)
    status, headers, body = clean.upgrade(SESSION, [good, good])
    _assert_refused_without_redis(clean, status, headers, body, "malformed")


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_token_gets_401_and_no_subscribe(clean: _Proxy, name: str) -> None:
    token, reason = _battery.hostile_tokens(SESSION, SECRET)[name]
    before = clean.stats()["auth_failures_by_reason"].get(reason, 0)
    status, headers, body = clean.upgrade(SESSION, f"Bearer {token}")
    _assert_refused_without_redis(clean, status, headers, body, reason)
    assert clean.stats()["auth_failures_by_reason"][reason] == before + 1


def test_token_for_session_a_is_refused_on_session_b(clean: _Proxy) -> None:
    token = issue_token(SECRET, _battery.OTHER_SESSION)
    status, headers, body = clean.upgrade(SESSION, f"Bearer {token}")
    _assert_refused_without_redis(clean, status, headers, body, "session_mismatch")


def test_refusals_never_log_the_token(proxy: _Proxy) -> None:
    marker = secrets.token_hex(16)
    token = _battery.forge({"session_id": SESSION, "iat": 1, "note": marker}, secret="x" * 48)
    status, _, _ = proxy.upgrade(SESSION, f"Bearer {token}")
    assert status == 401
    log = proxy.proc.log_path.read_text(errors="replace")
    assert "bad_signature" in log
    for part in token.split("."):
        assert part not in log
    assert marker not in log


def test_valid_token_is_upgraded_and_subscribes(clean: _Proxy) -> None:
    """The control: the same request with a good token does reach Redis."""
    status, headers, _ = clean.upgrade(SESSION, "Bearer " + issue_token(SECRET, SESSION))
    assert status == 101
    assert "sec-websocket-accept" in headers
    assert clean.subscribe_calls() == 1


def test_header_beyond_the_parser_limit_is_a_clean_4xx_without_upgrade(clean: _Proxy) -> None:
    """Past MAX_HEADER_FIELD_BYTES (2 MiB) aiohttp itself refuses; still no upgrade, no Redis work."""
    try:
        status, headers, _ = clean.upgrade(SESSION, "Bearer " + "a" * (3 * 1024 * 1024))
    except (ConnectionResetError, BrokenPipeError):
        status, headers = 400, {}  # refused and closed before it finished reading: also no upgrade
    assert 400 <= status < 500
    assert "sec-websocket-accept" not in headers
    assert clean.subscribe_calls() == 0
    assert clean.stats()["subscriptions"] == 0
    log = clean.proc.log_path.read_text(errors="replace")
    assert "refused a malformed HTTP request: LineTooLong" in log
    assert "Bearer aaaa" not in log, "part of the Authorization header reached the log"


def _raw_upgrade(port: int, session_id: str, authorization: bytes) -> tuple[int, bytes]:
    """An upgrade request written byte for byte (http.client cannot send bytes that are not UTF-8)."""
    import socket

    request = (
        (
            f"GET /load-test-agent/ws/{session_id} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n"
        ).encode()
        + b"Authorization: "
        + authorization
        + b"\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data and (chunk := sock.recv(65536)):
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(
            next(
                (line.split(b":", 1)[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")),
                b"0",
            )
        )
        while len(body) < length and (chunk := sock.recv(65536)):
            body += chunk
    return int(head.split(b" ", 2)[1]), body


@pytest.mark.parametrize(
    "raw",
    [b"Bearer \xff\xfe.a." + b"b" * 43, b"Bearer \xff\xfe.a.bbbb", b"Bearer " + "\u00e9.\u00e9.".encode() + b"b" * 43],
    ids=["not_utf8", "not_utf8_short", "utf8_not_ascii"],
)
def test_authorization_bytes_that_are_not_ascii_get_401_malformed_and_are_counted(clean: _Proxy, raw: bytes) -> None:
    before = clean.stats()["auth_failures_by_reason"].get("malformed", 0)
    status, body = _raw_upgrade(clean.port, SESSION, raw)
    assert status == 401, body
    assert json.loads(body) == {"error": "unauthorized", "detail": "malformed"}
    assert clean.stats()["auth_failures_by_reason"]["malformed"] == before + 1
    assert clean.subscribe_calls() == 0
    log = clean.proc.log_path.read_text(errors="replace")
    assert "Traceback" not in log and "UnicodeEncodeError" not in log
    assert "bbbb" not in log and "\\udcff" not in log and "\ufffd" not in log
