"""The reference wsproxy as a real process between a real redis-server and real WebSocket clients.

Clients are aiohttp's (under ``asyncio.run`` in sync tests) or raw sockets
where a test needs a peer that misbehaves (never reads, never answers pings).
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
import redis
from wsraw import read_101

from devkit.localstack import Proc, RedisServer, start_redis, start_wsproxy
from kit.auth import issue_token

pytestmark = pytest.mark.timeout(90)

SECRET = "wsproxy-integration-secret-" + "x" * 32


class Proxy:
    """A wsproxy process plus helpers to talk to it and to its Redis."""

    def __init__(self, proc: Proc, port: int, server: RedisServer) -> None:
        self.proc = proc
        self.port = port
        self.server = server
        self.redis = redis.Redis(host=server.host, port=server.port, password=server.password)

    def url(self, session_id: str) -> str:
        return f"http://127.0.0.1:{self.port}/load-test-agent/ws/{session_id}"

    def headers(self, session_id: str) -> dict[str, str]:
        return {"Authorization": "Bearer " + issue_token(SECRET, session_id)}

    def get(self, path: str) -> tuple[int, dict]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read())
        finally:
            conn.close()

    def stats(self) -> dict:
        return self.get("/stats")[1]

    def numsub(self, session_id: str) -> int:
        channel = f"session:{session_id}:down"
        return dict(self.redis.pubsub_numsub(channel))[channel.encode()]

    def wait_for(self, predicate, what: str, timeout: float = 10.0) -> None:
        """Poll *predicate* (bounded); fail naming *what* if it never holds."""
        deadline = time.monotonic() + timeout
        delay = 0.005
        while not predicate():
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {what}; stats={self.stats()}")
            time.sleep(delay)
            delay = min(delay * 2, 0.1)


@pytest.fixture
def proxy_factory(tmp_path: Path, redis_server: RedisServer):
    """Start wsproxies with chosen settings (``proxy_factory(PUBSUB_POOL_SIZE=1)``); stop them after."""
    procs: list[Proc] = []

    def make(server: RedisServer | None = None, redis_url: str | None = None, **settings: object) -> Proxy:
        server = server or redis_server
        proc, port = start_wsproxy(tmp_path, redis_url=redis_url or server.url, jwt_secret=SECRET, **settings)
        procs.append(proc)
        return Proxy(proc, port, server)

    yield make
    for proc in procs:
        proc.stop()
        assert "Traceback" not in proc.log_tail(200), proc.log_tail(200)


@pytest.fixture
def proxy(proxy_factory) -> Proxy:
    return proxy_factory()


def _sid(tag: str) -> str:
    return f"{tag}-{os.urandom(8).hex()}"


def _message(sid: str, seq: int, text: str = "tok") -> bytes:
    return json.dumps(
        {"type": "token", "query_id": sid, "seq": seq, "ts": time.time_ns(), "text": text}, separators=(",", ":")
    ).encode()


# -- forwarding ------------------------------------------------------------------------------------


def test_published_messages_arrive_verbatim_in_order_one_text_frame_each(proxy: Proxy) -> None:
    sid = _sid("order")
    sent = [_message(sid, i, text=f't{i} \u00e9\u6f22 "q"') for i in range(200)]

    async def main() -> list[aiohttp.WSMessage]:
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(proxy.url(sid), headers=proxy.headers(sid)) as ws:
                with proxy.redis.pipeline(transaction=False) as pipe:
                    for payload in sent:
                        pipe.publish(f"session:{sid}:down", payload)
                    assert all(n == 1 for n in pipe.execute())
                return [await ws.receive(timeout=10) for _ in sent]

    got = asyncio.run(main())
    assert all(m.type is aiohttp.WSMsgType.TEXT for m in got)
    assert [m.data.encode() for m in got] == sent
    assert proxy.stats()["messages_forwarded"] == len(sent)


def test_every_socket_of_one_session_gets_every_message(proxy: Proxy) -> None:
    sid = _sid("fanout")
    sent = [_message(sid, i) for i in range(20)]

    async def main() -> list[list[bytes]]:
        async with aiohttp.ClientSession() as session:
            a = await session.ws_connect(proxy.url(sid), headers=proxy.headers(sid))
            b = await session.ws_connect(proxy.url(sid), headers=proxy.headers(sid))
            assert proxy.numsub(sid) == 1  # one Redis subscription shared by both sockets
            for payload in sent:
                proxy.redis.publish(f"session:{sid}:down", payload)
            out = [[(await ws.receive(timeout=10)).data.encode() for _ in sent] for ws in (a, b)]
            await a.close()
            await b.close()
            return out

    got_a, got_b = asyncio.run(main())
    assert got_a == sent and got_b == sent


@pytest.mark.parametrize(("pool_size", "connections"), [(1, 1), (512, 2)], ids=["pool_1", "pool_512"])
def test_three_hundred_sessions_share_few_pubsub_connections(proxy_factory, pool_size: int, connections: int) -> None:
    """PUBSUB_POOL_SIZE caps the connections; below the cap a connection carries 256 channels first."""
    proxy = proxy_factory(PUBSUB_POOL_SIZE=pool_size)
    sids = [_sid(f"s{i}") for i in range(300)]
    per_session = 3

    async def main() -> dict[str, list[str]]:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            sockets = await asyncio.gather(*(session.ws_connect(proxy.url(s), headers=proxy.headers(s)) for s in sids))
            stats = proxy.stats()
            assert stats["pubsub_connections"] == connections
            assert stats["subscriptions"] == 300
            subscribers = [c for c in proxy.redis.client_list() if int(c.get("sub", 0)) > 0]
            assert len(subscribers) == connections
            assert sum(int(c["sub"]) for c in subscribers) == 300
            with proxy.redis.pipeline(transaction=False) as pipe:
                for seq in range(per_session + 1):
                    for s in sids:
                        payload = json.dumps({"sid": s, "seq": seq, "type": "done" if seq == per_session else "t"})
                        pipe.publish(f"session:{s}:down", payload)
                pipe.execute()

            async def drain(ws: aiohttp.ClientWebSocketResponse) -> list[str]:
                got = []
                while True:  # until this session's own "done" marker, which comes last
                    msg = await ws.receive(timeout=20)
                    got.append(msg.data)
                    if json.loads(msg.data)["type"] == "done":
                        return got

            received = await asyncio.gather(*(drain(ws) for ws in sockets))
            await asyncio.gather(*(ws.close() for ws in sockets))
            return dict(zip(sids, received))

    received = asyncio.run(main())
    for s, frames in received.items():
        decoded = [json.loads(f) for f in frames]
        assert [d["sid"] for d in decoded] == [s] * (per_session + 1), "a socket got another session's message"
        assert [d["seq"] for d in decoded] == list(range(per_session + 1))
    proxy.wait_for(lambda: proxy.stats()["subscriptions"] == 0, "all 300 subscriptions to end")


def test_client_that_disconnects_mid_stream_leaves_no_subscription(proxy: Proxy) -> None:
    sid = _sid("leave")
    sock, data = _raw_upgrade(proxy.port, sid)
    try:
        assert proxy.numsub(sid) == 1
        for i in range(50):
            proxy.redis.publish(f"session:{sid}:down", _message(sid, i))
        while not data:
            data += sock.recv(4096)
        # vanish without a close handshake (RST), with messages still in flight
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    finally:
        sock.close()
    for i in range(50, 100):
        proxy.redis.publish(f"session:{sid}:down", _message(sid, i))
    proxy.wait_for(lambda: proxy.numsub(sid) == 0, "PUBSUB NUMSUB of the channel to reach 0")
    proxy.wait_for(lambda: proxy.stats()["connections_open"] == 0, "connections_open to reach 0")
    assert proxy.stats()["subscriptions"] == 0


def test_redis_url_with_acl_user_and_password_is_honoured(proxy_factory, tmp_path: Path) -> None:
    server = start_redis(tmp_path / "acl-redis")
    try:
        admin = redis.Redis(host=server.host, port=server.port, password=server.password)
        admin.acl_setuser(
            "wsproxy",
            enabled=True,
            passwords=["+user-pass:w0rd"],
            channels=["*"],
            commands=["+subscribe", "+unsubscribe", "+ping", "+auth"],
        )
        proxy = proxy_factory(
            server=server, redis_url=f"redis://wsproxy:user-pass%3Aw0rd@{server.host}:{server.port}/0"
        )
        sid = _sid("acl")

        async def main() -> str:
            async with aiohttp.ClientSession() as session:
                async with session.ws_connect(proxy.url(sid), headers=proxy.headers(sid)) as ws:
                    users = {c["user"] for c in admin.client_list() if int(c.get("sub", 0)) > 0}
                    assert users == {"wsproxy"}
                    admin.publish(f"session:{sid}:down", b"via-acl-user")
                    return (await ws.receive(timeout=10)).data

        assert asyncio.run(main()) == "via-acl-user"
    finally:
        server.proc.stop()


# -- misbehaving peers -----------------------------------------------------------------------------


def _raw_upgrade(port: int, sid: str, *, rcvbuf: int | None = None) -> tuple[socket.socket, bytes]:
    """Complete a WebSocket handshake on a plain socket; return it and any bytes after the 101."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    token = issue_token(SECRET, sid)
    sock.sendall(
        (
            f"GET /agent/ws/{sid} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Authorization: Bearer {token}\r\n\r\n"
        ).encode()
    )
    return sock, read_101(sock)


