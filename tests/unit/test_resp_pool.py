"""kit._resp: the raw Redis link and pool the simulator's requests use, against a real redis-server.

A call is held on the server with ``BLPOP`` of a key nobody pushes to (Redis answers nil after its
timeout), so the pool's waiting, order, exhaustion and timeouts are exercised on real connections.
The real-process path (Redis paused, 503 redis_pool_exhausted) is in tests/integration/test_sim.py.
"""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
import uvloop

from kit._resp import (
    LinkPool,
    PoolExhausted,
    RedisReplyError,
    RedisUnavailable,
    checked,
    encode_command,
    open_link,
    parse_redis_url,
)

pytestmark = pytest.mark.timeout(30)

PING = encode_command(b"PING")


def _hold(seconds: float) -> bytes:
    return encode_command(b"BLPOP", b"kit-test:nobody-pushes", str(seconds))


def _pool(redis_server, size: int, wait_s: float, call_s: float = 5.0) -> LinkPool:
    address = parse_redis_url(redis_server.url)
    return LinkPool(lambda: open_link(address), size=size, wait_s=wait_s, call_s=call_s)


def test_a_waiter_gets_the_link_released_within_the_wait(redis_server):
    async def main() -> None:
        pool = _pool(redis_server, 1, 5.0)
        try:
            held = asyncio.ensure_future(pool.call(_hold(0.3), 1))
            await asyncio.sleep(0.05)  # let it take the only link (a scheduling step: it is checked below)
            assert pool.statistics() == {"links": 1, "idle": 0, "waiting": 0}
            assert await asyncio.wait_for(pool.call(PING, 1), 5) == [b"PONG"]
            assert await held == [None]  # BLPOP's nil: it held the link for its whole 0.3 s
            assert pool.statistics() == {"links": 1, "idle": 1, "waiting": 0}  # one connection served both

        finally:
            await pool.aclose()

    uvloop.run(main())


def test_an_exhausted_pool_raises_pool_exhausted_naming_size_and_wait(redis_server):
    async def main() -> None:
        pool = _pool(redis_server, 2, 0.05)
        try:
            held = [asyncio.ensure_future(pool.call(_hold(0.5), 1)) for _ in range(2)]
            await asyncio.sleep(0.05)
            with pytest.raises(PoolExhausted, match="all 2 connections busy for 0.05s"):
                await pool.call(PING, 1)
            assert pool.statistics()["waiting"] == 0  # the one that gave up left the line
            await asyncio.gather(*held)
            assert await pool.call(PING, 1) == [b"PONG"]

        finally:
            await pool.aclose()

    uvloop.run(main())


def test_calls_arriving_while_others_wait_are_served_in_turn(redis_server):
    async def main() -> None:
        pool = _pool(redis_server, 1, 5.0)
        try:
            held = asyncio.ensure_future(pool.call(_hold(0.2), 1))
            await asyncio.sleep(0.05)
            order: list[str] = []

            async def call(name: str) -> None:
                await pool.call(PING, 1)
                order.append(name)

            a = asyncio.ensure_future(call("a"))
            await asyncio.sleep(0)
            b = asyncio.ensure_future(call("b"))
            await asyncio.sleep(0)
            assert pool.statistics()["waiting"] == 2
            await asyncio.wait_for(asyncio.gather(held, a, b), 5)
            assert order == ["a", "b"]

        finally:
            await pool.aclose()

    uvloop.run(main())


def test_a_call_past_its_bound_is_redis_unavailable_and_its_link_is_not_lent_again(redis_server):
    async def main() -> None:
        pool = _pool(redis_server, 1, 5.0, call_s=0.1)
        try:
            with pytest.raises(RedisUnavailable, match="did not answer within 0.1 s"):
                await pool.call(_hold(2), 1)
            assert pool.statistics()["links"] == 0  # closed: its late nil would answer the next call
            assert await pool.call(PING, 1) == [b"PONG"]  # on a new link, in step

        finally:
            await pool.aclose()

    uvloop.run(main())


def test_error_replies_come_back_in_place_and_checked_names_their_code(redis_server):
    async def main() -> None:
        link = await open_link(parse_redis_url(redis_server.url))
        replies = await link.call(PING + encode_command(b"NO-SUCH-COMMAND", b"secret-arg") + PING, 3)
        assert replies[0] == replies[2] == b"PONG"  # the error did not put the stream out of step
        with pytest.raises(RedisReplyError) as err:
            checked(replies)
        assert err.value.code == "ERR"
        assert "secret-arg" not in str(err.value)  # the code only: a reply may quote arguments
        link.close()
        with pytest.raises(RedisUnavailable, match="closed"):
            await link.call(PING, 1)

    uvloop.run(main())


def test_a_wrong_password_is_refused_in_one_line_without_the_password(redis_server):
    async def main() -> None:
        address = dataclasses.replace(parse_redis_url(redis_server.url), password="not-the-password")
        with pytest.raises(RedisUnavailable) as err:
            await open_link(address)
        assert "refused the credentials" in str(err.value)
        assert "not-the-password" not in str(err.value)

    uvloop.run(main())


def test_nothing_listening_is_redis_unavailable_naming_the_address():
    async def main() -> None:
        import socket

        with socket.socket() as s:  # a port that was free a moment ago and has no listener
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        with pytest.raises(RedisUnavailable, match=f"cannot reach Redis at 127.0.0.1:{port}"):
            await open_link(parse_redis_url(f"redis://127.0.0.1:{port}/0"))

    uvloop.run(main())
