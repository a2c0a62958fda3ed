"""kit.sim._publisher: the tick batches due messages, never publishes early, keeps each query's order.

A fake link stands in for Redis (kit._resp.RespLink's interface): it records each packed write (parsed
back into PUBLISH commands) with the monotonic time it was sent, and answers every PUBLISH with 1.
The tests wait for the publisher's own progress (an event set by the fake), never a sleep.
They run on uvloop, as the served simulator does: its timers are whole milliseconds on a
cached clock, which is where publishing early would come from.
"""

from __future__ import annotations

import asyncio
import math
import time

import hiredis
import orjson
import pytest
import uvloop

from kit.config import ConfigError, SimSettings
from kit.sim._publisher import Publisher
from kit.sim._schedule import encode_tokens

pytestmark = pytest.mark.timeout(30)


class FakeLink:
    """Records writes as (monotonic time, [(channel, message dict), ...])."""

    def __init__(self) -> None:
        self.writes: list[tuple[float, list[tuple[bytes, dict]]]] = []
        self.messages = 0
        self.expected = 0
        self.all_sent = asyncio.Event()

    open = True

    async def call(self, data: bytes, replies: int) -> list[int]:
        sent = time.monotonic()
        reader = hiredis.Reader()
        reader.feed(data)
        commands = []
        while (cmd := reader.gets()) is not False:
            assert cmd[0] == b"PUBLISH"
            commands.append((cmd[1], orjson.loads(cmd[2])))
        assert len(commands) == replies
        self.writes.append((sent, commands))
        self.messages += len(commands)
        if self.messages >= self.expected:
            self.all_sent.set()
        return [1] * replies

    def close(self) -> None:
        pass


async def _publish(tick_s: float, queries: dict[bytes, list[float]]) -> tuple[FakeLink, Publisher]:
    """Submit one query per channel with the given due times (tokens, then done); wait until all is sent."""
    conn = FakeLink()
    conn.expected = sum(len(due) for due in queries.values())
    made = []

    async def connect():
        made.append(conn)
        return conn

    pub = Publisher(connect, tick_s=tick_s)
    pub.start()
    try:
        for channel, due in queries.items():
            texts = encode_tokens([f"w{i}" for i in range(len(due) - 1)])
            pub.submit(channel, channel.replace(b"ch", b"q"), texts, due)
        await asyncio.wait_for(conn.all_sent.wait(), 10)
    finally:
        await pub.aclose()
    assert len(made) == 1  # one connection of its own, reused for every batch
    return conn, pub


def _returns(conn):
    async def connect():
        return conn

    return connect


def _next_tick(tick_s: float, ahead: int = 2) -> float:
    """A grid instant at least *ahead* ticks from now, so every submit lands before it."""
    return (math.ceil(time.monotonic() / tick_s) + ahead) * tick_s


def test_many_tokens_due_within_one_tick_go_out_in_one_write():
    uvloop.run(_many_tokens_due_within_one_tick_go_out_in_one_write())


async def _many_tokens_due_within_one_tick_go_out_in_one_write():
    tick = 0.05
    start = _next_tick(tick)
    # 40 queries x 3 tokens + done, all due inside (start, start + tick]: one tick's worth
    queries = {}
    for q in range(40):
        due = sorted(start + tick * (q * 4 + k + 1) / 161 for k in range(3))
        queries[b"ch%d" % q] = [*due, due[-1]]
    conn, pub = await _publish(tick, queries)
    assert len(conn.writes) == 1, [len(cmds) for _, cmds in conn.writes]
    assert len(conn.writes[0][1]) == 40 * 4
    assert pub.statistics()["publish_batches"] == 1
    assert pub.statistics()["tokens_published"] == 40 * 3


def test_nothing_is_published_before_its_due_time():
    uvloop.run(_nothing_is_published_before_its_due_time())


async def _nothing_is_published_before_its_due_time():
    tick = 0.02
    start = _next_tick(tick)
    queries = {b"ch%d" % q: [start + 0.003 * (q + k) for k in range(6)] + [start + 0.003 * (q + 5)] for q in range(10)}
    conn, _ = await _publish(tick, queries)
    due_of = {(ch, m["seq"]): queries[ch][m["seq"]] for _, cmds in conn.writes for ch, m in cmds}
    for sent, cmds in conn.writes:
        for ch, m in cmds:
            assert sent >= due_of[(ch, m["seq"])], f"{ch!r} seq {m['seq']} sent before it was due"
    # coarse ticks batch: far fewer writes than the 70 distinct due instants
    assert len(conn.writes) < 20