def test_stalled_client_is_dropped_while_another_session_keeps_up(proxy_factory) -> None:
    proxy = proxy_factory(WS_SEND_BUFFER_MESSAGES=50)
    stalled_sid, healthy_sid = _sid("stalled"), _sid("healthy")
    stalled, _ = _raw_upgrade(proxy.port, stalled_sid, rcvbuf=4096)  # and never read from it again
    big = b"x" * 8192
    rounds, batch = 40, 50  # 2000 x 8 KiB = 16 MiB for the stalled socket, far past any kernel buffer

    async def main() -> list[float]:
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(proxy.url(healthy_sid), headers=proxy.headers(healthy_sid)) as ws:
                delays: list[float] = []
                for r in range(rounds):
                    with proxy.redis.pipeline(transaction=False) as pipe:
                        for i in range(batch):
                            pipe.publish(f"session:{stalled_sid}:down", big)
                            pipe.publish(
                                f"session:{healthy_sid}:down",
                                json.dumps({"seq": r * batch + i, "ts": time.monotonic()}),
                            )
                        pipe.execute()
                    for _ in range(batch):
                        msg = json.loads((await ws.receive(timeout=5)).data)
                        delays.append(time.monotonic() - msg["ts"])
                        assert msg["seq"] == len(delays) - 1
                return delays

    try:
        delays = asyncio.run(main())
    finally:
        stalled.close()
    assert len(delays) == rounds * batch
    assert max(delays) < 2.0, f"the healthy session was delayed {max(delays):.2f}s by the stalled one"
    stats = proxy.stats()
    assert stats["slow_client_drops"] == 1
    proxy.wait_for(lambda: proxy.numsub(stalled_sid) == 0, "the stalled client's subscription to end")


