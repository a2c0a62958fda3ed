"""kit.client._http.HttpPool against a real HTTP/1.1 server on loopback (a trio task in the test)."""

from __future__ import annotations

import socket

import pytest
import trio

from kit.client._http import ConnectError, HttpPool, ReadTimeout, RemoteProtocolError

pytestmark = pytest.mark.timeout(30)


class Server:
    """Answers each request with what ``reply(n, request_bytes)`` returns; counts connections."""

    def __init__(self, reply) -> None:
        self.reply = reply
        self.connections = 0
        self.requests = 0
        self.port = 0

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    k, _, v = line.partition(b":")
                    if k.strip().lower() == b"content-length":
                        length = int(v)
                while len(buf) < length:
                    buf += await stream.receive_some(65536)
                body, buf = buf[:length], buf[length:]
                self.requests += 1
                answer = await self.reply(self.requests, head + b"\r\n\r\n" + body)
                if answer is None:  # close without answering
                    return
                await stream.send_all(answer)
                if b"connection: close" in answer.lower():
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        finally:
            await stream.aclose()


def ok(body: bytes = b'{"ok":1}', status: bytes = b"200 OK", extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%s\r\n%s" % (
        status,
        len(body),
        extra,
        body,
    )


async def start(nursery, reply) -> Server:
    srv = Server(reply)
    await nursery.start(srv.run)
    return srv


async def test_keep_alive_carries_many_requests_on_one_connection(nursery):
    async def reply(n, req):
        assert req.startswith(b"POST /api/session/create HTTP/1.1\r\n")
        assert b'{"agent_id":"a"}' in req
        return ok(b'{"n":%d}' % n, b"201 Created")

    srv = await start(nursery, reply)
    pool = HttpPool(f"http://127.0.0.1:{srv.port}/api", max_connections=4)
    for i in range(1, 21):
        r = await pool.post("/session/create", {"agent_id": "a"})
        assert r.status_code == 201 and r.json() == {"n": i} and r.pool_wait_ns == 0
    st = pool.statistics()
    assert srv.connections == 1 and st["connections_opened"] == 1 and st["connections_reused"] == 19
    assert st["requests"] == 20 and st["requests_waited"] == 0
    await pool.aclose()


async def test_requests_beyond_the_pool_wait_and_the_wait_is_reported(nursery):
    gate = trio.Event()

    async def reply(n, req):
        await gate.wait()
        return ok()

    srv = await start(nursery, reply)
    pool = HttpPool(f"http://127.0.0.1:{srv.port}", max_connections=2)
    results = []

    async def one():
        results.append(await pool.get("/x"))

    async with trio.open_nursery() as n:
        for _ in range(6):
            n.start_soon(one)
        await trio.sleep(0.05)  # let all six reach the pool before the server answers
        assert pool.statistics()["in_use"] == 2
        gate.set()
    assert len(results) == 6 and all(r.status_code == 200 for r in results)
    waited = [r.pool_wait_ns for r in results if r.pool_wait_ns > 0]
    assert len(waited) == 4 and min(waited) >= 40_000_000  # four queued behind the two busy connections
    st = pool.statistics()
    assert st["requests_waited"] == 4 and st["connections_opened"] == 2 and srv.connections == 2
    await pool.aclose()


async def test_a_connection_the_server_closed_while_idle_is_not_used(nursery):
    async def reply(n, req):
        return ok(extra=b"connection: close\r\n") if n == 1 else ok()

    srv = await start(nursery, reply)
    pool = HttpPool(f"http://127.0.0.1:{srv.port}", max_connections=2)
    assert (await pool.get("/a")).status_code == 200
    assert (await pool.get("/b")).status_code == 200
    assert srv.connections == 2 and pool.statistics()["connections_opened"] == 2
    await pool.aclose()


async def test_a_kept_alive_connection_closed_as_the_request_went_out_is_retried_once(nursery):
    async def reply(n, req):
        return None if n == 2 else ok()  # the server drops the second request unanswered

    srv = await start(nursery, reply)
    pool = HttpPool(f"http://127.0.0.1:{srv.port}", max_connections=1)
    assert (await pool.get("/a")).status_code == 200
    assert (await pool.get("/b")).status_code == 200
    assert pool.statistics()["retries"] == 1 and srv.requests == 3
    await pool.aclose()


async def test_chunked_and_read_to_close_bodies(nursery):
    async def reply(n, req):
        if n == 1:
            return b'HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4\r\n{"a"\r\n5;x=y\r\n:12}\n\r\n0\r\n\r\n'
        return b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nto the end"

    srv = await start(nursery, reply)
    pool = HttpPool(f"http://127.0.0.1:{srv.port}")
    assert (await pool.get("/c")).json() == {"a": 12}
    r = await pool.get("/d")
    assert r.content == b"to the end"
    await pool.aclose()


async def test_a_slow_answer_times_out_and_its_connection_is_dropped(nursery, autojump_clock):
    async def reply(n, req):
        if n == 1:
            await trio.sleep(100)
        return ok()

    srv = await start(nursery, reply)
    pool = HttpPool(f"http://127.0.0.1:{srv.port}", timeout=2.0)
    with pytest.raises(ReadTimeout, match="within 2 s"):
        await pool.get("/slow")
    assert (await pool.get("/fast")).status_code == 200
    assert pool.statistics()["connections_opened"] == 2
    await pool.aclose()


async def test_garbage_and_refused_connections_are_clear_errors(nursery):
    async def reply(n, req):
        return b"SSH-2.0-OpenSSH\r\n\r\n"

    srv = await start(nursery, reply)
    pool = HttpPool(f"http://127.0.0.1:{srv.port}")
    with pytest.raises(RemoteProtocolError, match="status line"):
        await pool.get("/")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConnectError, match=f"127.0.0.1:{port}"):
        await HttpPool(f"http://127.0.0.1:{port}").get("/")
    await pool.aclose()


def test_bad_urls_are_refused():
    with pytest.raises(ValueError, match="http"):
        HttpPool("ws://127.0.0.1:1")
