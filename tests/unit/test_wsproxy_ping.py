"""The wsproxy's ping timer on a connection its peer closed before the handler ran (seen at 100,000 sessions)."""

from __future__ import annotations

import asyncio
import socket

import uvloop

from kit.config import WsproxySettings
from kit.wsproxy._redis import parse_redis_url
from kit.wsproxy._server import _Client, _Forwarder


def test_a_ping_due_after_the_peer_closed_stops_quietly_instead_of_raising_from_its_timer():
    errors: list[dict] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx))
        settings = WsproxySettings.from_env({"REDIS_URL": "redis://:p@127.0.0.1:1/0", "JWT_SECRET": "s" * 48})
        fwd = _Forwarder(settings, parse_redis_url(settings.redis_url))
        fwd.ping_interval = 0.05
        a, b = socket.socketpair()
        transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, a)
        client = _Client(fwd)
        client.attach(None, transport)  # type: ignore[arg-type]  # the timer needs the transport only
        await asyncio.sleep(0.12)  # two pings go out while the peer is there
        assert b.recv(64).startswith(b"\x89")
        b.close()
        transport.close()  # what uvloop does when the peer leaves; the handler has not released the client
        await asyncio.sleep(0.2)  # pings fall due on the closed transport
        assert client.closed and client._ping_handle is None

    uvloop.run(main())
    assert errors == [], errors  # before the fix: RuntimeError "the handler is closed" from _ping, once per ping