def test_peer_that_never_answers_pings_is_dropped(proxy_factory) -> None:
    proxy = proxy_factory(WS_PING_INTERVAL_SECS=0.2, WS_PING_TIMEOUT_SECS=0.5)
    sid, good_sid = _sid("mute"), _sid("polite")

    async def polite() -> int:
        """An aiohttp client answers pings (autoping) while it waits in receive()."""
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(proxy.url(good_sid), headers=proxy.headers(good_sid)) as ws:
                with pytest.raises(asyncio.TimeoutError):  # receive's own timeout restarts on each ping
                    await asyncio.wait_for(ws.receive(), 2.0)
                assert not ws.closed
                return proxy.stats()["ping_timeouts"]

    mute, data = _raw_upgrade(proxy.port, sid)
    started = time.monotonic()
    try:
        pings = 0
        while True:  # read (so this is not a slow client) but never answer
            chunk = mute.recv(4096)
            if not chunk:
                break
            data += chunk
            pings = data.count(b"\x89\x00")
        elapsed = time.monotonic() - started
    finally:
        mute.close()
    assert pings >= 1
    assert b"\x88" in data, "expected a close frame before the connection ended"
    assert 0.5 <= elapsed < 5.0
    assert proxy.stats()["ping_timeouts"] == 1
    assert asyncio.run(polite()) == 1, "a peer that answers pings was dropped"


