"""The per-process reconnect bucket: its rate bound, and sessions dropped together (virtual time, autojump_clock)."""

from __future__ import annotations

import random

import pytest
import trio
import trio.testing

from kit.client import RECONNECT_BURST, RECONNECT_RATE, TokenBucket
from kit.client._accounting import Recorder
from kit.client._session import Session, SessionConfig
from kit.client._ws import ConnectionClosed

EPS = 1e-9


def assert_within_the_rate(times: list[float], rate: float, burst: int) -> None:
    """In every window [a, b] of admissions, at most burst + rate * (b - a) got through."""
    times = sorted(times)
    for i in range(len(times)):
        for j in range(i, len(times)):
            assert j - i + 1 <= burst + rate * (times[j] - times[i]) + EPS, (i, j, times[i], times[j])


async def test_the_defaults_are_200_a_second_after_a_burst_of_50():
    assert (RECONNECT_RATE, RECONNECT_BURST) == (200.0, 50)
    st = TokenBucket().statistics()
    assert (st["rate"], st["burst"], st["admitted"], st["waited"]) == (200.0, 50, 0, 0)


async def test_the_bucket_admits_at_most_burst_plus_rate_times_t(autojump_clock):
    bucket = TokenBucket(rate=100.0, burst=10)
    admitted: list[float] = []
    rng = random.Random(7)

    async def caller(at: float) -> None:
        await trio.sleep(at)
        await bucket.acquire()
        admitted.append(trio.current_time())

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        for _ in range(300):  # 300 callers at once, then 300 more arriving over 4 s
            nursery.start_soon(caller, 0.0)
        for _ in range(300):
            nursery.start_soon(caller, rng.uniform(0.0, 4.0))
    rel = [t - start for t in admitted]
    assert_within_the_rate(rel, 100.0, 10)
    assert sum(t == 0.0 for t in rel) == 10  # the burst went at once
    # and no slower than the rate: 600 callers, 10 at once, the rest one every 10 ms
    assert max(rel) == pytest.approx((600 - 10) / 100.0)
    st = bucket.statistics()
    assert (st["admitted"], st["waited"], st["waiting"]) == (600, 590, 0)


async def test_a_caller_cancelled_while_waiting_keeps_the_others_places_and_the_bound(autojump_clock):
    bucket = TokenBucket(rate=10.0, burst=1)
    start = trio.current_time()
    assert await bucket.acquire() == 0.0  # the burst: the next token accrues at 0.1 s
    got: dict[str, float] = {}

    async def caller(name: str) -> None:
        await bucket.acquire()
        got[name] = trio.current_time() - start

    async with trio.open_nursery() as nursery:
        with trio.CancelScope() as b_scope:
            async with trio.open_nursery() as b_nursery:
                b_nursery.start_soon(caller, "b")  # takes the token of 0.1 s
                await trio.testing.wait_all_tasks_blocked()
                nursery.start_soon(caller, "c")  # takes the token of 0.2 s
                await trio.sleep(0.05)
                assert bucket.statistics()["waiting"] == 2
                b_scope.cancel()
        assert bucket.statistics()["waiting"] == 1
        await trio.sleep(0.01)
        nursery.start_soon(caller, "d")
    assert "b" not in got
    # c keeps its place; b's token is forfeited, never handed out beside c's (two at once past a burst of 1)
    assert (got["c"], got["d"]) == (pytest.approx(0.2), pytest.approx(0.3))
    assert_within_the_rate([0.0, *got.values()], 10.0, 1)
    st = bucket.statistics()
    assert (st["admitted"], st["waited"], st["waiting"]) == (3, 2, 0)


async def test_acquire_is_a_checkpoint_even_with_a_token_at_hand():
    bucket = TokenBucket(rate=1.0, burst=1)
    with trio.CancelScope() as scope:
        scope.cancel()
        await bucket.acquire()
    assert scope.cancelled_caught
    assert bucket.statistics()["admitted"] == 0
    assert await bucket.acquire() == 0.0  # the token was not used up by the cancelled call


