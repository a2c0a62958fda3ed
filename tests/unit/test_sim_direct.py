"""kit.sim's direct routes (kit.sim._asgi.DirectRoutes): the session routes answered without Quart's
request context take only requests Quart would route to the same view with the same session id (the
usual paths all), leave everything else to Quart, and answer as Quart's path does.

No Redis: the app's REDIS_URL points at a closed port, so a session route fails on its Redis call,
which is the error path both ways must answer alike (503 redis_unavailable).  The success paths
run through the direct routes in tests/integration/test_sim.py (a real simulator and Redis).
"""

from __future__ import annotations

import functools
import socket

import orjson
import pytest
import uvloop
from werkzeug.exceptions import HTTPException

from kit.config import SimSettings
from kit.sim import create_app
from kit.sim._asgi import DIRECT_ROUTES

pytestmark = pytest.mark.timeout(30)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _app():
    return create_app(SimSettings(jwt_secret="x" * 48, redis_url=f"redis://127.0.0.1:{_closed_port()}/0"))


def _quart_route(app, method: str, path: str) -> tuple[str, dict] | None:
    adapter = app.url_map.bind("localhost")
    try:
        rule, args = adapter.match(path, method=method, return_rule=True)
    except HTTPException:  # 404, 405, or a redirect
        return None
    return rule.endpoint, args


def _direct_route(app, method: str, path: str) -> tuple[str, dict] | None:
    view = app.extensions[DIRECT_ROUTES].route(method, path)
    if view is None:
        return None
    if isinstance(view, functools.partial):
        return view.func.__name__, {"session_id": view.args[0]}
    return view.__name__, {}


USUAL = [
    ("POST", "/session/create"),
    ("POST", "/session/0123abcd/run"),
    ("POST", "/session/0123abcd/close"),
    ("POST", "/session/create/run"),
    ("POST", "/session/a.b~c-d/close"),
]  # "create" is an id there, too


@pytest.mark.parametrize(
    "method, path",
    [
        *USUAL,
        ("POST", "/session//run"),  # empty id
        ("POST", "//session/abc/run"),  # doubled slashes: left to Quart
        ("POST", "/session/abc/run/"),  # trailing slash
        ("POST", "/session/abc/def/run"),
        ("POST", "/session/abc/stop"),
        ("POST", "/session/create/"),
        ("POST", "/session"),
        ("POST", "/health"),
        ("POST", "/stats"),
        ("GET", "/session/create"),
        ("GET", "/session/abc/run"),
        ("PUT", "/session/abc/close"),
    ],
)
def test_direct_routes_take_a_request_only_where_quart_routes_it_to_the_same_view(method, path):
    app = _app()
    direct = _direct_route(app, method, path)
    if direct is not None:
        assert direct == _quart_route(app, method, path)
    if (method, path) in USUAL:
        assert direct is not None


async def _post(app, path: str, body: bytes) -> tuple[int, dict[bytes, bytes], dict]:
    sent = []
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive():
        return messages.pop() if messages else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"localhost"), (b"content-length", str(len(body)).encode())],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    await app(scope, receive, send)
    headers = dict(sent[0]["headers"])
    return sent[0]["status"], headers, orjson.loads(b"".join(m.get("body", b"") for m in sent[1:]))


@pytest.mark.parametrize(
    "path, body, status, error",
    [
        ("/session/create", b"", 503, "redis_unavailable"),
        ("/session/abc/run", b'{"query": "hi"}', 503, "redis_unavailable"),
        ("/session/abc/close", b"", 503, "redis_unavailable"),
        ("/session/abc/run", b'{"query": 1}', 422, "invalid_body"),  # before any Redis call
        ("/session/" + "x" * 65 + "/run", b'{"query": "hi"}', 404, "session_not_found"),  # too long an id
    ],
)
def test_a_session_route_answers_alike_through_the_direct_path_and_through_quart(path, body, status, error):
    async def main():
        app = _app()
        await app.startup()
        try:
            direct = await _post(app, path, body)
            routes = app.extensions.pop(DIRECT_ROUTES)
            try:
                through_quart = await _post(app, path, body)
            finally:
                app.extensions[DIRECT_ROUTES] = routes
            counters = app.extensions["kit.sim"].statistics()
        finally:
            await app.shutdown()
        return direct, through_quart, counters

    direct, through_quart, counters = uvloop.run(main())
    assert direct == through_quart
    assert direct[0] == status and direct[1][b"content-type"] == b"application/json"
    assert direct[2]["error"] == error
    # each path counted its failure once
    assert counters["errors" if status == 503 else "client_errors"] == 2


# -- one route table (kit.sim._routes.ROUTES) feeds Quart and the direct path --------------------


def test_quart_serves_exactly_the_route_table_and_the_direct_path_its_session_routes():
    from kit.sim._routes import ROUTES

    app = _app()
    served = {
        (rule.rule, rule.endpoint, method)
        for rule in app.url_map.iter_rules()
        for method in rule.methods - {"HEAD", "OPTIONS"}
        if rule.endpoint != "static"
    }
    assert served == {(r.rule, r.endpoint, r.method) for r in ROUTES}
    assert {r.endpoint for r in ROUTES if r.direct} == {"session_create", "session_run", "session_close"}
    route = app.extensions[DIRECT_ROUTES].route
    assert route("POST", "/session/create").__name__ == "session_create"
    assert route("GET", "/stats") is None and route("GET", "/health") is None  # Quart's, as before


def test_the_direct_matcher_refuses_a_table_it_could_not_match_as_werkzeug_does():
    from kit.sim._routes import Route, direct_router

    async def view(*_):
        return 200, b"{}"

    def build(*routes):
        return direct_router(routes, {r.endpoint: view for r in routes})

    with pytest.raises(ValueError, match="may match the same"):
        build(Route("POST", "/a/<x>/b", "one", direct=True), Route("POST", "/a/<y>/<z>", "two", direct=True))
    with pytest.raises(ValueError, match="whole-segment"):
        build(Route("POST", "/a/<int:x>", "one", direct=True))
    with pytest.raises(ValueError, match="JSON only"):
        build(Route("GET", "/m", "one", content_type="text/plain", direct=True))
    # a fixed rule beside one with arguments: the fixed one wins, as in werkzeug; two arguments bind in order
    route = build(
        Route("POST", "/a/b", "fixed", direct=True),
        Route("POST", "/a/<x>", "arg", direct=True),
        Route("POST", "/c/<x>/d/<y>", "two", direct=True),
    )
    assert route("POST", "/a/b") is view and route("POST", "/a/q").args == ("q",)
    assert route("POST", "/c/1/d/2").args == ("1", "2") and route("POST", "/c//d/2") is None
    assert route("GET", "/a/b") is None and "def route(method, path)" in route.source
