"""kit.sim._app._WaitingPool: free connections without waiting, waiters served in turn, exhaustion named.

The pool's connections are fakes (nothing listens): the pool's bookkeeping is what is tested.
The real-process path (Redis paused, 503 redis_pool_exhausted) is in tests/integration/test_sim.py.
"""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from kit.sim._app import PoolExhausted, _WaitingPool

pytestmark = pytest.mark.timeout(30)


class FakeConnection:
    def __init__(self, **kwargs) -> None:
        self.kwargs = kwargs

    async def connect(self) -> None:
        pass

    async def can_read(self) -> bool:
        return False

    def should_reconnect(self) -> bool:
        return False

    async def disconnect(self, nowait: bool = False) -> None:
        pass

    async def re_auth(self) -> None:  # redis-py's release event asks every connection
        pass


def _pool(size: int, timeout: float) -> _WaitingPool:
    return _WaitingPool(connection_class=FakeConnection, max_connections=size, timeout=timeout)


def test_a_waiter_gets_the_connection_released_within_the_timeout():
    async def main() -> None:
        pool = _pool(1, 5.0)
        first = await pool.get_connection()
        waiter = asyncio.ensure_future(pool.get_connection())
        await asyncio.sleep(0)  # let it start waiting (a scheduling step, not a readiness wait)
        assert not waiter.done()
        await pool.release(first)
        second = await asyncio.wait_for(waiter, 5)
        assert second is first
        await pool.release(second)
        assert await pool.get_connection() is first  # and the fast path works again afterwards

    uvloop.run(main())


def test_an_exhausted_pool_raises_pool_exhausted_naming_size_and_timeout():
    async def main() -> None:
        pool = _pool(2, 0.05)
        held = [await pool.get_connection(), await pool.get_connection()]
        with pytest.raises(PoolExhausted, match="all 2 connections busy for 0.05s"):
            await pool.get_connection()
        for conn in held:
            await pool.release(conn)
        await pool.get_connection()

    uvloop.run(main())


def test_requests_arriving_while_others_wait_queue_behind_them():
    async def main() -> None:
        pool = _pool(1, 5.0)
        first = await pool.get_connection()
        order: list[str] = []

        async def take(name: str) -> None:
            conn = await pool.get_connection()
            order.append(name)
            await pool.release(conn)

        a = asyncio.ensure_future(take("a"))
        await asyncio.sleep(0)
        b = asyncio.ensure_future(take("b"))
        await asyncio.sleep(0)
        await pool.release(first)
        await asyncio.wait_for(asyncio.gather(a, b), 5)
        assert order == ["a", "b"]

    uvloop.run(main())