async def test_rate_zero_means_no_wait(autojump_clock):
    bucket = TokenBucket(rate=0.0)
    start = trio.current_time()
    waits = [await bucket.acquire() for _ in range(1000)]
    assert waits == [0.0] * 1000 and trio.current_time() == start
    assert bucket.statistics()["waited"] == 0
    with trio.CancelScope() as scope:  # still a checkpoint
        scope.cancel()
        await bucket.acquire()
    assert scope.cancelled_caught


@pytest.mark.parametrize("rate, burst", [(-1.0, 50), (float("nan"), 50), (200.0, 0)])
def test_a_bucket_refuses_a_bad_rate_or_burst(rate, burst):
    with pytest.raises(ValueError, match="rate >= 0 and burst >= 1"):
        TokenBucket(rate, burst)


class _DroppedSession(Session):
    """A session whose WebSocket was just lost: only its reconnect runs; the connect itself records its time
    (virtual time cannot carry real sockets)."""

    def __init__(self, *args, connected: list[float], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._connected = connected

    async def _open(self):
        self._connected.append(trio.current_time())
        return object()


async def _drop_all(n: int, limiter: TokenBucket | None) -> tuple[Recorder, list[float], list[Session]]:
    cfg = SessionConfig(
        api_url="http://127.0.0.1:1", ws_url="ws://127.0.0.1:1", initial_backoff=1.0, max_backoff=30.0, jitter=0.5
    )
    rec = Recorder()
    connected: list[float] = []
    sessions = [
        _DroppedSession(cfg, None, rec, i, 0, random.Random(i), limiter=limiter, connected=connected) for i in range(n)
    ]
    async with trio.open_nursery() as nursery:
        for s in sessions:  # every socket of the process drops at the same instant
            nursery.start_soon(s._reconnect, ConnectionClosed(1006, "balancer closed the session"))
    return rec, connected, sessions


async def test_1000_sessions_dropped_at_once_reconnect_at_the_buckets_rate(autojump_clock):
    start = trio.current_time()
    rec, connected, sessions = await _drop_all(1000, TokenBucket(rate=200.0, burst=50))
    rel = sorted(t - start for t in connected)
    assert len(rel) == 1000 and all(s.s.reconnects_ok == 1 for s in sessions)
    # first the backoff (1 s, up to half of it jitter), then the bucket: 50 at once, then 200 a second
    assert rel[0] >= 0.5
    assert_within_the_rate(rel, 200.0, 50)
    assert 0.5 + 950 / 200 - 0.01 <= rel[-1] <= 1.0 + 950 / 200
    c = rec.counters
    assert c["reconnect_attempts_live"] == c["reconnects_ok_live"] == 1000
    # counted apart: the bucket's waits (most sessions: they arrived at ~2,000 a second) ...
    assert 900 <= c["reconnect_bucket_waits"] <= 950
    waited_s = c["reconnect_bucket_wait_us"] / 1e6
    assert 900 * 1.0 < waited_s < 1000 * 950 / 200
    # ... and the backoff's: one delay of 0.5 to 1 s per session, whatever the bucket did
    assert 1000 * 0.5 <= c["reconnect_backoff_wait_us"] / 1e6 <= 1000 * 1.0


async def test_without_a_bucket_the_same_drop_comes_back_within_the_backoff(autojump_clock):
    start = trio.current_time()
    rec, connected, _ = await _drop_all(1000, None)
    rel = sorted(t - start for t in connected)
    assert rel[0] >= 0.5 and rel[-1] <= 1.0  # the storm the bucket prevents: 1000 handshakes in half a second
    assert rec.counters["reconnect_bucket_waits"] == 0 and rec.counters["reconnect_bucket_wait_us"] == 0
    assert rec.counters["reconnect_backoff_wait_us"] >= 1000 * 0.5 * 1e6
