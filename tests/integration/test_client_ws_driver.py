"""kit.client._ws driven over real loopback sockets against an independent server (wsproto)."""

from __future__ import annotations

import contextlib

import pytest
import trio
import trio.testing
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Pong,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

from kit.client._hub import SO_TIMESTAMPNS, STAMP_SPACE, TIMESPEC, Hub, kernel_stamps_available
from kit.client._ws import ConnectionClosed, HandshakeError, connect

pytestmark = pytest.mark.timeout(30)


async def serve(script, *, task_status=trio.TASK_STATUS_IGNORED):
    """A one-connection wsproto server on a free loopback port running script(stream, ws, request, log)."""
    log: dict = {"events": []}
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    task_status.started((port, log))
    stream = await listeners[0].accept()
    ws = WSConnection(ConnectionType.SERVER)
    request = None
    while request is None:
        ws.receive_data(await stream.receive_some(65536))
        for ev in ws.events():
            if isinstance(ev, Request):
                request = ev
    log["headers"] = {k.decode().lower(): v.decode() for k, v in request.extra_headers}
    log["target"] = request.target
    await script(stream, ws, request, log)
    await stream.aclose()
    for lst in listeners:
        await lst.aclose()


async def pump(stream, ws, log, until):
    """Read client frames into log['events'] until until(event) is true or EOF."""
    while True:
        data = await stream.receive_some(65536)
        if not data:
            return
        ws.receive_data(data)
        for ev in ws.events():
            log["events"].append(ev)
            if isinstance(ev, Ping):
                await stream.send_all(ws.send(ev.response()))
            if until(ev):
                return


@contextlib.asynccontextmanager
async def hub_and_socket(script, *, use_hub=True):
    """A wsproto server running *script*, a running Hub (None without *use_hub*) and a client connected to the
    server: yields (hub, socket, the server's log); the hub stops when the block ends."""
    with trio.fail_after(10):
        async with trio.open_nursery() as n:
            port, log = await n.start(serve, script)  # ends by itself after the close handshake
            async with trio.open_nursery() as hub_nursery:
                hub = Hub() if use_hub else None
                if hub is not None:
                    await hub_nursery.start(hub.run)
                yield hub, await connect(f"ws://127.0.0.1:{port}", "/a/ws/b"), log
                hub_nursery.cancel_scope.cancel()


async def test_messages_of_every_size_ping_and_server_close():
    async def script(stream, ws, request, log):
        frames = ws.send(AcceptConnection())
        frames += ws.send(TextMessage("with-the-101"))
        await stream.send_all(frames)
        await stream.send_all(ws.send(TextMessage("small")) + ws.send(TextMessage("m" * 300)))
        await stream.send_all(ws.send(TextMessage("h" * 70000)))
        await stream.send_all(
            ws.send(TextMessage("fr", message_finished=False))
            + ws.send(Ping(b"hb"))
            + ws.send(TextMessage("ag", message_finished=True))
        )
        await stream.send_all(ws.send(BytesMessage(b"\x00\xff")))
        await pump(stream, ws, log, lambda ev: isinstance(ev, Pong))
        await stream.send_all(ws.send(CloseConnection(code=1001, reason="bye")))
        await pump(stream, ws, log, lambda ev: isinstance(ev, CloseConnection))

    with trio.fail_after(10):
        async with trio.open_nursery() as n:
            port, log = await n.start(serve, script)
            sock = await connect(f"ws://127.0.0.1:{port}", "/agent/ws/s1", [("Authorization", "Bearer t0k")])
            got: list[bytes] = []
            with pytest.raises(ConnectionClosed) as ei:
                while True:
                    got += await sock.receive_batch()
            assert got == [b"with-the-101", b"small", b"m" * 300, b"h" * 70000, b"frag", b"\x00\xff"]
            assert ei.value.code == 1001 and ei.value.reason == "bye"
            assert sock.proto.pings == 1
    assert log["headers"]["authorization"] == "Bearer t0k" and log["target"] == "/agent/ws/s1"
    assert any(isinstance(e, Pong) and e.payload == b"hb" for e in log["events"])
    assert any(isinstance(e, CloseConnection) and e.code == 1001 for e in log["events"])  # the echo


