"""Reconnect schedule: exponential backoff with bounded jitter (virtual time, autojump_clock)."""

from __future__ import annotations

import random

import pytest
import trio

from kit.client._session import GaveUp, backoff_delay, connect_with_retry
from kit.client._ws import HandshakeError


def test_backoff_doubles_up_to_the_cap_without_jitter():
    rng = random.Random(0)
    assert [backoff_delay(n, 1.0, 30.0, 0.0, rng) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]


def test_jittered_backoff_stays_within_its_bounds_and_varies():
    rng = random.Random(42)
    for n in range(1, 12):
        base = min(30.0, 0.5 * 2 ** (n - 1))
        delays = [backoff_delay(n, 0.5, 30.0, 0.5, rng) for _ in range(500)]
        assert all(base * 0.5 <= d <= base for d in delays)
        assert max(delays) - min(delays) > base * 0.3  # really spread out
    assert backoff_delay(10_000, 1.0, 30.0, 0.5, rng) <= 30.0  # huge attempt numbers do not overflow


async def test_retry_sleeps_the_backoff_schedule_and_counts_attempts(autojump_clock):
    attempts: list[tuple[int, float, bool]] = []
    start = trio.current_time()

    async def flaky():
        if len(attempts) < 3:
            raise ConnectionRefusedError(111, "refused")
        return "connected"

    def on_attempt(n, exc):
        attempts.append((n, trio.current_time() - start, exc is None))

    result = await connect_with_retry(
        flaky,
        attempts=5,
        initial=1.0,
        cap=30.0,
        jitter=0.0,
        rng=random.Random(1),
        first_immediately=True,
        on_attempt=on_attempt,
    )
    assert result == "connected"
    # first try at once, then 1 s, 2 s, 4 s later
    assert [(n, round(t, 6), ok) for n, t, ok in attempts] == [
        (1, 0.0, False),
        (2, 1.0, False),
        (3, 3.0, False),
        (4, 7.0, True),
    ]


async def test_retry_with_jitter_waits_between_the_bounds(autojump_clock):
    for seed in range(20):
        start = trio.current_time()

        async def never():
            raise OSError(111, "refused")

        with pytest.raises(GaveUp, match="gave up after 3 attempt"):
            await connect_with_retry(
                never, attempts=3, initial=1.0, cap=2.0, jitter=0.5, rng=random.Random(seed), first_immediately=False
            )
        waited = trio.current_time() - start
        # delays 1, 2, 2 (capped), each shortened by up to half
        assert 0.5 + 1.0 + 1.0 <= waited <= 1.0 + 2.0 + 2.0


async def test_a_401_is_not_retried(autojump_clock):
    calls = 0

    async def refused():
        nonlocal calls
        calls += 1
        raise HandshakeError(401, "Unauthorized", b'{"error":"invalid_token"}')

    with pytest.raises(GaveUp, match="401"):
        await connect_with_retry(
            refused, attempts=5, initial=1.0, cap=30.0, jitter=0.5, rng=random.Random(0), first_immediately=True
        )
    assert calls == 1


async def test_zero_attempts_means_no_reconnect(autojump_clock):
    async def never():
        raise OSError(111, "refused")

    with pytest.raises(GaveUp):
        await connect_with_retry(
            never, attempts=0, initial=1.0, cap=1.0, jitter=0.0, rng=random.Random(0), first_immediately=False
        )