# -- Redis trouble, health, process lifecycle ---------------------------------------------------------


def test_lost_pubsub_connection_closes_its_sockets_and_recovers(proxy_factory, tmp_path: Path) -> None:
    server = start_redis(tmp_path / "own-redis")
    try:
        proxy = proxy_factory(server=server, PUBSUB_POOL_SIZE=1)
        sid = _sid("lost")

        async def main() -> tuple[int | None, bytes]:
            async with aiohttp.ClientSession() as session:
                ws = await session.ws_connect(proxy.url(sid), headers=proxy.headers(sid))
                assert proxy.redis.client_kill_filter(_type="pubsub") == 1
                msg = await ws.receive(timeout=10)
                assert msg.type is aiohttp.WSMsgType.CLOSE
                code = ws.close_code
                async with session.ws_connect(proxy.url(sid), headers=proxy.headers(sid)) as again:
                    proxy.redis.publish(f"session:{sid}:down", b"after")
                    return code, (await again.receive(timeout=10)).data.encode()

        code, after = asyncio.run(main())
        assert code == 1012
        assert after == b"after"
        stats = proxy.stats()
        assert stats["pubsub_disconnects"] == 1 and stats["redis_lost_drops"] == 1
        assert stats["pubsub_connections"] == 1
    finally:
        server.proc.stop()


def test_health_reads_the_pools_state_deep_health_asks_redis_and_both_fail_fast_without_it(
    proxy_factory, tmp_path: Path
) -> None:
    server = start_redis(tmp_path / "own-redis")
    try:
        proxy = proxy_factory(server=server)
        # the pool keeps one pub/sub connection open with no session at all: that is the health
        assert proxy.get("/health") == (
            200,
            {"status": "ok", "connections_open": 0, "subscriptions": 0, "pubsub_connections_up": 1},
        )
        assert proxy.get("/health/deep")[0] == 200
    finally:
        server.proc.stop()
    proxy.wait_for(lambda: proxy.get("/health")[0] == 503, "/health 503 once Redis is gone", timeout=5)
    status, body = proxy.get("/health")
    assert body["status"] == "unavailable" and "Redis" in body["detail"] and body["pubsub_connections_up"] == 0
    assert proxy.get("/health/deep")[0] == 503
    sid = _sid("noredis")
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=20)
    t0 = time.monotonic()
    conn.request(
        "GET",
        f"/a/ws/{sid}",
        headers={
            **proxy.headers(sid),
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version": "13",
        },
    )
    assert conn.getresponse().status == 503
    assert time.monotonic() - t0 < 2.0, "an upgrade waited for a Redis the pool knows is away"
    conn.close()


def _busy_core(seconds: float) -> subprocess.Popen:
    """Another process that keeps one core busy for at most *seconds* (ended by PID by the caller)."""
    return subprocess.Popen(
        [sys.executable, "-c", f"import time\nt = time.monotonic() + {seconds}\nwhile time.monotonic() < t: pass"]
    )


def test_a_hundred_balancer_checks_open_no_redis_connection_and_answer_within_50ms_beside_a_busy_core(
    proxy: Proxy,
) -> None:
    sid = _sid("checked")
    checks_before = proxy.stats()["health_checks"]

    async def main() -> list[float]:
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(proxy.url(sid), headers=proxy.headers(sid)):  # a live session too
                before = proxy.redis.info("stats")["total_connections_received"]
                busy = _busy_core(60)
                try:
                    took = []
                    for _ in range(100):  # as HAProxy checks: a new connection each, closed after
                        t0 = time.perf_counter()
                        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
                        writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                        head = await reader.readline()
                        took.append(time.perf_counter() - t0)
                        assert head.startswith(b"HTTP/1.1 200"), head
                        writer.close()
                        await asyncio.sleep(0.01)
                finally:
                    busy.kill()
                    busy.wait()
                after = proxy.redis.info("stats")["total_connections_received"]
                assert after == before, f"100 checks opened {after - before} Redis connections"
                return took

    took = sorted(asyncio.run(main()))
    p99 = took[98]
    assert p99 < 0.050, f"/health p99 {p99 * 1000:.1f} ms beside a busy core (max {took[-1] * 1000:.1f} ms)"
    assert proxy.stats()["health_checks"] - checks_before == 100