async def test_client_close_handshake_sends_1000():
    async def script(stream, ws, request, log):
        await stream.send_all(ws.send(AcceptConnection()))
        await pump(stream, ws, log, lambda ev: isinstance(ev, CloseConnection))
        await stream.send_all(ws.send(log["events"][-1].response()))

    with trio.fail_after(10):
        async with trio.open_nursery() as n:
            port, log = await n.start(serve, script)
            sock = await connect(f"ws://127.0.0.1:{port}", "/a/ws/b")
            await sock.aclose()
            assert sock.closed
    closes = [e for e in log["events"] if isinstance(e, CloseConnection)]
    assert closes and closes[0].code == 1000


async def test_aclose_from_another_task_ends_the_reader():
    async def script(stream, ws, request, log):
        await stream.send_all(ws.send(AcceptConnection()))
        await pump(stream, ws, log, lambda ev: isinstance(ev, CloseConnection))
        await stream.send_all(ws.send(log["events"][-1].response()))

    with trio.fail_after(10):
        async with trio.open_nursery() as n:
            port, log = await n.start(serve, script)
            sock = await connect(f"ws://127.0.0.1:{port}", "/a/ws/b")
            result = {}

            async def reader():
                try:
                    await sock.receive_batch()
                except ConnectionClosed as exc:
                    result["code"] = exc.code

            n.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            await sock.aclose()
    assert result["code"] == 1000


async def test_http_401_is_a_handshake_error_with_the_body():
    async def script(stream, ws, request, log):
        await stream.send_all(
            ws.send(RejectConnection(status_code=401, headers=[(b"content-length", b"17")], has_body=True))
            + ws.send(RejectData(b'{"error":"token"}'))
        )

    with trio.fail_after(10):
        async with trio.open_nursery() as n:
            port, _ = await n.start(serve, script)
            with pytest.raises(HandshakeError) as ei:
                await connect(f"ws://127.0.0.1:{port}", "/a/ws/b", [("Authorization", "Bearer bad")])
    assert ei.value.status == 401 and b"token" in ei.value.body


async def test_eof_mid_stream_is_1006():
    async def script(stream, ws, request, log):
        await stream.send_all(ws.send(AcceptConnection()) + ws.send(TextMessage("one")))

    with trio.fail_after(10):
        async with trio.open_nursery() as n:
            port, _ = await n.start(serve, script)
            sock = await connect(f"ws://127.0.0.1:{port}", "/x")
            assert await sock.receive_batch() == [b"one"]
            with pytest.raises(ConnectionClosed) as ei:
                await sock.receive_batch()
    assert ei.value.code == 1006


async def test_connection_refused_is_an_oserror():
    from devkit.localstack import free_port

    with trio.fail_after(10):
        with pytest.raises(OSError):
            await connect(f"ws://127.0.0.1:{free_port()}", "/x")


@pytest.mark.parametrize("use_hub", [True, False])
async def test_run_receiver_delivers_every_read_and_ends_with_the_close(use_hub):
    async def script(stream, ws, request, log):
        await stream.send_all(ws.send(AcceptConnection()) + ws.send(TextMessage("first")))
        for i in range(200):
            await stream.send_all(ws.send(TextMessage(f"m{i}")))
        await stream.send_all(ws.send(Ping(b"x")))
        await stream.send_all(ws.send(CloseConnection(code=1000, reason="done")))
        await pump(stream, ws, log, lambda ev: isinstance(ev, CloseConnection))

    got: list[bytes] = []
    stamps: list[tuple[int, int]] = []

    def on_batch(batch, m_ns, w_ns):
        got.extend(batch)
        stamps.append((m_ns, w_ns))

    async with hub_and_socket(script, use_hub=use_hub) as (hub, sock, log):
        with pytest.raises(ConnectionClosed) as ei:
            await sock.run_receiver(on_batch, hub)
        if hub is not None:
            assert hub.statistics()["connections"] == 0  # unregistered at the end
            assert hub.statistics()["events"] >= 1
    assert got == [b"first"] + [f"m{i}".encode() for i in range(200)]
    assert ei.value.code == 1000 and ei.value.reason == "done"
    assert all(m > 0 and w > 0 for m, w in stamps)
    assert any(isinstance(e, Pong) for e in log["events"])


