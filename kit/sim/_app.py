"""The simulator's Quart app: sessions in Redis, token streams through the Publisher.

``create_app(settings)`` builds the app and nothing else; the Redis pool and the
publisher task are created in ``before_serving`` and closed in ``after_serving``
(ASGI lifespan), kept on the app in ``app.extensions["kit.sim"]`` (a :class:`SimState`).

Endpoints (the wire contract in DESIGN.md):

* ``POST /session/create`` -> 201 ``{session_id, auth_token, ws_path}``; writes hash
  ``session:{id}`` (status, agent_id, created) with ``EXPIRE SESSION_TTL_SECONDS``.
* ``POST /session/{id}/run`` -> 202 ``{query_id, tokens, workload}``; tokens and ``done`` go to
  ``session:{id}:down`` on the schedule of :mod:`._schedule`, paced by the body's workload fields
  (:data:`._body.WORKLOAD_BOUNDS`) or, where it has none, the settings; ``workload`` echoes the
  effective ``token_delay_ms``, ``ttft_ms`` and ``token_jitter_ms``.
  A query must end within :data:`kit.wire.MAX_QUERY_MS` (422 otherwise); beyond the worker's bounds on
  queries in flight (:class:`._limits.SimLimits`: in all, per session, tokens) it is 429 ``too_many_queries``.
* ``POST /session/{id}/close`` -> 200 ``{session_id, status: "closed"}``; the session's queries in flight,
  on every worker (:mod:`._closes`), end at once with a ``done`` marked cancelled.
* ``GET /health``: 200 when the publisher runs and the worker's watch on Redis (:mod:`._probe`,
  one PING a second whatever the number of checks) last heard it answer, else 503; no I/O, so a
  balancer's checks never wait on Redis.  ``GET /health/deep``: the same after a PING of its own.
  ``GET /stats`` (the answering worker's counters), ``GET /stats/all`` (every worker's, summed:
  :mod:`._workers`) and ``GET /metrics`` (the same sums in the Prometheus text format).

The session routes are plain views (the body in, ``(status, JSON bytes)`` out) registered twice:
as Quart routes and as :class:`._asgi.DirectRoutes`, which answer them without Quart's request
context (half a request's CPU); both ways share the views and one ``failure`` mapping, so they answer alike.

Errors are JSON ``{"error": code, "detail": message}``: 404 unknown session (or
route), 408 a body not whole within SIM_REQUEST_BODY_TIMEOUT_SECS (:mod:`._asgi`), 409 closed session,
422 malformed body, 429 too many queries in flight, 503 ``redis_unavailable`` when Redis
does not answer, 503 ``redis_pool_exhausted`` when every pooled connection stayed
busy for ``SIM_REDIS_POOL_TIMEOUT_MS``, 500 otherwise.
Counters in ``/stats`` are per process (each worker has its own).

Redis connections: requests borrow from a bounded waiting pool
(``BlockingConnectionPool``, ``SIM_REDIS_POOL_SIZE`` per worker): a burst larger
than the pool waits for a connection instead of failing at once (redis-py's
default pool raises as soon as its 100 connections are busy, which read as
"Redis unavailable").  The publisher has a connection of its own, so no burst of
requests can starve it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
import uuid
from array import array
from dataclasses import dataclass, field
from functools import partial

import orjson
import redis.asyncio as aioredis
from quart import Quart, Response, request
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MaxConnectionsError, RedisError
from werkzeug.exceptions import HTTPException

from kit import _gc, contract
from kit._prom import CONTENT_TYPE as PROM_CONTENT_TYPE
from kit.auth import issue_token
from kit.config import SimSettings
from kit.wire import query_duration_problem

from ._asgi import BODY_DEADLINES, DIRECT_ROUTES, Answer, BodyDeadlines, DirectRoutes, LeanHTTPConnection, View
from ._body import BodyError, parse_create, parse_run
from ._closes import CloseListener, announce_close, listen_for_closes
from ._limits import SimLimits
from . import _workers
from ._probe import RedisWatch, start_redis_watch
from ._publisher import Publisher
from ._schedule import channel_name, due_offsets, encode_tokens, split_tokens

__all__ = ["create_app", "SimState", "PoolExhausted"]

log = logging.getLogger(__name__)

#: bodies are tiny; anything bigger is refused with 413 before it is read whole
MAX_BODY_BYTES = 64 * 1024
_MAX_SESSION_ID = 64
_REDIS_TIMEOUT_S = 5.0
_HEALTH_TIMEOUT_S = 2.0

# Plain commands in MULTI/EXEC, no Lua: the simulator's Redis user may not run scripts (an endless
# EVAL would wedge Redis with no ACL user able to kill it).  Create: HSET + EXPIRE in one transaction,
# so a session never exists without its TTL.  Close: HGET status, HSETNX closed, HSET status in one
# transaction: the first close wins (HSETNX), a later one sees closed; an unknown id's stray hash is
# deleted again (the 404 path).


class PoolExhausted(RedisConnectionError):
    """Every connection of the request pool stayed busy for the pool's timeout."""