def test_sigterm_closes_sockets_and_exits_zero(proxy: Proxy) -> None:
    sid = _sid("term")

    async def main() -> int | None:
        async with aiohttp.ClientSession() as session:
            ws = await session.ws_connect(proxy.url(sid), headers=proxy.headers(sid))
            os.kill(proxy.proc.pid, signal.SIGTERM)
            msg = await ws.receive(timeout=10)
            assert msg.type is aiohttp.WSMsgType.CLOSE
            return ws.close_code

    assert asyncio.run(main()) == 1001
    assert proxy.proc.popen.wait(15) == 0


def _run_module(env_updates: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JWT_", "WS_", "PUBSUB_"))}
    env.update({"HOST": "127.0.0.1", "PORT": "0", **env_updates})
    return subprocess.run(
        [sys.executable, "-m", "kit.wsproxy"], env=env, capture_output=True, text=True, timeout=30, cwd=tmp_path
    )


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"JWT_SECRET": "tiny-s3cret"}, "JWT_SECRET"),
        ({}, "JWT_SECRET"),
        ({"JWT_SECRET": "s" * 40, "PUBSUB_POOL_SIZE": "many"}, "PUBSUB_POOL_SIZE"),
        ({"JWT_SECRET": "s" * 40, "REDIS_URL": "http://127.0.0.1:1/"}, "REDIS_URL"),
    ],
    ids=["short_secret", "no_secret", "bad_pool_size", "bad_redis_url"],
)
def test_bad_configuration_exits_2_with_one_line_naming_the_variable(env, names, tmp_path: Path) -> None:
    result = _run_module({"REDIS_URL": "redis://127.0.0.1:1/0", **env}, tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("kit.wsproxy: ") and names in result.stderr
    assert "Traceback" not in result.stderr
    assert "tiny-s3cret" not in result.stderr, "the secret itself was printed"
    assert result.stderr.count("\n") == 1


def test_metrics_parse_as_prometheus_text_and_equal_stats(proxy: Proxy) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from kit.wsproxy._stats import METRICS

    sid = _sid("metrics")

    async def main() -> None:
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(proxy.url(sid), headers=proxy.headers(sid)) as ws:
                for i in range(5):
                    proxy.redis.publish(f"session:{sid}:down", _message(sid, i))
                for _ in range(5):
                    await ws.receive(timeout=10)
            async with session.get(
                proxy.url(sid).replace("/load-test-agent/ws/", "/x/ws/"), headers={"Authorization": "Bearer nope"}
            ) as resp:
                assert resp.status == 401

    asyncio.run(main())
    proxy.wait_for(lambda: proxy.stats()["connections_open"] == 0, "the socket to close")
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    conn.request("GET", "/metrics")
    resp = conn.getresponse()
    text = resp.read().decode()
    conn.close()
    assert resp.status == 200 and resp.getheader("Content-Type").startswith("text/plain; version=0.0.4")
    stats = proxy.stats()
    samples = {s.name: s for fam in text_string_to_metric_families(text) for s in fam.samples}
    for key, kind, _ in METRICS:
        name = f"wsproxy_{key}" + ("_total" if kind == "counter" and not key.endswith("_total") else "")
        assert samples[name].value == stats[key], key
    assert stats["messages_forwarded"] >= 5 and stats["auth_failures"] == 1
    (reason,) = [s for s in samples.values() if s.name == "wsproxy_auth_failures_by_reason_total"]
    assert reason.labels == {"reason": "malformed"} and reason.value == 1
