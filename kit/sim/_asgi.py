"""A leaner per-request ASGI path for Quart (``Quart.asgi_http_class``), same behaviour for our routes.

Why: py-spy on a worker under a realistic run (1,000 sessions, create + 3 runs + close)
showed Quart's own ``ASGIHTTPConnection`` spending a good part of each request on
plumbing rather than on the request: it starts two tasks per request (one reading the
body, one running the handler), waits on both with ``asyncio.wait`` and cancels the
reader, and sends every response as three ASGI messages (start, body with
``more_body``, an empty final body), each a call into Granian.

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
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from quart.asgi import ASGIHTTPConnection
from quart.utils import encode_headers
from quart.wrappers.response import DataBody, Response

__all__ = ["LeanHTTPConnection", "DirectRoutes", "DIRECT_ROUTES", "Answer", "View"]

log = logging.getLogger(__name__)

#: the ``app.extensions`` key of an app's :class:`DirectRoutes`
DIRECT_ROUTES = "kit.sim.direct_routes"

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


class LeanHTTPConnection(ASGIHTTPConnection):
    """Quart's ASGI HTTP connection without the per-request reader task and extra sends."""

    async def __call__(self, receive, send) -> None:
        limit = self.app.config["MAX_CONTENT_LENGTH"]
        chunks: list[bytes] = []
        received = 0
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
                await send({"type": "http.response.start", "status": status,
                            "headers": [_CONTENT_TYPE, (b"content-length", b"%d" % len(body))]})
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
        await send({"type": "http.response.start", "status": response.status_code,
                    "headers": encode_headers(response.headers)})
        await send({"type": "http.response.body", "body": body.data, "more_body": False})