def test_each_querys_messages_keep_their_order_across_ticks():
    uvloop.run(_each_querys_messages_keep_their_order_across_ticks())


async def _each_querys_messages_keep_their_order_across_ticks():
    tick = 0.01
    start = _next_tick(tick)
    queries = {
        b"ch%d" % q: [start + 0.004 * k + 0.0007 * q for k in range(12)] + [start + 0.004 * 11 + 0.0007 * q]
        for q in range(8)
    }
    conn, _ = await _publish(tick, queries)
    streams: dict[bytes, list[dict]] = {}
    for _, cmds in conn.writes:
        for ch, m in cmds:
            streams.setdefault(ch, []).append(m)
    for ch, stream in streams.items():
        assert [m["seq"] for m in stream] == list(range(13)), ch
        assert [m["type"] for m in stream] == ["token"] * 12 + ["done"]
        assert [m["ts"] for m in stream] == sorted(m["ts"] for m in stream)
    assert len(conn.writes) > 1  # spread over several ticks, still in order


def test_tick_zero_wakes_for_each_due_time():
    uvloop.run(_tick_zero_wakes_for_each_due_time())


async def _tick_zero_wakes_for_each_due_time():
    start = time.monotonic() + 0.05
    conn, _ = await _publish(0.0, {b"ch0": [start, start + 0.03, start + 0.06, start + 0.06]})
    assert len(conn.writes) >= 2
    for sent, cmds in conn.writes:
        assert all(sent >= start + 0.03 * min(m["seq"], 2) for _, m in cmds)


def test_a_tick_over_max_batch_goes_out_in_several_writes_each_query_in_order():
    uvloop.run(_a_tick_over_max_batch_goes_out_in_several_writes_each_query_in_order())


async def _a_tick_over_max_batch_goes_out_in_several_writes_each_query_in_order():
    tick = 0.02
    start = _next_tick(tick)
    conn = FakeLink()
    conn.expected = 12 * 6
    pub = Publisher(_returns(conn), tick_s=tick, max_batch=7)
    pub.start()
    try:
        for q in range(12):  # 12 queries x (5 tokens + done), all due within one tick
            due = [start - tick / 2 + 0.0001 * (q + k) for k in range(5)]
            pub.submit(b"ch%d" % q, b"q%d" % q, encode_tokens([f"w{k}" for k in range(5)]), [*due, due[-1]])
        assert pub.statistics()["queries_in_flight"] == 12
        await asyncio.wait_for(conn.all_sent.wait(), 10)
    finally:
        await pub.aclose()
    assert all(len(cmds) <= 7 for _, cmds in conn.writes)
    assert len(conn.writes) == math.ceil(12 * 6 / 7)
    streams: dict[bytes, list[int]] = {}
    for _, cmds in conn.writes:
        for ch, m in cmds:
            streams.setdefault(ch, []).append(m["seq"])
    assert streams == {b"ch%d" % q: list(range(6)) for q in range(12)}
    stats = pub.statistics()
    assert (stats["queries_in_flight"], stats["messages_dropped"], stats["done_published"]) == (0, 0, 12)


def test_publish_tick_ms_is_validated_and_defaults_to_5():
    env = {"JWT_SECRET": "s" * 40}
    assert SimSettings.from_env(env).publish_tick_ms == 5.0
    assert SimSettings.from_env({**env, "PUBLISH_TICK_MS": "0"}).publish_tick_ms == 0.0
    for bad in ("-1", "101", "soon"):
        with pytest.raises(ConfigError, match="PUBLISH_TICK_MS"):
            SimSettings.from_env({**env, "PUBLISH_TICK_MS": bad})
    with pytest.raises(ConfigError, match="SIM_REDIS_POOL_SIZE"):
        SimSettings.from_env({**env, "SIM_REDIS_POOL_SIZE": "0"})


def test_a_negative_tick_is_refused():
    with pytest.raises(ValueError, match="tick"):
        Publisher(lambda: None, tick_s=-0.001)


class SwallowingLink(FakeLink):
    """A write in flight that swallows one cancellation, as asyncio.wait_for does on Python 3.11 when the
    cancel lands as the awaited work completes (CPython gh-86296)."""

    def __init__(self) -> None:
        super().__init__()
        self.writing = asyncio.Event()
        self.swallowed = 0

    async def call(self, data: bytes, replies: int) -> list[int]:
        self.writing.set()
        try:
            await asyncio.sleep(0.2)  # the slow write
        except asyncio.CancelledError:
            if self.swallowed:
                raise
            self.swallowed += 1
        return await super().call(data, replies)


