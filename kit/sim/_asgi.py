"""A leaner per-request ASGI path for Quart (``Quart.asgi_http_class``), same behaviour for our routes.

Why: py-spy on a worker under a realistic run (1,000 sessions, create + 3 runs + close)
showed Quart's own ``ASGIHTTPConnection`` spending a good part of each request on
plumbing rather than on the request: it starts two tasks per request (one reading the
body, one running the handler), waits on both with ``asyncio.wait`` and cancels the
reader, and sends every response as three ASGI messages (start, body with
``more_body``, an empty final body), each a call into the server.

This class reads the body first (the simulator's bodies are a few bytes and arrive in
one message; more than ``MAX_CONTENT_LENGTH`` stops reading and the handler answers
413 as before), then runs the handler in the same task, and sends an in-memory body as
one final message.  Anything else (streamed or ranged bodies) goes through Quart's
own code.  What is given up: a client that disconnects mid-request no longer cancels
its handler; the handler finishes its one Redis round trip and its answer is dropped
by the server, which for ``/run`` means the accepted query is still published, as a
server that already replied 202 would.

Direct routes: the session routes (create, run, close: five requests per session, one
per ~26 tokens published) are each one Redis round trip and a few microseconds of our
own code, yet Quart's request context around them (a URL adapter bound per request, the
werkzeug route match, request object, before/after hooks and signals, response object,
teardown) cost as much again: called through ASGI in one process against a real Redis,
create + 3 runs + close took ~310 us of CPU per request through Quart and ~155 us without.
An app may register :class:`DirectRoutes` under :data:`DIRECT_ROUTES` in
``app.extensions``: a request its ``route`` recognises, with a complete body within
``MAX_CONTENT_LENGTH``, is answered by the returned view without that context, its
exceptions turned into answers by ``failure``; everything else (other paths and methods,
a body too big, a root path) goes through Quart as before.  The app registers the same
views as Quart routes too, so both ways answer alike (tests/unit/test_sim_direct.py).

Body deadline: every request's body is read here, before either path, so one bound holds on both.  An
app may register :class:`BodyDeadlines` under :data:`BODY_DEADLINES`: a body not complete within its
``timeout_s`` of the request's head is answered 408 ``request_timeout`` with ``Connection: close`` (the server
then closes the connection).  Not a timer per request (a uvloop timer armed and cancelled costs ~10 us,
~6% of a direct request's CPU): each request reading its body is put in an insertion-ordered dict (its
deadline is its start plus one constant, so the dict is in deadline order) and one task sweeps the
overdue off its front a few times a second, cancelling them; a request whose body is already there
costs an insert and a delete.  So the deadline is met within a sweep's period (a quarter of the
timeout, at most 1 s).  Quart's own ``BODY_TIMEOUT`` would not do it: the body is complete before any
Quart code awaits it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from quart.asgi import ASGIHTTPConnection
from quart.utils import encode_headers
from quart.wrappers.response import DataBody, Response

__all__ = ["LeanHTTPConnection", "DirectRoutes", "DIRECT_ROUTES", "BodyDeadlines", "BODY_DEADLINES", "Answer", "View"]

log = logging.getLogger(__name__)

#: the ``app.extensions`` key of an app's :class:`DirectRoutes`
DIRECT_ROUTES = "kit.sim.direct_routes"

#: the ``app.extensions`` key of an app's :class:`BodyDeadlines`
BODY_DEADLINES = "kit.sim.body_deadlines"

#: a JSON answer: (HTTP status, the body's bytes)
Answer = tuple[int, bytes]
#: a direct view: the request body in, the answer out
View = Callable[[bytes], Awaitable[Answer]]

_CONTENT_TYPE = (b"content-type", b"application/json")


@dataclass(frozen=True, slots=True)
class DirectRoutes:
    """Routes answered without Quart's request context (see the module docstring).

    *route* ``(method, path)`` returns the view for that request (its path arguments bound) or
    None to leave the request to Quart; *failure* ``(exc, method, path)`` is the answer to an
    exception a view raised, as the app's Quart error handlers would give it.
    """

    route: Callable[[str, str], View | None]
    failure: Callable[[Exception, str, str], Answer]


class BodyDeadlines:
    """The requests of one worker still reading their body, and the task that cancels the overdue.

    Owned by the app (``app.extensions[BODY_DEADLINES]``); :meth:`run` is its sweeping task, started
    when serving starts and cancelled with the app's other background tasks.  :meth:`begin` and
    :meth:`end` bracket one request's body read in that request's task; :meth:`expired` tells that
    request, when it is cancelled, whether this did it (then it answers 408, else the cancel is real).
    """

    def __init__(self, timeout_s: float) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.timeout_s = timeout_s
        #: a sweep's period: the deadline is met within it
        self.period_s = min(1.0, timeout_s / 4)
        self._reading: dict[asyncio.Task, float] = {}  # in deadline order (start + one constant)
        self._expired: set[asyncio.Task] = set()
        #: bodies answered 408
        self.timeouts = 0

    def begin(self) -> asyncio.Task | None:
        task = asyncio.current_task()
        if task is not None:
            self._reading[task] = time.monotonic() + self.timeout_s
        return task

    def end(self, task: asyncio.Task) -> None:
        self._reading.pop(task, None)
        self._expired.discard(task)

    def expired(self, task: asyncio.Task) -> bool:
        """True if *task*'s cancellation is this sweep's (its body was late): it then owes a 408."""
        if task not in self._expired:
            return False
        self._expired.discard(task)
        self.timeouts += 1
        return True

    def sweep(self, now: float) -> int:
        """Cancel every request whose body is overdue at *now*; how many."""
        overdue = []
        for task, deadline in self._reading.items():
            if deadline > now:
                break
            overdue.append(task)
        for task in overdue:
            del self._reading[task]
            self._expired.add(task)
            task.cancel()
        return len(overdue)

    async def run(self) -> None:
        """Sweep every period until cancelled."""
        while True:
            await asyncio.sleep(self.period_s)
            self.sweep(time.monotonic())


def _timeout_detail(timeout_s: float) -> bytes:
    return (
        b'{"error":"request_timeout","detail":"the request body did not arrive whole within %g s of its head '
        b'(SIM_REQUEST_BODY_TIMEOUT_SECS): send the whole body at once"}' % timeout_s
    )


class LeanHTTPConnection(ASGIHTTPConnection):
    """Quart's ASGI HTTP connection without the per-request reader task and extra sends."""

    async def __call__(self, receive, send) -> None:
        limit = self.app.config["MAX_CONTENT_LENGTH"]
        chunks: list[bytes] = []
        received = 0
        deadlines: BodyDeadlines | None = self.app.extensions.get(BODY_DEADLINES)
        task = deadlines.begin() if deadlines is not None else None
        try:
            while True:
                message = await receive()
                if message["type"] == "http.request":
                    chunk = message.get("body", b"")
                    received += len(chunk)
                    chunks.append(chunk)
                    if not message.get("more_body", False) or (limit is not None and received > limit):
                        break
                elif message["type"] == "http.disconnect":
                    return
        except asyncio.CancelledError:
            if task is None or deadlines is None or not deadlines.expired(task):  # a task comes from deadlines
                raise
            task.uncancel()
            body = _timeout_detail(deadlines.timeout_s)
            await send(
                {
                    "type": "http.response.start",
                    "status": 408,
                    "headers": [_CONTENT_TYPE, (b"content-length", b"%d" % len(body)), (b"connection", b"close")],
                }
            )
            await send({"type": "http.response.body", "body": body, "more_body": False})
            return
        finally:
            if task is not None and deadlines is not None:
                deadlines.end(task)
        scope = self.scope
        direct = self.app.extensions.get(DIRECT_ROUTES)
        if direct is not None and (limit is None or received <= limit) and not scope.get("root_path"):
            method, path = scope["method"], scope["path"]
            view = direct.route(method, path)
            if view is not None:
                try:
                    status, body = await view(chunks[0] if len(chunks) == 1 else b"".join(chunks))
                except Exception as exc:  # noqa: BLE001 - answered as the app's error handlers answer it
                    status, body = direct.failure(exc, method, path)
                await send(
                    {
                        "type": "http.response.start",
                        "status": status,
                        "headers": [_CONTENT_TYPE, (b"content-length", b"%d" % len(body))],
                    }
                )
                await send({"type": "http.response.body", "body": body, "more_body": False})
                return
        request = self._create_request_from_scope(send)
        for chunk in chunks:
            request.body.append(chunk)  # past MAX_CONTENT_LENGTH it keeps nothing and marks 413
        request.body.set_complete()
        await self.handle_request(request, send)

    async def _send_response(self, send, response) -> None:
        body = response.response if isinstance(response, Response) else None
        if not isinstance(body, DataBody) or body.begin != 0 or body.end != len(body.data):
            await super()._send_response(send, response)
            return
        await send(
            {"type": "http.response.start", "status": response.status_code, "headers": encode_headers(response.headers)}
        )
        await send({"type": "http.response.body", "body": body.data, "more_body": False})
