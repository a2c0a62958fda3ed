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
"""

from __future__ import annotations

import logging

from quart.asgi import ASGIHTTPConnection
from quart.utils import encode_headers
from quart.wrappers.response import DataBody, Response

__all__ = ["LeanHTTPConnection"]

log = logging.getLogger(__name__)


class LeanHTTPConnection(ASGIHTTPConnection):
    """Quart's ASGI HTTP connection without the per-request reader task and extra sends."""

    async def __call__(self, receive, send) -> None:
        request = self._create_request_from_scope(send)
        limit = self.app.config["MAX_CONTENT_LENGTH"]
        received = 0
        while True:
            message = await receive()
            if message["type"] == "http.request":
                chunk = message.get("body", b"")
                received += len(chunk)
                request.body.append(chunk)  # past MAX_CONTENT_LENGTH it keeps nothing and marks 413
                if not message.get("more_body", False) or (limit is not None and received > limit):
                    request.body.set_complete()
                    break
            elif message["type"] == "http.disconnect":
                return
        await self.handle_request(request, send)

    async def _send_response(self, send, response) -> None:
        body = response.response if isinstance(response, Response) else None
        if not isinstance(body, DataBody) or body.begin != 0 or body.end != len(body.data):
            await super()._send_response(send, response)
            return
        await send({"type": "http.response.start", "status": response.status_code,
                    "headers": encode_headers(response.headers)})
        await send({"type": "http.response.body", "body": body.data, "more_body": False})