async def test_cancelled_receiver_leaves_the_hub_and_the_socket_usable():
    async def script(stream, ws, request, log):
        await stream.send_all(ws.send(AcceptConnection()))
        await pump(stream, ws, log, lambda ev: isinstance(ev, TextMessage))
        await stream.send_all(ws.send(TextMessage("after")))
        await pump(stream, ws, log, lambda ev: isinstance(ev, CloseConnection))

    async with hub_and_socket(script) as (hub, sock, log):
        with trio.move_on_after(0.05):
            await sock.run_receiver(lambda *a: None, hub)
        assert hub.statistics()["connections"] == 0 and not sock.closed
        await sock.send_text("hello")
        assert await sock.receive_batch() == [b"after"]
        await sock.aclose()


@contextlib.contextmanager
def _kernel_stamps_on(timeout: float = 10.0):
    """Hold the kernel's arrival stamping on.  The first socket asking for stamps turns it on through a work
    queue (and the last one closing, off); until that has run (later on a loaded machine) a read gets the
    time of the read as its stamp.  A probe socket over loopback TCP, read 20 ms after each send until its
    stamp is that old, stays open (stamping stays on) for the with block."""
    import socket
    import time

    with socket.create_server(("127.0.0.1", 0)) as srv:
        with socket.create_connection(srv.getsockname()) as tx, srv.accept()[0] as rx:
            rx.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                tx.sendall(b"x")
                time.sleep(0.02)
                _, anc, _, _ = rx.recvmsg(16, STAMP_SPACE)
                if anc:
                    sec, nsec = TIMESPEC.unpack_from(anc[0][2])
                    if time.time_ns() - (sec * 1_000_000_000 + nsec) >= 15_000_000:
                        yield
                        return
            pytest.fail(f"the kernel did not stamp loopback segments on arrival within {timeout:g} s")


@pytest.mark.skipif(not kernel_stamps_available(), reason="no SO_TIMESTAMPNS")
async def test_a_frame_the_hub_reads_late_carries_its_arrival_time_from_the_kernel():
    """The loop is blocked 300 ms after the frame arrived: the hub reads it late, and hands on the
    kernel's arrival time (both clocks), not the time of the read."""
    with _kernel_stamps_on():
        await _read_late_frame()


async def _read_late_frame() -> None:
    import os
    import time

    sent: list[int] = []

    async def script(stream, ws, request, log):
        await stream.send_all(ws.send(AcceptConnection()))
        await pump(stream, ws, log, lambda ev: isinstance(ev, TextMessage))  # the client is registered
        # a plain write, no checkpoint after it: on loopback the frame is in the client's queue on return
        os.write(stream.socket.fileno(), ws.send(TextMessage("late")))
        sent.append(time.time_ns())
        time.sleep(0.3)  # noqa: ASYNC251 - the point: nothing in this process reads for 300 ms
        await read.wait()  # the close in the same read would lend the frame its arrival (one stamp per read)
        await stream.send_all(ws.send(CloseConnection(code=1000, reason="done")))
        await pump(stream, ws, log, lambda ev: isinstance(ev, CloseConnection))

    seen: list[tuple[int, int, int, int]] = []
    read = trio.Event()

    def on_batch(batch, m_ns, w_ns):
        assert batch == [b"late"]
        seen.append((m_ns, w_ns, time.monotonic_ns(), time.time_ns()))
        read.set()

    async with hub_and_socket(script) as (hub, sock, log):
        ended: list[ConnectionClosed] = []

        async def receive():
            try:
                await sock.run_receiver(on_batch, hub)
            except ConnectionClosed as exc:
                ended.append(exc)

        async with trio.open_nursery() as receiver:
            receiver.start_soon(receive)
            await trio.testing.wait_all_tasks_blocked()  # the hub holds the socket (and stamps it)
            assert hub.statistics()["connections"] == 1
            await sock.send_text("registered")  # now the server sends the frame that is read late
        assert ended and hub.stamped
    m_ns, w_ns, read_m, read_w = seen[0]
    assert read_w - sent[0] >= 300_000_000  # it was read late ...
    assert abs(w_ns - sent[0]) < 50_000_000  # ... and carries when it arrived
    assert abs((read_m - m_ns) - (read_w - w_ns)) < 5_000_000  # the same arrival on the monotonic clock