def test_aclose_stops_the_task_even_when_a_cancellation_is_swallowed():
    async def main() -> None:
        conn = SwallowingLink()
        pub = Publisher(_returns(conn), tick_s=0.005)
        pub.start()
        now = time.monotonic()
        pub.submit(b"ch0", b"q0", encode_tokens(["a", "b", "c"]), [now, now + 0.01, now + 0.02, now + 0.02])
        await asyncio.wait_for(conn.writing.wait(), 5)
        started = time.monotonic()
        await asyncio.wait_for(pub.aclose(), 5)  # hung forever when one cancel was all it tried
        assert time.monotonic() - started < 2.0
        assert conn.swallowed == 1
        assert not pub.running

    uvloop.run(main())


def test_cancel_ends_a_channels_queries_with_a_cancelled_done_counting_what_was_published():
    uvloop.run(_cancel_ends_a_channels_queries_with_a_cancelled_done_counting_what_was_published())


async def _cancel_ends_a_channels_queries_with_a_cancelled_done_counting_what_was_published():
    tick = 0.005
    conn = FakeLink()
    pub = Publisher(_returns(conn), tick_s=tick)
    pub.start()
    try:
        now = time.monotonic()
        # two queries of the closed session (3 tokens now, 7 an hour away) and one of another session
        far = [now + 0.001 * k for k in range(3)] + [now + 3600 + k for k in range(7)]
        for ch, qid in ((b"chA", b"qA1"), (b"chA", b"qA2"), (b"chB", b"qB")):
            pub.submit(ch, qid, encode_tokens([f"w{k}" for k in range(10)]), [*far, far[-1]])
        assert (pub.in_flight_on(b"chA"), pub.in_flight_on(b"chB"), pub.queries_in_flight) == (2, 1, 3)
        assert pub.tokens_in_flight == 30
        conn.expected = 9  # the first three tokens of each query
        await asyncio.wait_for(conn.all_sent.wait(), 10)
        conn.all_sent.clear()
        conn.expected = 9 + 2
        assert pub.cancel(b"chA") == 2
        assert pub.cancel(b"chA") == 0  # already cancelled: nothing twice
        await asyncio.wait_for(conn.all_sent.wait(), 10)
        stats = pub.statistics()
        left = (pub.in_flight_on(b"chA"), pub.in_flight_on(b"chB"), pub.queries_in_flight, pub.tokens_in_flight)
    finally:
        await pub.aclose()
    dones = [(ch, m) for _, cmds in conn.writes for ch, m in cmds if m["type"] == "done"]
    assert sorted(m["query_id"] for _, m in dones) == ["qA1", "qA2"]
    for ch, m in dones:
        assert ch == b"chA" and m["cancelled"] is True and m["tokens"] == m["seq"] == 3
    assert left == (0, 1, 1, 10)
    assert (stats["queries_cancelled"], stats["tokens_cancelled"], stats["queries_in_flight"]) == (2, 14, 1)
    assert stats["done_published"] == 2 and stats["tokens_published"] == 9


def test_a_cancelled_query_is_not_published_again_when_its_old_bucket_comes_due():
    uvloop.run(_a_cancelled_query_is_not_published_again_when_its_old_bucket_comes_due())


async def _a_cancelled_query_is_not_published_again_when_its_old_bucket_comes_due():
    tick = 0.005
    conn = FakeLink()
    pub = Publisher(_returns(conn), tick_s=tick)
    pub.start()
    try:
        soon = time.monotonic() + 0.2
        pub.submit(b"chA", b"qA", encode_tokens(["a", "b"]), [soon, soon, soon])
        pub.submit(b"chB", b"qB", encode_tokens(["a", "b"]), [soon + 0.05] * 3)
        assert pub.cancel(b"chA") == 1
        conn.expected = 1 + 3  # qA's cancelled done, then qB whole (after qA's old bucket came due)
        await asyncio.wait_for(conn.all_sent.wait(), 10)
    finally:
        await pub.aclose()
    messages = [(ch, m["type"], m.get("cancelled")) for _, cmds in conn.writes for ch, m in cmds]
    assert messages == [
        (b"chA", "done", True),
        (b"chB", "token", None),
        (b"chB", "token", None),
        (b"chB", "done", None),
    ]
