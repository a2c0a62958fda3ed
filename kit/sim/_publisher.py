"""The per-process token scheduler: tick buckets, one task, one pipelined write per tick.

Why: one sleeping task and one awaited ``PUBLISH`` round trip per token tops out
near 10k messages/s per core; this publishes every message that is due in one
packed write (raw RESP ``PUBLISH`` commands) and reads the replies back in one
go, which is what makes 50k+ tokens/s per core possible.

Ticks (``PUBLISH_TICK_MS``, default 5): the task wakes on a grid of ``tick``
seconds of ``time.monotonic()`` and each wake-up publishes every message due
up to that instant in one write.  Without it (tick 0) the task wakes at each
message's own due time, so 1,000 streams 50 ms apart at realistic pacing mean
~20,000 wake-ups (each a timer, a loop pass and a one-message write) a second;
with 5 ms ticks at most 200, ~100 messages each.  A message is never published
before its due time (it goes out on the first tick at or after it, so at most one
tick late: the ``publish_max_lag_ms`` counter shows it); its ``ts`` is still
``time.time_ns()`` when it is built, just before the write, so the delivery
latency the client measures from ``ts`` is not biased by the tick.

Ownership: :class:`Publisher` owns its background task (``start``/``aclose``)
and one Redis connection of its own (a :class:`kit._resp.RespLink`, made by the *connect* factory, opened on
first use, reopened after a failure, closed by ``aclose``), so a burst of HTTP
requests holding every connection of the app's pool cannot starve publishing.
Memory is proportional to queries in flight: each is in one bucket, that of its next message.

Buckets: a query waits in the bucket of the tick its next message is due by (a dict from wake-up
instant to the queries due by then, and a heap of those instants, a dozen or so at a time), so a
published message costs an append to a list, O(1) whatever the number of queries in flight, not a
``heapreplace`` among all of them (with 1,000 queries in flight that took ~15% of the time spent
building batches).  With tick 0 each due time is a bucket of its own.

Order: within a query, messages leave in ``seq`` order (a query is in one bucket at a time, due
times non-decreasing) on one connection, so Redis delivers them in order.

Cancel: :meth:`Publisher.cancel` ends every query in flight on one channel (a closed session's): each
is filed again in the current tick's bucket, marked, and its due times and texts let go; on that tick
its stream ends with a ``done`` marked ``cancelled`` (:data:`kit.wire.DONE_CANCELLED`) whose ``tokens``
is what was published before.  The entry left in its old bucket is skipped when that bucket comes due.
The queries in flight are also indexed by channel (O(1) per submit and per end), which is what the
per-session bound (:meth:`Publisher.in_flight_on`) and the cancel read.

Errors: a failed write or read, or an error reply to any of its PUBLISHes, drops that batch's messages (counted in
``messages_dropped`` and ``publish_errors``), disconnects the connection, and is
logged at most once per second with counts and the error class; message contents
and credentials never reach the log.  On ``aclose`` undelivered messages are
dropped and counted.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

from kit._resp import checked

from ._schedule import done_message, token_message

if TYPE_CHECKING:
    from kit._resp import RespLink

__all__ = ["Publisher", "MAX_BATCH", "DEFAULT_TICK_S"]

log = logging.getLogger(__name__)

#: messages per packed write; bounds the write size and how long one batch holds the loop
MAX_BATCH = 4096
#: the default wake-up grid (PUBLISH_TICK_MS); SimSettings.publish_tick_ms says why 5 ms
DEFAULT_TICK_S = 0.005
_LOG_EVERY_S = 1.0
#: a batch's write and replies must complete within this, or the batch is dropped and the connection reset
_BATCH_TIMEOUT_S = 5.0
#: aclose cancels the task again after this if a cancellation was swallowed
_CANCEL_RETRY_S = 0.05


class _Query:
    __slots__ = ("channel", "prefix", "query_id", "texts", "due", "n", "i", "cancelled")

    def __init__(self, channel: bytes, query_id: bytes, texts: Sequence[bytes], due: Sequence[float]) -> None:
        self.channel = channel
        self.prefix = _resp_head(channel)  # RESP "*3 PUBLISH <channel>" head, packed once
        self.query_id = query_id
        self.texts = texts
        self.due = due  # absolute time.monotonic() times, len(texts) + 1 (done last)
        self.n = len(texts)
        self.i = 0  # next seq to publish; n + 1 once the query has ended
        self.cancelled = False  # cancel() marked it: its next message is a cancelled done


def _resp_head(channel: bytes) -> bytes:
    return b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%s\r\n" % (len(channel), channel)


class Publisher:
    """Publishes scheduled token streams; ``submit`` from request handlers, one task sends.

    *connect* makes the publisher's own connection (a redis.asyncio ``Connection``,
    not yet connected); *tick_s* is the wake-up grid in seconds, 0 for a wake-up
    at every due time.
    """

    def __init__(
        self, connect: Callable[[], Awaitable[RespLink]], *, tick_s: float = DEFAULT_TICK_S, max_batch: int = MAX_BATCH
    ) -> None:
        if tick_s < 0:
            raise ValueError(f"tick_s must be >= 0, got {tick_s}")
        self._connect = connect
        self._link: RespLink | None = None
        self._tick = tick_s
        self._max_batch = max_batch
        self._wakes: list[float] = []  # heap of the buckets' wake-up instants
        self._buckets: dict[float, list[_Query]] = {}  # wake-up instant -> queries due by then
        self._in_flight = 0
        self._tokens_in_flight = 0  # tokens (due times held) of the queries in flight
        self._by_channel: dict[bytes, dict[_Query, None]] = {}  # channel -> its queries in flight
        self._task: asyncio.Task | None = None
        self._wake: asyncio.Future | None = None
        self._wake_at = float("inf")
        self._last_error_log = 0.0
        self._errors_since_log = 0
        # counters (per process), see statistics()
        self.tokens_published = 0
        self.done_published = 0
        self.messages_unheard = 0  # PUBLISH replied 0 receivers
        self.messages_dropped = 0
        self.publish_errors = 0
        self.batches = 0
        self.max_batch_seen = 0
        self.max_lag_s = 0.0  # worst lateness of a message vs. its due time
        self.queries_cancelled = 0
        self.tokens_cancelled = 0  # tokens of cancelled queries never published

    # -- lifecycle ---------------------------------------------------------
    def start(self) -> None:
        """Start the background task on the running loop (the app's before_serving)."""
        if self._task is not None:
            raise RuntimeError("publisher already started")
        self._task = asyncio.get_running_loop().create_task(self._run(), name="kit.sim publisher")
        self._task.add_done_callback(_report_death)

    @property
    def running(self) -> bool:
        """False once stopped, or if the task died (then /health answers 503)."""
        return self._task is not None and not self._task.done()

    async def aclose(self) -> None:
        """Stop the task; messages not yet published are dropped and counted."""
        task, self._task = self._task, None
        if task is not None:
            # asyncio.wait_for on Python 3.11 swallows a cancellation that lands just as what it awaits
            # completes (CPython gh-86296; redis-py, which the publisher once sent through, used it): the
            # task then published on, waited for work forever once its heap was empty, and held the
            # worker's shutdown until its supervisor killed it.  So cancel until the task is really done.
            while not task.done():
                task.cancel()
                await asyncio.wait([task], timeout=_CANCEL_RETRY_S)
        pending = sum(1 if q.cancelled else q.n + 1 - q.i for queries in self._by_channel.values() for q in queries)
        if pending:
            log.info("publisher stopped with %d queries in flight; %d messages dropped", self._in_flight, pending)
            self.messages_dropped += pending
        self._wakes.clear()
        self._buckets.clear()
        self._by_channel.clear()
        self._in_flight = 0
        self._tokens_in_flight = 0
        self._drop_link()

    # -- producers ---------------------------------------------------------
    def submit(self, channel: bytes, query_id: bytes, texts: Sequence[bytes], due: Sequence[float]) -> None:
        """Schedule one query: ``texts[i]`` (JSON string literals) due at ``time.monotonic()``
        time ``due[i]``, the done message at ``due[len(texts)]``.  Never blocks."""
        if len(due) != len(texts) + 1:
            raise ValueError("due must hold one time per token plus one for done")
        if self._task is None:
            raise RuntimeError("publisher is not running")
        q = _Query(channel, query_id, texts, due)
        self._file(q, self._wake_time(due[0]))
        self._in_flight += 1
        self._tokens_in_flight += q.n
        queries = self._by_channel.get(channel)
        if queries is None:
            self._by_channel[channel] = {q: None}
        else:
            queries[q] = None
        self._wake_by(due[0])

    def cancel(self, channel: bytes) -> int:
        """End every query in flight on *channel* on the next tick, each with a ``done`` marked cancelled
        (see the module docstring); returns how many.  Never blocks."""
        queries = self._by_channel.get(channel)
        if not queries or self._task is None:
            return 0
        now = time.monotonic()
        wake = self._wake_time(now)
        count = 0
        for q in queries:
            if q.cancelled:
                continue
            q.cancelled = True
            self.queries_cancelled += 1
            self.tokens_cancelled += q.n - q.i
            q.texts = q.due = ()  # the rest of its schedule is not needed: free it now
            self._file(q, wake)
            count += 1
        if count:
            self._wake_by(now)
        return count

    def in_flight_on(self, channel: bytes) -> int:
        """Queries in flight on *channel* (one session's)."""
        queries = self._by_channel.get(channel)
        return len(queries) if queries else 0

    @property
    def queries_in_flight(self) -> int:
        return self._in_flight

    @property
    def tokens_in_flight(self) -> int:
        """Tokens of the queries in flight (their schedules are held until each ends)."""
        return self._tokens_in_flight

    def _wake_by(self, due: float) -> None:
        """Wake the task if it sleeps past the tick of *due*."""
        if self._wake is not None and self._wake_time(due) < self._wake_at and not self._wake.done():
            self._wake.set_result(None)

    def _end(self, q: _Query) -> None:
        """*q* published its last message (done, cancelled or not)."""
        q.i = q.n + 1
        self._in_flight -= 1
        self._tokens_in_flight -= q.n
        queries = self._by_channel[q.channel]
        del queries[q]
        if not queries:
            del self._by_channel[q.channel]

    def _file(self, q: _Query, wake: float) -> None:
        bucket = self._buckets.get(wake)
        if bucket is None:
            self._buckets[wake] = [q]
            heapq.heappush(self._wakes, wake)
        else:
            bucket.append(q)

    def statistics(self) -> dict[str, int | float]:
        return {
            "tokens_published": self.tokens_published,
            "done_published": self.done_published,
            "messages_unheard": self.messages_unheard,
            "messages_dropped": self.messages_dropped,
            "publish_errors": self.publish_errors,
            "publish_batches": self.batches,
            "publish_max_batch": self.max_batch_seen,
            "publish_max_lag_ms": round(self.max_lag_s * 1000.0, 3),
            "publish_tick_ms": round(self._tick * 1000.0, 3),
            "queries_in_flight": self._in_flight,
            "tokens_in_flight": self._tokens_in_flight,
            "queries_cancelled": self.queries_cancelled,
            "tokens_cancelled": self.tokens_cancelled,
        }

    # -- the task ----------------------------------------------------------
    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        wakes = self._wakes
        clock = time.monotonic
        while True:
            # a precise clock, not loop.time() (uvloop's is cached, in whole ms): never publish early
            now = clock()
            # with a tick, wait for the tick at or after the first due message: what fell due
            # meanwhile (other queries, later tokens) goes out in the same write
            if not wakes or wakes[0] > now:
                await self._sleep(loop)
                continue
            parts, tokens, dones, lag = self._collect(now)
            if not parts:  # due a hair after its tick instant (float rounding): let it come due
                await asyncio.sleep(0)
                continue
            await self._send(parts, tokens, dones)
            if lag > self.max_lag_s:
                self.max_lag_s = lag

    def _wake_time(self, due: float) -> float:
        """When to wake for a message due at *due*: the first tick of the grid at or after it."""
        tick = self._tick
        return math.ceil(due / tick) * tick if tick > 0 else due

    async def _sleep(self, loop: asyncio.AbstractEventLoop) -> None:
        fut = loop.create_future()
        self._wake = fut
        handle = None
        if self._wakes:
            self._wake_at = self._wakes[0]
            # timers are ms-grained (uvloop): round up so we wake at or after the due time
            delay = math.ceil(max(0.0, self._wake_at - time.monotonic()) * 1000.0) / 1000.0
            handle = loop.call_later(delay, _wake_up, fut)
        else:
            self._wake_at = float("inf")
        try:
            await fut
        finally:
            self._wake = None
            self._wake_at = float("inf")
            if handle is not None:
                handle.cancel()

    def _collect(self, now: float) -> tuple[list[bytes], int, int, float]:
        """Pop every message due at *now* (up to max_batch) into packed RESP parts."""
        wakes, buckets = self._wakes, self._buckets
        parts: list[bytes] = []
        append = parts.append
        time_ns = time.time_ns
        tokens = dones = 0
        lag = 0.0
        room = self._max_batch
        while wakes and wakes[0] <= now:
            wake = wakes[0]
            bucket = buckets[wake]
            held: list[_Query] = []  # not due yet after all (float rounding), or over max_batch
            while bucket:
                q = bucket.pop()
                due, i, n = q.due, q.i, q.n
                if i > n:  # ended (cancelled) while filed here too: nothing left of it
                    continue
                if room <= 0:
                    held.append(q)
                    continue
                if q.cancelled:
                    msg = done_message(q.query_id, i, time_ns(), cancelled=True)
                    append(q.prefix)
                    append(b"$%d\r\n%s\r\n" % (len(msg), msg))
                    dones += 1
                    room -= 1
                    self._end(q)
                    continue
                if due[i] > now:
                    held.append(q)
                    continue
                if now - due[i] > lag:
                    lag = now - due[i]
                prefix, query_id, texts = q.prefix, q.query_id, q.texts
                while True:  # this query's messages due by now, in seq order
                    if i < n:
                        msg = token_message(query_id, i, time_ns(), texts[i])
                        tokens += 1
                    else:
                        msg = done_message(query_id, n, time_ns())
                        dones += 1
                    append(prefix)
                    append(b"$%d\r\n%s\r\n" % (len(msg), msg))
                    i += 1
                    room -= 1
                    if i > n or room <= 0 or due[i] > now:
                        break
                q.i = i
                if i > n:
                    self._end(q)
                elif due[i] <= now:  # max_batch reached: the rest goes in the next write
                    held.append(q)
                else:
                    self._file(q, self._wake_time(due[i]))
            if held:
                bucket.extend(held)
                break
            del buckets[wake]
            heapq.heappop(wakes)
        return parts, tokens, dones, lag

    async def _send(self, parts: list[bytes], tokens: int, dones: int) -> None:
        count = tokens + dones
        try:
            # one deadline for the whole batch (the connect, if the link is not open, then the write and
            # every reply); the replies are parsed by hiredis as they arrive, no await per reply
            async with asyncio.timeout(_BATCH_TIMEOUT_S):
                link = self._link
                if link is None or not link.open:
                    link = self._link = await self._connect()
                replies = checked(await link.call(b"".join(parts), count))  # an error reply fails the batch
        except asyncio.CancelledError:
            self._drop_link()
            self.messages_dropped += count
            raise
        except Exception as exc:  # noqa: BLE001 - any Redis/socket failure drops this batch only
            self._drop_link()
            self.messages_dropped += count
            self.publish_errors += 1
            self._log_error(exc, count)
        else:
            self.tokens_published += tokens
            self.done_published += dones
            self.messages_unheard += replies.count(0)
            self.batches += 1
            if count > self.max_batch_seen:
                self.max_batch_seen = count

    def _drop_link(self) -> None:
        link, self._link = self._link, None
        if link is not None:
            link.close()

    def _log_error(self, exc: Exception, count: int) -> None:
        self._errors_since_log += 1
        now = time.monotonic()
        if now - self._last_error_log >= _LOG_EVERY_S:
            log.warning(
                "publishing failed (%s: %s); dropped %d messages of this batch; "
                "%d failed batches since the last report, %d dropped in total",
                type(exc).__name__,
                exc,
                count,
                self._errors_since_log,
                self.messages_dropped,
            )
            self._last_error_log = now
            self._errors_since_log = 0


def _report_death(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error(
            "the publisher task died; no more tokens will be published by this process", exc_info=task.exception()
        )


def _wake_up(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)
