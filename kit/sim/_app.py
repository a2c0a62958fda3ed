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

Every route is written once, in :data:`._routes.ROUTES`; its view is the :class:`SimViews` method of
its endpoint's name (the rule's arguments and the body in, ``(status, bytes)`` out).  Quart serves
every route; the session routes are also answered by :class:`._asgi.DirectRoutes` without Quart's
request context (half a request's CPU), through the matcher :func:`._routes.direct_router` builds
from the same table.  Both ways share the views and one ``failure`` mapping, so they answer alike.

Errors are JSON ``{"error": code, "detail": message}``: 404 unknown session (or
route), 408 a body not whole within SIM_REQUEST_BODY_TIMEOUT_SECS (:mod:`._asgi`), 409 closed session,
422 malformed body, 429 too many queries in flight, 503 ``redis_unavailable`` when Redis
does not answer, 503 ``redis_pool_exhausted`` when every pooled connection stayed
busy for ``SIM_REDIS_POOL_TIMEOUT_MS``, 500 otherwise.
Counters in ``/stats`` are per process (each worker has its own).

Redis connections: requests borrow from a bounded waiting pool (:class:`kit._resp.LinkPool`,
``SIM_REDIS_POOL_SIZE`` per worker): a burst larger than the pool waits for a connection instead of
failing at once.  The session routes' commands are raw RESP parsed by hiredis, not redis-py: redis-py's
client side cost 80-215 us more per request at a real run's sparse pace (``bench/sim_requests.py``).
The publisher has a connection of its own, so no burst of requests can starve it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
import uuid
from array import array
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from quart import Quart, Response, request
from werkzeug.exceptions import HTTPException

from kit import _gc, contract
from kit._resp import LinkPool, PoolExhausted, RedisUnavailable, checked, open_link, parse_redis_url
from kit.auth import issue_token
from kit.config import SimSettings
from kit.wire import query_duration_problem

from . import _workers
from ._asgi import BODY_DEADLINES, DIRECT_ROUTES, Answer, BodyDeadlines, DirectRoutes, LeanHTTPConnection
from ._body import BodyError, parse_create, parse_run
from ._closes import CloseListener, announce_close, listen_for_closes
from ._limits import SimLimits
from ._probe import RedisWatch, start_redis_watch
from ._publisher import Publisher
from ._routes import ROUTES, Route, direct_router
from ._schedule import channel_name, due_offsets, encode_tokens, split_tokens

__all__ = ["create_app", "SimState", "SimViews", "PoolExhausted"]

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


@dataclass
class SimState:
    """What one app instance owns: its settings, pool, client, publisher and counters."""

    settings: SimSettings
    words: list[bytes]
    limits: SimLimits = field(default_factory=SimLimits)
    pool: LinkPool | None = None
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


class SimViews:
    """The simulator's views and its serving hooks, over one app's :class:`SimState` (``create_app`` wires them).

    Each view is named as its route's endpoint in :data:`._routes.ROUTES`, takes the rule's arguments and
    then the request's body, and answers ``(status, body bytes)``: Quart calls it through :func:`_quart_view`,
    the direct path (:class:`._asgi.DirectRoutes`) without Quart's request context.  An exception a view
    raises is answered by :meth:`failure` either way, so both paths answer alike.

    :meth:`open` (``before_serving``) creates the Redis pool, the publisher and the background tasks, kept on
    the state; :meth:`close` (``after_serving``) cancels and closes them.
    """

    def __init__(self, app: Quart, state: SimState, *, tune_gc: bool = False) -> None:
        self.app = app
        self.state = state
        self.settings = state.settings
        self.limits = state.limits
        self.tune_gc = tune_gc
        self._sweeper: asyncio.Task | None = None

    async def _redis(self, *commands: tuple[bytes | str, ...]) -> list[Any]:
        """*commands* in one write on a pooled connection; their replies (a Redis error reply raises
        :class:`~kit._resp.RedisReplyError`).  The pool :meth:`open` made (the views run after it)."""
        pool = self.state.pool
        if pool is None:
            raise RuntimeError("kit.sim: a view ran before open()")
        return await pool.commands(*commands)

    async def _transaction(self, *commands: tuple[bytes | str, ...]) -> list[Any]:
        """*commands* in MULTI/EXEC; EXEC's replies (an error among them raises, as in :meth:`_redis`)."""
        return checked((await self._redis((b"MULTI",), *commands, (b"EXEC",)))[-1])

    @property
    def _publisher(self) -> Publisher:
        """The publisher :meth:`open` started (the views run after it)."""
        publisher = self.state.publisher
        if publisher is None:
            raise RuntimeError("kit.sim: a view ran before open()")
        return publisher

    # -- serving ------------------------------------------------------------------------------

    async def open(self) -> None:
        app, state, settings = self.app, self.state, self.settings
        address = parse_redis_url(settings.redis_url)
        state.pool = LinkPool(
            lambda: open_link(address, _REDIS_TIMEOUT_S),
            size=settings.redis_pool_size,
            wait_s=settings.redis_pool_timeout_ms / 1000.0,
            call_s=_REDIS_TIMEOUT_S,
        )
        # the publisher's own connection, same address and credentials, outside the pool's count
        state.publisher = Publisher(lambda: open_link(address), tick_s=settings.publish_tick_ms / 1000.0)
        state.publisher.start()
        start_redis_watch(app, settings.redis_url, state.redis_watch)  # a wrong REDIS_URL: one line at start
        app.add_background_task(
            listen_for_closes, settings.redis_url, app.shutdown_event, self.cancel_session, state.closes
        )
        # not a Quart background task: those are awaited at shutdown, and this one never ends by itself
        if state.body_deadlines is not None:  # create_app gives every state its deadlines
            self._sweeper = asyncio.get_running_loop().create_task(state.body_deadlines.run(), name="kit.sim bodies")
        app.add_background_task(_publish_stats, state, app.shutdown_event)  # for the workers' sums
        if self.tune_gc:
            _gc.tune()  # this worker's start-up is done: frozen, and collections rare (kit/_gc.py)
        log.info(
            "kit.sim serving (pid %d): %d words per answer, token delay %.3g ms, ttft %.3g ms, "
            "jitter %.3g ms, publish tick %.3g ms, redis pool %d",
            os.getpid(),
            len(state.words),
            settings.token_delay_ms,
            settings.ttft_ms,
            settings.token_jitter_ms,
            settings.publish_tick_ms,
            settings.redis_pool_size,
        )

    async def close(self) -> None:
        state = self.state
        if self._sweeper is not None:
            self._sweeper.cancel()
        if state.publisher is not None:
            await state.publisher.aclose()
        if state.pool is not None:
            await state.pool.aclose()
        log.info("kit.sim stopped (pid %d): %s", os.getpid(), state.statistics())

    def cancel_session(self, session_id: str) -> None:
        """A close of *session_id* was heard (this worker's or another's): end its queries here."""
        publisher = self.state.publisher
        if publisher is not None and len(session_id) <= _MAX_SESSION_ID:
            publisher.cancel(channel_name(session_id))

    # -- errors -------------------------------------------------------------------------------

    def failure(self, exc: Exception, method: str, path: str) -> Answer:
        """The answer to an exception a view raised, whether Quart or the direct path ran the view."""
        state = self.state
        if isinstance(exc, HTTPException):
            code = (exc.name or "error").lower().replace(" ", "_")
            state.client_errors += 1
            return _error(exc.code or 500, code, exc.description or code)
        state.errors += 1
        if isinstance(exc, PoolExhausted):
            state.pool_exhausted += 1
            return _error(
                503,
                "redis_pool_exhausted",
                f"the simulator's Redis connection pool was exhausted: {exc} (more concurrent requests "
                "than SIM_REDIS_POOL_SIZE while Redis was slow); retry, or raise SIM_REDIS_POOL_SIZE "
                "or SIM_REDIS_POOL_TIMEOUT_MS",
            )
        if isinstance(exc, RedisUnavailable):
            log.warning("redis error on %s %s: %s: %s", method, path, type(exc).__name__, exc)
            return _error(
                503,
                "redis_unavailable",
                "the simulator could not reach Redis: check REDIS_URL and that redis-server is running",
            )
        log.error("unhandled error on %s %s", method, path, exc_info=exc)
        return _error(500, "internal_error", "the simulator failed on this request; see its log")

    async def quart_failure(self, exc: Exception) -> Response:
        """:meth:`failure` as Quart's error handler."""
        return _response(self.failure(exc, request.method, request.path))

    def _invalid(self, exc: BodyError) -> Answer:
        self.state.client_errors += 1
        return _error(422, "invalid_body", exc.detail)

    def _not_found(self, session_id: str) -> Answer:
        self.state.client_errors += 1
        return _error(
            404,
            "session_not_found",
            f"no session {session_id[:_MAX_SESSION_ID]!r}: create one with POST /session/create "
            "(sessions expire after SESSION_TTL_SECONDS)",
        )

    def _closed(self, session_id: str) -> Answer:
        self.state.client_errors += 1
        return _error(409, "session_closed", f"session {session_id!r} is closed: create a new session")

    def _too_many(self, detail: str) -> Answer:
        self.state.client_errors += 1
        self.state.queries_refused += 1
        return _error(429, "too_many_queries", detail)

    def _over_bound(self, channel: bytes, session_id: str, n: int) -> Answer | None:
        """429 if one more query of *n* tokens would pass a bound of this worker, else None."""
        pub, limits = self._publisher, self.limits
        if pub.queries_in_flight >= limits.max_queries_in_flight:
            return self._too_many(
                f"this simulator worker has {pub.queries_in_flight} queries in flight, its bound "
                f"(SIM_MAX_QUERIES_IN_FLIGHT={limits.max_queries_in_flight}): retry when some have "
                "ended"
            )
        held = pub.in_flight_on(channel)
        if held >= limits.max_session_queries_in_flight:
            return self._too_many(
                f"session {session_id!r} has {held} queries in flight on this simulator worker, "
                f"its bound (SIM_MAX_SESSION_QUERIES_IN_FLIGHT="
                f"{limits.max_session_queries_in_flight}): wait for one to end"
            )
        if pub.tokens_in_flight + n > limits.max_tokens_in_flight:
            return self._too_many(
                f"this simulator worker has {pub.tokens_in_flight} tokens of queries in flight "
                f"and this query would add {n}, past its bound (SIM_MAX_TOKENS_IN_FLIGHT="
                f"{limits.max_tokens_in_flight}): retry when some have ended, or ask for fewer "
                "tokens"
            )
        return None

    # -- the session routes (direct too: one Redis round trip each) ------------------------------

    async def session_create(self, raw: bytes) -> Answer:
        state, settings = self.state, self.settings
        try:
            body = parse_create(raw)
        except BodyError as exc:
            return self._invalid(exc)
        session_id = uuid.uuid4().hex
        key = _session_key(session_id)
        await self._transaction(
            (b"HSET", key, b"status", b"open", b"agent_id", body.agent_id, b"created", f"{time.time():.6f}"),
            (b"EXPIRE", key, str(settings.session_ttl_seconds)),
        )
        token = issue_token(
            settings.jwt_secret, session_id, algorithm=settings.jwt_algorithm, ttl_seconds=settings.jwt_ttl_seconds
        )
        state.sessions_created += 1
        return _answer(
            {"session_id": session_id, "auth_token": token, "ws_path": f"/{body.agent_id}/ws/{session_id}"}, 201
        )

    async def session_run(self, session_id: str, raw: bytes) -> Answer:
        submitted = time.monotonic()  # the Publisher's clock
        state, settings = self.state, self.settings
        try:
            body = parse_run(raw)
        except BodyError as exc:
            return self._invalid(exc)
        # the run's workload (the body) over the deployment's (the simulator's settings)
        pace = {
            "token_delay_ms": settings.token_delay_ms if body.token_delay_ms is None else body.token_delay_ms,
            "ttft_ms": settings.ttft_ms if body.ttft_ms is None else body.ttft_ms,
            "token_jitter_ms": settings.token_jitter_ms if body.token_jitter_ms is None else body.token_jitter_ms,
        }
        # the whole query's length must be within the wire contract's bound (kit.wire)
        n_words = len(state.words) if body.max_tokens is None else body.max_tokens
        too_long = query_duration_problem(n_words, pace["token_delay_ms"], pace["ttft_ms"], pace["token_jitter_ms"])
        if too_long is not None:
            return self._invalid(BodyError("body", too_long))
        if len(session_id) > _MAX_SESSION_ID:
            return self._not_found(session_id)
        (status,) = await self._redis((b"HGET", _session_key(session_id), b"status"))
        if status is None:
            return self._not_found(session_id)
        if status == b"closed":
            return self._closed(session_id)
        words = state.words
        if body.max_tokens is not None and words:
            # the answer's length: the text's first max_tokens words, the text repeated past its end
            words = (
                words[: body.max_tokens]
                if body.max_tokens <= len(words)
                else [words[i % len(words)] for i in range(body.max_tokens)]
            )
        n = len(words)
        channel = channel_name(session_id)
        refused = self._over_bound(channel, session_id, n)
        if refused is not None:
            return refused
        offsets = due_offsets(
            n,
            ttft_ms=pace["ttft_ms"],
            delay_ms=pace["token_delay_ms"],
            jitter_ms=pace["token_jitter_ms"],
            rng=state.rng,
        )
        query_id = uuid.uuid4().hex
        # due times as doubles (8 bytes a token, not a float object's 32): what a query holds until its end
        self._publisher.submit(channel, query_id.encode(), words, array("d", [submitted + o for o in offsets]))
        state.queries += 1
        # the effective workload, so a client records what ran (the deployed defaults included)
        return _answer({"query_id": query_id, "tokens": n, "workload": pace}, 202)

    async def session_close(self, session_id: str, raw: bytes) -> Answer:  # noqa: ARG002 - a view's signature
        state = self.state
        if len(session_id) > _MAX_SESSION_ID:
            return self._not_found(session_id)
        key = _session_key(session_id)
        status, first, _ = await self._transaction(
            (b"HGET", key, b"status"),
            (b"HSETNX", key, b"closed", f"{time.time():.6f}"),
            (b"HSET", key, b"status", b"closed"),
        )
        if status is None:
            await self._redis((b"DEL", key))  # there was no such session: drop the hash this made
            return self._not_found(session_id)
        if not first:
            return self._closed(session_id)
        state.sessions_closed += 1
        self.cancel_session(session_id)  # this worker's queries at once, every other worker's on the announce
        await announce_close(self._redis, session_id, state.closes)
        return _answer({"session_id": session_id, "status": "closed"}, 200)

    # -- health and counters (through Quart) ----------------------------------------------------

    def _shallow_health(self) -> Answer:
        state = self.state
        if state.publisher is None or not state.publisher.running:
            return _answer(
                {
                    "status": "unavailable",
                    "publisher": "stopped",
                    "detail": "the token publisher is not running: see the simulator's log",
                },
                503,
            )
        watch = state.redis_watch
        if not watch.ok:
            return _answer(
                {
                    "status": "unavailable",
                    "redis": "down" if watch.ok is False else "unknown",
                    "detail": f"{watch.detail}: check REDIS_URL and redis-server",
                },
                503,
            )
        return _answer({"status": "ok"}, 200)

    async def health(self, raw: bytes) -> Answer:  # noqa: ARG002 - a view's signature
        self.state.health_checks += 1
        return self._shallow_health()

    async def deep_health(self, raw: bytes) -> Answer:  # noqa: ARG002 - a view's signature
        try:
            await asyncio.wait_for(self._redis((b"PING",)), _HEALTH_TIMEOUT_S)
        except (TimeoutError, RedisUnavailable, OSError) as exc:
            return _answer(
                {
                    "status": "unavailable",
                    "redis": "down",
                    "detail": f"redis PING failed ({type(exc).__name__}): check REDIS_URL and redis-server",
                },
                503,
            )
        return self._shallow_health()

    async def stats(self, raw: bytes) -> Answer:  # noqa: ARG002 - a view's signature
        return _answer(self.state.statistics(), 200)

    def _every_worker(self) -> dict:
        own = self.state.statistics()
        _workers.publish(own)  # this worker's file fresh before the sum
        return _workers.gather(own)

    async def stats_all(self, raw: bytes) -> Answer:  # noqa: ARG002 - a view's signature
        return _answer(self._every_worker(), 200)

    async def metrics(self, raw: bytes) -> Answer:  # noqa: ARG002 - a view's signature
        return 200, _workers.metrics_text(self._every_worker()).encode()


def _quart_view(route: Route, view: Callable[..., Awaitable[Answer]]) -> Callable[..., Awaitable[Response]]:
    """*view* as Quart calls it for *route*: the rule's arguments as keywords, the body read (when the route
    takes one), the answer made a Response of the route's content type."""
    names, reads, content_type = route.args, route.body, route.content_type

    async def endpoint(**args: str) -> Response:
        status, body = await view(*(args[n] for n in names), await request.get_data() if reads else b"")
        return Response(body, status=status, content_type=content_type)

    endpoint.__name__ = route.endpoint
    return endpoint


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
    # answers are small and buffered by the server, so a slow reader holds one idle coroutine, never CPU.
    app.config["BODY_TIMEOUT"] = None
    app.config["RESPONSE_TIMEOUT"] = None
    state = SimState(
        settings=settings,
        words=encode_tokens(split_tokens(settings.llm_response_text)),
        limits=limits,
        body_deadlines=BodyDeadlines(limits.request_body_timeout_secs),
    )
    views = SimViews(app, state, tune_gc=tune_gc)
    app.extensions["kit.sim"] = state
    app.extensions[BODY_DEADLINES] = state.body_deadlines
    app.before_serving(views.open)
    app.after_serving(views.close)
    # the most specific class registered wins in Quart: one function, so both paths answer alike
    for cls in (HTTPException, RedisUnavailable, Exception):
        app.register_error_handler(cls, views.quart_failure)
    by_endpoint = {r.endpoint: getattr(views, r.endpoint) for r in ROUTES}
    for r in ROUTES:
        app.add_url_rule(r.rule, r.endpoint, _quart_view(r, by_endpoint[r.endpoint]), methods=[r.method])
    app.extensions[DIRECT_ROUTES] = DirectRoutes(route=direct_router(ROUTES, by_endpoint), failure=views.failure)
    return app