class _WaitingPool(aioredis.BlockingConnectionPool):
    """A BlockingConnectionPool whose timeout is told apart from Redis failing (503 either way).

    Fast path: while nobody waits, a free connection is taken and returned through the plain
    ConnectionPool, without the blocking pool's condition and timer; they doubled redis-py's
    client-side CPU per command (43 -> 84 us per HGET, measured on this machine).  While any
    request waits, newcomers take the blocking pool's way too (its condition decides who is
    served; a fast path beside waiters would let newcomers overtake them), and releases wake them.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._waiting = 0

    async def get_connection(self, *args, **kwargs):
        if not self._waiting and self.can_get_connection():
            try:
                return await aioredis.ConnectionPool.get_connection(self)
            except MaxConnectionsError:
                pass  # the last one was taken meanwhile: wait in line
        self._waiting += 1
        try:
            return await super().get_connection()
        except RedisConnectionError as exc:
            # redis-py raises a bare ConnectionError("No connection available.") from the wait's timeout
            if isinstance(exc.__cause__, asyncio.TimeoutError):
                raise PoolExhausted(f"all {self.max_connections} connections busy for {self.timeout}s") from None
            raise
        finally:
            self._waiting -= 1

    async def release(self, connection) -> None:
        if self._waiting:
            await super().release(connection)  # and notify a waiter
            return
        await aioredis.ConnectionPool.release(self, connection)
        if self._waiting:  # someone began to wait while this release yielded: wake them
            async with self._condition:
                self._condition.notify()


@dataclass
class SimState:
    """What one app instance owns: its settings, pool, client, publisher and counters."""

    settings: SimSettings
    words: list[bytes]
    limits: SimLimits = field(default_factory=SimLimits)
    pool: aioredis.BlockingConnectionPool | None = None
    redis: aioredis.Redis | None = None
    publisher: Publisher | None = None
    #: the background watch on Redis that /health reads
    redis_watch: RedisWatch = field(default_factory=RedisWatch)
    #: requests still reading their body (408 past the deadline)
    body_deadlines: BodyDeadlines | None = None
    #: this worker's subscription to the closes of every worker
    closes: CloseListener = field(default_factory=CloseListener)
    rng: random.Random = field(default_factory=random.Random)
    started: float = field(default_factory=time.time)
    sessions_created: int = 0
    sessions_closed: int = 0
    queries: int = 0
    client_errors: int = 0
    errors: int = 0
    pool_exhausted: int = 0
    health_checks: int = 0
    #: /run answered 429: a bound on queries in flight was reached
    queries_refused: int = 0

    def statistics(self) -> dict[str, object]:
        stats: dict[str, object] = {
            "pid": os.getpid(),
            "uptime_s": round(time.time() - self.started, 3),
            "sessions_created": self.sessions_created,
            "sessions_closed": self.sessions_closed,
            "queries": self.queries,
            "client_errors": self.client_errors,
            "errors": self.errors,
            "redis_pool_exhausted": self.pool_exhausted,
            "health_checks": self.health_checks,
            "queries_refused": self.queries_refused,
            "request_body_timeouts": self.body_deadlines.timeouts if self.body_deadlines is not None else 0,
            "closes_heard": self.closes.heard,
        }
        if self.publisher is not None:
            pub = self.publisher.statistics()
            stats.update(pub)
            stats["errors"] = self.errors + int(pub["publish_errors"])
        return stats


#: seconds between a worker's writes of its counters for the summed /stats/all and /metrics
PUBLISH_STATS_S = 1.0


async def _publish_stats(state: SimState, stop: asyncio.Event) -> None:
    """Write this worker's counters for the group's sums once a second until *stop* (and once more then)."""
    while not stop.is_set():
        _workers.publish(state.statistics())
        try:
            await asyncio.wait_for(stop.wait(), PUBLISH_STATS_S)
        except TimeoutError:
            pass
    _workers.publish(state.statistics())


def _answer(body: object, status: int) -> Answer:
    return status, orjson.dumps(body)


def _error(status: int, code: str, detail: str) -> Answer:
    return _answer({"error": code, "detail": detail}, status)


def _response(answer: Answer) -> Response:
    status, body = answer
    return Response(body, status=status, content_type="application/json")


def _json(body: object, status: int) -> Response:
    return _response(_answer(body, status))


def _session_key(session_id: str) -> str:
    return contract.session_key(session_id)


def create_app(settings: SimSettings, *, tune_gc: bool = False, limits: SimLimits | None = None) -> Quart:
    """Build the simulator app for *settings* and *limits* (default: ``SimLimits.from_env()``); no I/O happens
    until it is served.  With *tune_gc* (the served app, ``kit.sim:app``) the worker applies the kit's
    collector settings once serving starts."""
    limits = SimLimits.from_env() if limits is None else limits
    app = Quart("kit.sim")
    app.asgi_http_class = LeanHTTPConnection  # see _asgi: one task and two sends per request
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    # Quart wraps reading each body and sending each response in asyncio.wait_for with these
    # (60 s by default), i.e. a task and a timer per request (py-spy: ~5% of a worker's CPU under
    # load); None awaits directly.  Bodies are capped at 64 KiB and read whole by _asgi before any
    # Quart code runs, within SIM_REQUEST_BODY_TIMEOUT_SECS (its BodyDeadlines: no timer per request);
    # answers are small and buffered by Granian, so a slow reader holds one idle coroutine, never CPU.
    app.config["BODY_TIMEOUT"] = None
    app.config["RESPONSE_TIMEOUT"] = None
    state = SimState(settings=settings, words=encode_tokens(split_tokens(settings.llm_response_text)),
                     limits=limits, body_deadlines=BodyDeadlines(limits.request_body_timeout_secs))
    app.extensions["kit.sim"] = state
    app.extensions[BODY_DEADLINES] = state.body_deadlines
    sweeper: list[asyncio.Task] = []

    @app.before_serving
    async def _open() -> None:
        pool = state.pool = _WaitingPool.from_url(
            settings.redis_url, max_connections=settings.redis_pool_size,
            timeout=settings.redis_pool_timeout_ms / 1000.0,
            socket_timeout=_REDIS_TIMEOUT_S, socket_connect_timeout=_REDIS_TIMEOUT_S,
        )
        state.redis = aioredis.Redis(connection_pool=pool)
        # the publisher's own connection, same address and credentials, outside the pool's count
        state.publisher = Publisher(lambda: pool.connection_class(**pool.connection_kwargs),
                                    tick_s=settings.publish_tick_ms / 1000.0)
        state.publisher.start()
        start_redis_watch(app, settings.redis_url, state.redis_watch)  # a wrong REDIS_URL: one line at start
        app.add_background_task(listen_for_closes, settings.redis_url, app.shutdown_event, _cancel_session,
                                state.closes)
        # not a Quart background task: those are awaited at shutdown, and this one never ends by itself
        sweeper.append(asyncio.get_running_loop().create_task(state.body_deadlines.run(), name="kit.sim bodies"))
        app.add_background_task(_publish_stats, state, app.shutdown_event)  # for the workers' sums
        if tune_gc:
            _gc.tune()  # this worker's start-up is done: frozen, and collections rare (kit/_gc.py)
        log.info("kit.sim serving (pid %d): %d words per answer, token delay %.3g ms, ttft %.3g ms, "
                 "jitter %.3g ms, publish tick %.3g ms, redis pool %d", os.getpid(), len(state.words),
                 settings.token_delay_ms, settings.ttft_ms, settings.token_jitter_ms, settings.publish_tick_ms,
                 settings.redis_pool_size)

    @app.after_serving
    async def _close() -> None:
        for task in sweeper:
            task.cancel()
        if state.publisher is not None:
            await state.publisher.aclose()
        if state.redis is not None:
            await state.redis.aclose()
        if state.pool is not None:
            await state.pool.aclose()
        log.info("kit.sim stopped (pid %d): %s", os.getpid(), state.statistics())

    def failure(exc: Exception, method: str, path: str) -> Answer:
        """The answer to an exception a view raised, whether Quart or the direct path ran the view."""
        if isinstance(exc, HTTPException):
            code = (exc.name or "error").lower().replace(" ", "_")
            state.client_errors += 1
            return _error(exc.code or 500, code, exc.description or code)
        state.errors += 1
        if isinstance(exc, PoolExhausted):
            state.pool_exhausted += 1
            return _error(503, "redis_pool_exhausted",
                          f"the simulator's Redis connection pool was exhausted: {exc} (more concurrent requests "
                          "than SIM_REDIS_POOL_SIZE while Redis was slow); retry, or raise SIM_REDIS_POOL_SIZE "
                          "or SIM_REDIS_POOL_TIMEOUT_MS")
        if isinstance(exc, RedisError):
            log.warning("redis error on %s %s: %s: %s", method, path, type(exc).__name__, exc)
            return _error(503, "redis_unavailable", "the simulator could not reach Redis: check REDIS_URL and "
                                                    "that redis-server is running")
        log.error("unhandled error on %s %s", method, path, exc_info=exc)
        return _error(500, "internal_error", "the simulator failed on this request; see its log")

    async def _quart_failure(exc: Exception) -> Response:
        return _response(failure(exc, request.method, request.path))

    # the most specific class registered wins in Quart: one function, so both paths answer alike
    for cls in (HTTPException, RedisError, Exception):
        app.register_error_handler(cls, _quart_failure)

    def _invalid(exc: BodyError) -> Answer:
        state.client_errors += 1
        return _error(422, "invalid_body", exc.detail)

    def _not_found(session_id: str) -> Answer:
        state.client_errors += 1
        return _error(404, "session_not_found",
                      f"no session {session_id[:_MAX_SESSION_ID]!r}: create one with POST /session/create "
                      "(sessions expire after SESSION_TTL_SECONDS)")

    def _closed(session_id: str) -> Answer:
        state.client_errors += 1
        return _error(409, "session_closed", f"session {session_id!r} is closed: create a new session")

    def _too_many(detail: str) -> Answer:
        state.client_errors += 1
        state.queries_refused += 1
        return _error(429, "too_many_queries", detail)

    def _over_bound(channel: bytes, session_id: str, n: int) -> Answer | None:
        """429 if one more query of *n* tokens would pass a bound of this worker, else None."""
        pub = state.publisher
        if pub.queries_in_flight >= limits.max_queries_in_flight:
            return _too_many(f"this simulator worker has {pub.queries_in_flight} queries in flight, its bound "
                             f"(SIM_MAX_QUERIES_IN_FLIGHT={limits.max_queries_in_flight}): retry when some have ended")
        held = pub.in_flight_on(channel)
        if held >= limits.max_session_queries_in_flight:
            return _too_many(f"session {session_id!r} has {held} queries in flight on this simulator worker, its "
                             f"bound (SIM_MAX_SESSION_QUERIES_IN_FLIGHT={limits.max_session_queries_in_flight}): "
                             "wait for one to end")
        if pub.tokens_in_flight + n > limits.max_tokens_in_flight:
            return _too_many(f"this simulator worker has {pub.tokens_in_flight} tokens of queries in flight and "
                             f"this query would add {n}, past its bound (SIM_MAX_TOKENS_IN_FLIGHT="
                             f"{limits.max_tokens_in_flight}): retry when some have ended, or ask for fewer tokens")
        return None

    def _cancel_session(session_id: str) -> None:
        """A close of *session_id* was heard (this worker's or another's): end its queries here."""
        if state.publisher is not None and len(session_id) <= _MAX_SESSION_ID:
            state.publisher.cancel(channel_name(session_id))

    # the session routes' views: the body in, the answer out, no Quart request context (see _asgi's
    # direct routes); registered with Quart below too, so both paths run the same code
    async def session_create(raw: bytes) -> Answer:
        try:
            body = parse_create(raw)
        except BodyError as exc:
            return _invalid(exc)
        session_id = uuid.uuid4().hex
        key = _session_key(session_id)
        async with state.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping={"status": "open", "agent_id": body.agent_id, "created": f"{time.time():.6f}"})
            pipe.expire(key, settings.session_ttl_seconds)
            await pipe.execute()
        token = issue_token(settings.jwt_secret, session_id, algorithm=settings.jwt_algorithm,
                            ttl_seconds=settings.jwt_ttl_seconds)
        state.sessions_created += 1
        return _answer({"session_id": session_id, "auth_token": token,
                        "ws_path": f"/{body.agent_id}/ws/{session_id}"}, 201)

    async def session_run(session_id: str, raw: bytes) -> Answer:
        submitted = time.monotonic()  # the Publisher's clock
        try:
            body = parse_run(raw)
        except BodyError as exc:
            return _invalid(exc)
        # the whole query's length, with the deployment's values where the body has none (kit.wire)
        n_words = len(state.words) if body.max_tokens is None else body.max_tokens
        too_long = query_duration_problem(
            n_words, settings.token_delay_ms if body.token_delay_ms is None else body.token_delay_ms,
            settings.ttft_ms if body.ttft_ms is None else body.ttft_ms,
            settings.token_jitter_ms if body.token_jitter_ms is None else body.token_jitter_ms)
        if too_long is not None:
            return _invalid(BodyError("body", too_long))
        if len(session_id) > _MAX_SESSION_ID:
            return _not_found(session_id)
        status = await state.redis.hget(_session_key(session_id), "status")
        if status is None:
            return _not_found(session_id)
        if status == b"closed":
            return _closed(session_id)
        words = state.words
        if body.max_tokens is not None and words:
            # the answer's length: the text's first max_tokens words, the text repeated past its end
            words = (words[: body.max_tokens] if body.max_tokens <= len(words)
                     else [words[i % len(words)] for i in range(body.max_tokens)])
        n = len(words)
        channel = channel_name(session_id)
        refused = _over_bound(channel, session_id, n)
        if refused is not None:
            return refused
        # the run's workload (the body) over the deployment's (the simulator's settings)
        pace = {"token_delay_ms": settings.token_delay_ms if body.token_delay_ms is None else body.token_delay_ms,
                "ttft_ms": settings.ttft_ms if body.ttft_ms is None else body.ttft_ms,
                "token_jitter_ms": settings.token_jitter_ms if body.token_jitter_ms is None else body.token_jitter_ms}
        offsets = due_offsets(n, ttft_ms=pace["ttft_ms"], delay_ms=pace["token_delay_ms"],
                              jitter_ms=pace["token_jitter_ms"], rng=state.rng)
        query_id = uuid.uuid4().hex
        # due times as doubles (8 bytes a token, not a float object's 32): what a query holds until its end
        state.publisher.submit(channel, query_id.encode(), words, array("d", [submitted + o for o in offsets]))
        state.queries += 1
        # the effective workload, so a client records what ran (the deployed defaults included)
        return _answer({"query_id": query_id, "tokens": n, "workload": pace}, 202)

    async def session_close(session_id: str, raw: bytes) -> Answer:  # noqa: ARG001 - a view's signature
        if len(session_id) > _MAX_SESSION_ID:
            return _not_found(session_id)
        key = _session_key(session_id)
        async with state.redis.pipeline(transaction=True) as pipe:
            pipe.hget(key, "status")
            pipe.hsetnx(key, "closed", f"{time.time():.6f}")
            pipe.hset(key, "status", "closed")
            status, first, _ = await pipe.execute()
        if status is None:
            await state.redis.delete(key)  # there was no such session: drop the hash this made
            return _not_found(session_id)
        if not first:
            return _closed(session_id)
        state.sessions_closed += 1
        _cancel_session(session_id)  # this worker's queries at once, every other worker's on the announce
        await announce_close(state.redis, session_id, state.closes)
        return _answer({"session_id": session_id, "status": "closed"}, 200)

    @app.post("/session/create", endpoint="session_create")
    async def quart_session_create() -> Response:
        return _response(await session_create(await request.get_data()))

    @app.post("/session/<session_id>/run", endpoint="session_run")
    async def quart_session_run(session_id: str) -> Response:
        return _response(await session_run(session_id, await request.get_data()))

    @app.post("/session/<session_id>/close", endpoint="session_close")
    async def quart_session_close(session_id: str) -> Response:
        return _response(await session_close(session_id, b""))  # close reads no body

    def direct_route(method: str, path: str) -> View | None:
        # the rules above as werkzeug matches them: "/session/<session_id>/run" takes any one
        # non-empty segment; anything else (extra or empty segments, other methods) goes to Quart
        if method != "POST":
            return None
        if path == "/session/create":
            return session_create
        parts = path.split("/")
        if len(parts) != 4 or parts[0] or parts[1] != "session" or not parts[2]:
            return None
        if parts[3] == "run":
            return partial(session_run, parts[2])
        if parts[3] == "close":
            return partial(session_close, parts[2])
        return None

    app.extensions[DIRECT_ROUTES] = DirectRoutes(route=direct_route, failure=failure)

    def shallow_health() -> Response:
        if state.publisher is None or not state.publisher.running:
            return _json({"status": "unavailable", "publisher": "stopped",
                          "detail": "the token publisher is not running: see the simulator's log"}, 503)
        watch = state.redis_watch
        if not watch.ok:
            return _json({"status": "unavailable", "redis": "down" if watch.ok is False else "unknown",
                          "detail": f"{watch.detail}: check REDIS_URL and redis-server"}, 503)
        return _json({"status": "ok"}, 200)

    @app.get(contract.health_path())
    async def health() -> Response:
        state.health_checks += 1
        return shallow_health()

    @app.get(contract.deep_health_path())
    async def deep_health() -> Response:
        try:
            await asyncio.wait_for(state.redis.ping(), _HEALTH_TIMEOUT_S)
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            return _json({"status": "unavailable", "redis": "down",
                          "detail": f"redis PING failed ({type(exc).__name__}): check REDIS_URL and redis-server"},
                         503)
        return shallow_health()

    @app.get("/stats")
    async def stats() -> Response:
        return _json(state.statistics(), 200)

    def every_worker() -> dict:
        own = state.statistics()
        _workers.publish(own)   # this worker's file fresh before the sum
        return _workers.gather(own)

    @app.get("/stats/all")
    async def stats_all() -> Response:
        return _json(every_worker(), 200)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(_workers.metrics_text(every_worker()), status=200, headers={"Content-Type": PROM_CONTENT_TYPE})

    return app
