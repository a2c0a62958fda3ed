"""The wsproxy's pings: one shared timer for every client's pings and pong deadlines (kit/wsproxy/_server.py)."""

from __future__ import annotations

import asyncio
import socket

import uvloop

from kit.config import WsproxySettings
from kit.wsproxy._redis import parse_redis_url
from kit.wsproxy._server import _Client, _Forwarder

PING = b"\x89\x00"


def _forwarder(interval: float, timeout: float) -> _Forwarder:
    settings = WsproxySettings.from_env(
        {
            "REDIS_URL": "redis://:p@127.0.0.1:1/0",
            "JWT_SECRET": "s" * 48,
            "WS_PING_INTERVAL_SECS": str(interval),
            "WS_PING_TIMEOUT_SECS": str(timeout),
        }
    )
    return _Forwarder(settings, parse_redis_url(settings.redis_url))


class _Pairs:
    """Clients attached to one end of a socket pair each; the test holds the peers' ends."""

    def __init__(self, fwd: _Forwarder) -> None:
        self.fwd = fwd
        self.opened: list[tuple[socket.socket, asyncio.Transport]] = []

    async def attach(self) -> tuple[_Client, socket.socket, asyncio.Transport]:
        ours, peer = socket.socketpair()
        peer.setblocking(False)
        transport, _ = await asyncio.get_running_loop().connect_accepted_socket(asyncio.Protocol, ours)
        self.opened.append((peer, transport))
        client = _Client(self.fwd)
        client.attach(None, transport)  # type: ignore[arg-type]  # pings need the transport only
        return client, peer, transport

    async def __aenter__(self) -> _Pairs:
        return self

    async def __aexit__(self, *exc: object) -> None:  # always: uvloop hangs closing a loop with these open
        self.fwd.pinger.close()
        for peer, transport in self.opened:
            peer.close()
            transport.close()


def _drain(peer: socket.socket) -> bytes:
    try:
        return peer.recv(4096)
    except BlockingIOError:
        return b""


def test_a_ping_due_after_the_peer_closed_stops_quietly_instead_of_raising_from_its_timer():
    errors: list[dict] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx))
        fwd = _forwarder(0.05, 1.0)
        async with _Pairs(fwd) as pairs:
            client, peer, transport = await pairs.attach()
            await asyncio.sleep(0.12)  # two pings go out while the peer is there
            assert _drain(peer).startswith(PING)
            peer.close()
            transport.close()  # what uvloop does when the peer leaves; the handler has not released the client
            await asyncio.sleep(0.2)  # pings fall due on the closed transport
            assert client.closed
            assert not fwd.pinger.pings, "a closed client is still queued for pings"

    uvloop.run(main())
    assert errors == [], errors  # before the fix: RuntimeError "the handler is closed" from a ping, once per ping


def test_a_peer_that_answers_stays_and_one_that_does_not_is_dropped_after_the_timeout():
    async def main() -> tuple[float, bytes, bytes]:
        fwd = _forwarder(0.1, 0.35)
        async with _Pairs(fwd) as pairs:
            polite, polite_peer, _ = await pairs.attach()
            mute, mute_peer, _ = await pairs.attach()
            started = asyncio.get_running_loop().time()
            mute_bytes = b""
            while not mute.closed and asyncio.get_running_loop().time() - started < 3.0:
                await asyncio.sleep(0.01)
                if PING in _drain(polite_peer):
                    polite.pong()  # what _receive_loop does with the peer's pong
                mute_bytes += _drain(mute_peer)  # read, never answer
            dropped_after = asyncio.get_running_loop().time() - started
            await asyncio.sleep(0.3)  # the polite peer goes on past the mute one's deadline
            polite_bytes = _drain(polite_peer)
            mute_bytes += _drain(mute_peer)
            assert not polite.closed and fwd.stats.ping_timeouts == 1
            return dropped_after, mute_bytes, polite_bytes

    dropped_after, mute_bytes, polite_bytes = uvloop.run(main())
    # first ping at 0.1 s, its deadline 0.35 s later, a sweep up to batch (0.025 s) late
    assert 0.44 <= dropped_after < 1.0, dropped_after
    assert mute_bytes.count(PING) >= 3 and b"\x88\x0e\x03\xf3ping timeout" in mute_bytes  # close 1011
    assert PING in polite_bytes


def test_pings_that_fall_due_close_together_go_out_in_one_wake_up():
    async def main() -> tuple[list[int], int]:
        fwd = _forwarder(0.4, 10.0)  # batch: 0.1 s
        async with _Pairs(fwd) as pairs:
            peers = []
            for _ in range(40):  # 40 clients attached over ~80 ms
                peers.append((await pairs.attach())[1])
                await asyncio.sleep(0.002)
            await asyncio.sleep(0.65)
            return [_drain(peer).count(PING) for peer in peers], fwd.pinger.sweeps

    got, sweeps = uvloop.run(main())
    assert got == [1] * 40, got  # every client pinged once in its first 0.4-0.5 s
    assert 1 <= sweeps <= 3, sweeps  # with a timer per client: 40 wake-ups
