"""One load-test session: create, connect, run N queries, receive tokens until done, close.

A :class:`Session` owns its WebSocket and one reader task (in the session's
own nursery).  The reader feeds every message to the query it belongs to
(by ``query_id``; a message that arrives before ``POST /run`` has answered
belongs to the query in flight) and, when the connection ends while the
session is still running, reconnects with exponential backoff and jitter
(:func:`backoff_delay`), counting attempts and successes.  Every attempt after a
session's first try (a reconnect, a retry of the first connect) then waits for a
token of its process's bucket (:class:`kit.client._limiter.TokenBucket`), so that
sessions dropped together do not come back as a storm; the recorder's counters keep
the waits for a token (``reconnect_bucket_waits``, ``reconnect_bucket_wait_us``)
apart from the backoff's (``reconnect_backoff_wait_us``).  Reconnecting
resumes the stream: tokens of the query in flight keep being accounted, and
whatever was published while we were away is counted as lost from ``seq``
and ``done.tokens``.  A query whose ``done`` never arrives fails after
``query_timeout`` seconds with an error saying how many tokens came.

Faults: a ``/run`` answered 404 means the session is gone (e.g. Redis restarted and lost it):
the session ends at once, its remaining queries skipped, instead of posting each in turn.
After a reconnect the query in flight cannot know what it missed until its next message
arrives (whose ``seq`` shows the gap exactly); if its stream ended while the socket was down
(``done`` published then), no message will ever come.  So: once reconnected, a query that
receives no message within :func:`resume_grace` (``RESUME_GRACE_S``, or 5 of its own mean
inter-token gaps if longer) fails at once (status ``lost_tokens``, error ``lost_on_reconnect: ...``,
kind ``query_lost_on_reconnect``) with what it received counted and the rest (``/run``'s
``tokens`` minus those) lost, instead of waiting for the whole ``query_timeout``.

A session of a stage slot (``--stages``, closed model) gets the slot's ``retire`` event: once it is set,
the session leaves cleanly: it starts no new query (the one in flight finishes; a think-time wait is cut
short), closes its WebSocket and its HTTP session, and counts as ok with ``left_early`` set; the queries it
did not get to are neither failed nor skipped.

Errors never escape ``run``: they are recorded (session row, query rows,
the recorder's error breakdown).  Cancellation (``--max-duration``) marks
the session and its query in flight ``cancelled`` and closes the socket.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import random
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import orjson
import trio

from kit.options import default as option_default

from ._accounting import QueryRecord, Recorder, SessionRecord
from ._http import CertificateError, HTTPError, HttpPool, Response
from ._hub import Hub
from ._limiter import TokenBucket
from ._ws import ConnectionClosed, HandshakeError, ProtocolError, TLSError, WebSocket, connect

if TYPE_CHECKING:
    from ._workload import WorkloadRecord

_T = TypeVar("_T")

__all__ = [
    "SessionConfig",
    "Session",
    "backoff_delay",
    "connect_with_retry",
    "GaveUp",
    "resume_grace",
    "RESUME_GRACE_S",
]

log = logging.getLogger(__name__)

#: seconds after a reconnect within which the query in flight must receive a message, else its
#: stream ended while the socket was down (floor; a slow stream gets 5 of its own mean gaps)
RESUME_GRACE_S = 2.0
#: mean inter-token gaps a resumed stream may take to show its next message
RESUME_GAPS = 5


@dataclasses.dataclass(frozen=True, kw_only=True)
class SessionConfig:
    """What every session of a run does (built by the CLI from options and env; defaults: kit.options)."""

    api_url: str
    ws_url: str
    queries: int = option_default("queries")
    think_time: float = option_default("think_time")
    query_timeout: float = option_default("query_timeout")
    #: the workload sent with each /run (None: the simulator's deployed value); bounds: kit.sim._body
    max_tokens: int | None = None
    token_delay_ms: float | None = None
    ttft_ms: float | None = None
    token_jitter_ms: float | None = None
    #: the workload class the session was drawn from (kit.client._workload)
    workload_class: str = "default"
    agent_id: str = option_default("agent_id")
    query_text: str = option_default("query_text")
    max_reconnect_attempts: int = option_default("max_reconnect_attempts")
    initial_backoff: float = option_default("initial_backoff")
    max_backoff: float = option_default("max_backoff")
    #: fraction of each backoff delay that is random: delay in [base*(1-jitter), base]
    jitter: float = option_default("jitter")
    connect_timeout: float = option_default("connect_timeout")
    #: open model: a session's first query is timed from the session's intended start
    #: (create + connect + any stall before it count); closed model: from its submit
    time_from_intended: bool = False


def backoff_delay(attempt: int, initial: float, cap: float, jitter: float, rng: random.Random) -> float:
    """Delay before reconnect *attempt* (1-based): ``min(cap, initial*2**(attempt-1))`` minus up to
    *jitter* of it, so retries of many sessions spread out instead of arriving together."""
    base = min(cap, initial * (2 ** min(attempt - 1, 62)))
    return base * (1.0 - jitter * rng.random())


def resume_grace(q: QueryRecord) -> float:
    """Seconds a query resumed by a reconnect waits for its next message before it counts as lost."""
    if q.received > 1 and q.last_ns > q.first_ns:
        gap_s = (q.last_ns - q.first_ns) / (q.received - 1) / 1e9
        return max(RESUME_GRACE_S, RESUME_GAPS * gap_s)
    return RESUME_GRACE_S


class GaveUp(Exception):
    """All connect attempts failed; the message says why the last one did."""


#: the error kind's suffix of a refused server certificate (create and connect alike)
TLS_CERTIFICATE_KIND = "tls_certificate"


def _error_kind(prefix: str, exc: BaseException) -> str:
    if isinstance(exc, (TLSError, CertificateError)):
        return f"{prefix}_{TLS_CERTIFICATE_KIND}" if getattr(exc, "certificate", True) else f"{prefix}_tls"
    if isinstance(exc, HandshakeError):
        return f"{prefix}_http_{exc.status}"
    if isinstance(exc, ConnectionClosed):
        return f"{prefix}_closed_{exc.code}"
    if isinstance(exc, trio.TooSlowError):
        return f"{prefix}_timeout"
    if isinstance(exc, OSError) and exc.errno is not None:
        import errno as _errno

        return f"{prefix}_{_errno.errorcode.get(exc.errno, exc.errno)}".lower()
    return f"{prefix}_{type(exc).__name__}"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, trio.TooSlowError):
        return "timed out"
    return str(exc) or type(exc).__name__


_RETRYABLE = (OSError, ProtocolError, ConnectionClosed, trio.TooSlowError)


async def connect_with_retry(
    open_fn: Callable[[], Awaitable[_T]],
    *,
    attempts: int,
    initial: float,
    cap: float,
    jitter: float,
    rng: random.Random,
    first_immediately: bool,
    on_attempt=None,
    limiter: TokenBucket | None = None,
    on_wait=None,
) -> _T:
    """Call ``await open_fn()`` until it succeeds, at most *attempts* times after the first try
    (if *first_immediately*) with :func:`backoff_delay` sleeps in between.

    Each try but an immediate first one waits its backoff, then a token of *limiter* (when given);
    ``on_wait(backoff_s, bucket_s)`` is called with both waits before that try, and
    ``on_attempt(n, exc_or_None)`` after each try.  A 4xx handshake
    answer is final (a bad token does not get better), and so is a refused TLS certificate.  Raises GaveUp.
    """
    tries = attempts + (1 if first_immediately else 0)
    last: BaseException | None = None
    for n in range(1, tries + 1):
        retry_n = n - 1 if first_immediately else n
        if retry_n >= 1:
            delay = backoff_delay(retry_n, initial, cap, jitter, rng)
            await trio.sleep(delay)
            bucket_s = await limiter.acquire() if limiter is not None else 0.0
            if on_wait:
                on_wait(delay, bucket_s)
        try:
            result = await open_fn()
        except HandshakeError as exc:
            if on_attempt:
                on_attempt(n, exc)
            if 400 <= exc.status < 500:
                raise GaveUp(f"refused: {_describe(exc)}") from exc
            last = exc
            continue
        except TLSError as exc:
            if on_attempt:
                on_attempt(n, exc)
            if exc.certificate:
                raise GaveUp(f"refused: {_describe(exc)}") from exc
            last = exc
            continue
        except _RETRYABLE as exc:
            if on_attempt:
                on_attempt(n, exc)
            last = exc
            continue
        if on_attempt:
            on_attempt(n, None)
        return result
    raise GaveUp(f"gave up after {tries} attempt(s): {_describe(last) if last else 'no attempt allowed'}")


class Session:
    """One session of the load; ``await run()`` does everything and records the outcome."""

    def __init__(
        self,
        cfg: SessionConfig,
        http: HttpPool,
        rec: Recorder,
        index: int,
        intended_ns: int,
        rng: random.Random,
        hub: Hub | None = None,
        workload: WorkloadRecord | None = None,
        ssl_context: ssl.SSLContext | None = None,
        limiter: TokenBucket | None = None,
        retire: trio.Event | None = None,
    ) -> None:
        self.cfg = cfg
        #: its stage slot's retirement (kit.client._load): once set, the session leaves cleanly
        self.retire = retire
        #: the process's bucket every attempt after the first try waits for (None: no limit)
        self.limiter = limiter
        #: the process's TLS context for wss:// (None: the system store)
        self.ssl_context = ssl_context
        #: a kit.client._workload.WorkloadRecord told the effective workload /run answered (or None)
        self.workload = workload
        self.hub = hub
        self.http = http
        self.rec = rec
        self.rng = rng
        self.s = SessionRecord(index, intended_ns, time.monotonic_ns())
        self.ws: WebSocket | None = None
        self.by_id: dict[str, QueryRecord] = {}
        self.current: QueryRecord | None = None
        self.closing = False
        self.broken: str | None = None
        self._token = ""
        self._ws_path = ""
        self._nursery: trio.Nursery | None = None
        #: why the server no longer knows this session (then there is nothing to close)
        self._gone: str | None = None
        #: the query in flight whose stream ended while the socket was down (lost_on_reconnect)
        self._lost_on_reconnect: QueryRecord | None = None

    # ---------------------------------------------------------------- lifecycle

    async def run(self) -> None:
        rec, s = self.rec, self.s
        rec.active_sessions += 1
        rec.counters["sessions_started"] += 1
        rec.hists["start_lag"].record(max(0, s.start_ns - s.intended_ns) // 1000)
        try:
            try:
                await self._run()
            except Exception as exc:  # a bug must not kill the whole load: record it loudly
                log.exception("session %s failed unexpectedly", s.index)
                s.errors.append(f"internal error: {exc!r}")
                rec.error("internal")
                s.status = "failed"
            if not s.status:
                s.status = "ok" if not s.errors and s.queries_failed == 0 and s.queries_skipped == 0 else "failed"
        finally:
            if not s.status:  # cancelled (or an unexpected exception): record what we have
                s.status = "cancelled"
                q = self.current
                if q is not None and not q.status:
                    q.finish(status="cancelled", error="run ended (--max-duration) before done")
                    rec.query_finished(q)
                    s.queries_failed += 1
                    rec.error("cancelled")
            if self.ws is not None:
                self.ws.abort_nowait()
            s.end_ns = time.monotonic_ns()
            rec.active_sessions -= 1
            rec.session_finished(s)

    async def _run(self) -> None:
        cfg, s = self.cfg, self.s
        if not await self._create():
            s.queries_skipped = cfg.queries
            return
        if not await self._connect_first():
            s.queries_skipped = cfg.queries
            await self._close_http()
            return
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._reader)
            intended = s.intended_ns
            for k in range(cfg.queries):
                if self.broken:
                    s.queries_skipped = cfg.queries - k
                    break
                if self.retire is not None and self.retire.is_set():
                    s.left_early = True
                    break
                now = time.monotonic_ns()
                await self._query(k, intended if k == 0 and cfg.time_from_intended else now, now)
                if cfg.think_time and k + 1 < cfg.queries:
                    await self._think(cfg.think_time)
            self.closing = True
            if self.ws is not None and not self.ws.closed:
                await self.ws.aclose()
            nursery.cancel_scope.cancel()
        await self._close_http()

    async def _think(self, seconds: float) -> None:
        """Wait *seconds* between queries; a retirement cuts the wait short (the session is leaving)."""
        if self.retire is None:
            await trio.sleep(seconds)
            return
        with trio.move_on_after(seconds):
            await self.retire.wait()

    async def _create(self) -> bool:
        s, rec = self.s, self.rec
        t = time.monotonic_ns()
        try:
            resp = await self._post("/session/create", {"agent_id": self.cfg.agent_id})
        except HTTPError as exc:
            s.errors.append(f"create: {type(exc).__name__}: {exc}")
            rec.error(
                _error_kind("create", exc) if isinstance(exc, CertificateError) else f"create_{type(exc).__name__}"
            )
            return False
        if resp.status_code != 201:
            s.errors.append(f"create: HTTP {resp.status_code}: {resp.text[:200]}")
            rec.error(f"create_http_{resp.status_code}")
            return False
        s.create_us = (time.monotonic_ns() - t - resp.pool_wait_ns) // 1000  # the server's time, not our queue
        rec.session_created(s)
        try:
            body = resp.json()
            s.session_id = body["session_id"]
            self._token = body["auth_token"]
            self._ws_path = body.get("ws_path") or f"/{self.cfg.agent_id}/ws/{s.session_id}"
        except (ValueError, KeyError, TypeError) as exc:
            s.errors.append(f"create: malformed answer ({exc!r})")
            rec.error("create_malformed")
            return False
        return True

    async def _open(self) -> WebSocket:
        with trio.fail_after(self.cfg.connect_timeout):
            return await connect(
                self.cfg.ws_url,
                self._ws_path,
                [("Authorization", f"Bearer {self._token}")],
                ssl_context=self.ssl_context,
            )

    def _count_attempt(self, reconnecting: bool, n: int, exc: BaseException | None) -> None:
        """Account one connect attempt: the first connect's retries count as reconnects too."""
        s, rec = self.s, self.rec
        if not reconnecting:
            s.connect_attempts += 1
        if reconnecting or n > 1:
            s.reconnect_attempts += 1
            rec.counters["reconnect_attempts_live"] += 1
            if exc is None:
                s.reconnects_ok += 1
                rec.counters["reconnects_ok_live"] += 1
        if exc is not None and not reconnecting:
            s.errors.append(f"connect: {_describe(exc)}")
            rec.error(_error_kind("connect", exc))

    def _count_wait(self, backoff_s: float, bucket_s: float) -> None:
        """Account the waits before one attempt: its backoff, and its wait for a token (if it had to)."""
        c = self.rec.counters
        c["reconnect_backoff_wait_us"] += int(backoff_s * 1e6)
        if bucket_s:
            c["reconnect_bucket_waits"] += 1
            c["reconnect_bucket_wait_us"] += int(bucket_s * 1e6)

    async def _open_with_retry(self, *, reconnecting: bool) -> str | None:
        """Open the WebSocket (self.ws) with the session's backoff and the process's reconnect bucket: the
        first connect tries at once, a reconnect waits first.  None once open, else why it gave up."""
        cfg = self.cfg
        try:
            self.ws = await connect_with_retry(
                self._open,
                attempts=cfg.max_reconnect_attempts,
                initial=cfg.initial_backoff,
                cap=cfg.max_backoff,
                jitter=cfg.jitter,
                rng=self.rng,
                first_immediately=not reconnecting,
                on_attempt=functools.partial(self._count_attempt, reconnecting),
                limiter=self.limiter,
                on_wait=self._count_wait,
            )
        except GaveUp as exc:
            return str(exc)
        return None

    async def _connect_first(self) -> bool:
        s = self.s
        t = time.monotonic_ns()
        tries_failed_from = len(s.errors)
        gave_up = await self._open_with_retry(reconnecting=False)
        if gave_up is not None:
            s.errors.append(f"connect: {gave_up}")
            self.rec.error("connect_gave_up")
            return False
        # connected after failed tries: like a survived reconnect, the tries do not fail the session;
        # they stay counted (error kinds, reconnect attempts) and timed (connect_ms includes them)
        del s.errors[tries_failed_from:]
        s.connect_us = (time.monotonic_ns() - t) // 1000
        ws = self.ws  # the attempt that succeeded, split into its steps
        assert ws is not None  # _open_with_retry returned None: it is open
        s.tcp_us, s.tls_us, s.upgrade_us = ws.tcp_ns // 1000, ws.tls_ns // 1000, ws.upgrade_ns // 1000
        self.rec.session_connected(s)
        return True

    async def _reconnect(self, why: ConnectionClosed) -> bool:
        s = self.s
        s.errors.append(f"websocket lost: {why}")
        self.rec.error(f"ws_lost_{why.code}")
        gave_up = await self._open_with_retry(reconnecting=True)
        if gave_up is not None:
            self.broken = f"websocket lost and reconnect {gave_up}"
            s.errors.append(self.broken)
            self.rec.error("reconnect_gave_up")
            return False
        # the outage itself was survived: the losses it caused show in the queries' lost counts
        if s.errors and s.errors[-1].startswith("websocket lost: "):
            s.errors.pop()
        return True

    async def _close_http(self) -> None:
        s = self.s
        if self._gone:
            return
        try:
            resp = await self._post(f"/session/{s.session_id}/close")
        except HTTPError as exc:
            s.errors.append(f"close: {type(exc).__name__}: {exc}")
            self.rec.error(f"close_{type(exc).__name__}")
            return
        if resp.status_code != 200:
            s.errors.append(f"close: HTTP {resp.status_code}: {resp.text[:200]}")
            self.rec.error(f"close_http_{resp.status_code}")

    async def _post(self, path: str, body: object | None = None) -> Response:
        resp = await self.http.post(path, body)
        self.rec.hists["http_pool_wait"].record(resp.pool_wait_ns // 1000)
        return resp

    # ---------------------------------------------------------------- queries

    async def _query(self, k: int, intended_ns: int, submit_ns: int) -> None:
        cfg, s, rec = self.cfg, self.s, self.rec
        ev = trio.Event()
        q = rec.new_query(s.session_id, k, intended_ns, submit_ns, ev)
        self.current = q
        rec.counters["queries_started"] += 1
        body: dict = {"query": cfg.query_text}
        for name in ("max_tokens", "token_delay_ms", "ttft_ms", "token_jitter_ms"):  # the run's workload
            v = getattr(cfg, name)
            if v is not None:
                body[name] = v
        with trio.move_on_after(cfg.query_timeout) as scope:
            try:
                resp = await self._post(f"/session/{s.session_id}/run", body)
                q.submit_ns += resp.pool_wait_ns  # TTFT and service latency from when the request could go
            except HTTPError as exc:
                self._fail(q, "error", f"run: {type(exc).__name__}: {exc}", f"run_{type(exc).__name__}")
                return
            if resp.status_code != 202:
                if resp.status_code == 404:  # the session is gone: every further /run would be 404 too
                    self.broken = self._gone = f"session gone: /run answered 404 ({resp.text[:200]})"
                    s.errors.append(self._gone)
                self._fail(
                    q, "error", f"run: HTTP {resp.status_code}: {resp.text[:200]}", f"run_http_{resp.status_code}"
                )
                return
            try:
                data = resp.json()
                qid, expected = str(data["query_id"]), int(data["tokens"])
            except (ValueError, KeyError, TypeError) as exc:
                self._fail(q, "error", f"run: malformed answer ({exc!r})", "run_malformed")
                return
            q.expected = expected
            if self.workload is not None:
                self.workload.observe(cfg.workload_class, expected, data.get("workload"))
            if q.query_id is None:
                q.query_id = qid
                self.by_id[qid] = q
            elif q.query_id != qid:
                self._fail(q, "error", f"tokens came for query {q.query_id}, /run answered {qid}", "query_id_mismatch")
                return
            await ev.wait()
        if q.done_ns:
            q.finish()
            if q.status == "lost_tokens":
                rec.error("lost_tokens")
            elif q.status == "cancelled":
                rec.error("query_cancelled_by_server")
        elif self._lost_on_reconnect is q:
            self._fail(
                q,
                "lost_tokens",
                f"lost_on_reconnect: no message within {resume_grace(q):g}s of reconnecting: "
                f"its stream ended while the socket was down (received {q.received} of {q.expected} "
                "tokens)",
                "query_lost_on_reconnect",
                record=False,
            )
        elif self.broken:
            self._fail(
                q,
                "error",
                f"{self.broken} (received {q.received} of {q.expected} tokens)",
                "query_connection_lost",
                record=False,
            )
        else:
            assert scope.cancelled_caught
            self._fail(
                q,
                "timeout",
                f"no done message within {cfg.query_timeout:g}s (received {q.received} of {q.expected} tokens)",
                "query_timeout",
                record=False,
            )
        self._count(q)

    def _fail(self, q: QueryRecord, status: str, error: str, kind: str, record: bool = True) -> None:
        q.finish(status=status, error=error)
        self.rec.error(kind)
        if record:
            self._count(q)

    def _count(self, q: QueryRecord) -> None:
        s = self.s
        if q.status == "ok":
            s.queries_ok += 1
        else:
            s.queries_failed += 1
            if q.error:
                s.errors.append(f"query {q.index}: {q.error}")
        s.tokens += q.received
        self.rec.query_finished(q)
        self.current = None

    # ---------------------------------------------------------------- reader

    async def _reader(self) -> None:
        """Receive until the session closes; reconnect when the connection ends early."""
        while True:
            ws = self.ws
            assert ws is not None
            try:
                await ws.run_receiver(self._on_batch, self.hub)
            except ConnectionClosed as exc:
                if self.closing:
                    return
                if not await self._reconnect(exc):
                    if self.current is not None and self.current.event is not None:
                        self.current.event.set()
                    return
                q = self.current
                if (
                    q is not None
                    and q.expected is not None
                    and not q.status
                    and not q.done_ns
                    and self._nursery is not None
                ):
                    self._nursery.start_soon(self._expect_resumed, q, time.monotonic_ns())

    async def _expect_resumed(self, q: QueryRecord, resumed_ns: int) -> None:
        """After a reconnect: fail *q* as lost_on_reconnect unless a message of it arrives in time."""
        await trio.sleep(resume_grace(q))
        if q.status or q.done_ns or q is not self.current or q.last_ns > resumed_ns:
            return  # finished, or resumed: its next messages account the gap exactly
        self._lost_on_reconnect = q
        if q.event is not None:
            q.event.set()

    def _on_batch(self, batch: list[bytes], m_ns: int, w_ns: int) -> None:
        """Account the messages of one read (hot path: runs once per socket read)."""
        loads = orjson.loads
        by_id = self.by_id
        for payload in batch:
            try:
                m = loads(payload)
                q = by_id.get(m["query_id"])
                if q is None:
                    q = self._adopt(m["query_id"])
                    if q is None:
                        continue
                if q.status:  # already finished (timed out): a late message
                    self.rec.counters["late_messages"] += 1
                    continue
                kind = m["type"]
                if kind == "token":
                    q.token(m["seq"], m["ts"], m_ns, w_ns)
                elif kind == "done":
                    q.done(m["tokens"], m_ns, m.get("cancelled", False))  # kit.wire.DONE_CANCELLED
                else:
                    self.rec.counters["unknown_messages"] += 1
            except (orjson.JSONDecodeError, KeyError, TypeError):
                self.rec.error("bad_message")

    def _adopt(self, qid: str) -> QueryRecord | None:
        """A message for a query_id we have not seen: the query in flight, before /run answered."""
        q = self.current
        if q is not None and q.query_id is None:
            q.query_id = qid
            self.by_id[qid] = q
            return q
        self.rec.counters["stray_messages"] += 1
        return None
