"""kit.sim's bounds on what a client holds: a body not whole within its deadline is 408 and the connection
closed, on the direct path and on Quart's alike; the limits are settings read once, bad values one line.

No Redis (its URL points at a closed port): the body deadline acts before any view runs.  The
deadline is real time here (0.2 s), the shortest SimLimits allows but one; a test waits for the answer,
never a sleep.
"""

from __future__ import annotations

import asyncio
import socket
import time

import orjson
import pytest
import uvloop

from kit.config import ConfigError, SimSettings
from kit.sim import SimLimits, create_app
from kit.sim._asgi import BODY_DEADLINES, BodyDeadlines

pytestmark = pytest.mark.timeout(30)

DEADLINE_S = 0.2


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _app():
    return create_app(
        SimSettings(jwt_secret="x" * 48, redis_url=f"redis://127.0.0.1:{_closed_port()}/0"),
        limits=SimLimits(request_body_timeout_secs=DEADLINE_S),
    )


async def _request(app, path: str, chunks: list[bytes], *, then_wait: bool) -> tuple[float, list[dict]]:
    """POST *path* whose body comes as *chunks* (more to come), then never more if *then_wait*."""
    sent: list[dict] = []
    messages = [{"type": "http.request", "body": c, "more_body": True} for c in chunks]
    if not then_wait:
        messages.append({"type": "http.request", "body": b"", "more_body": False})
    messages.reverse()
    forever = asyncio.Event()

    async def receive():
        if messages:
            return messages.pop()
        await forever.wait()  # the rest of the body never arrives

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
        "headers": [(b"host", b"localhost"), (b"content-length", b"100")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    t = time.monotonic()
    await asyncio.wait_for(app(scope, receive, send), 10)
    return time.monotonic() - t, sent


@pytest.mark.parametrize("path", ["/session/abc/run", "/session/create", "/no/such/route"])
def test_a_body_that_never_arrives_whole_is_answered_408_and_closed_at_its_deadline(path):
    async def main():
        app = _app()
        await app.startup()
        try:
            took, sent = await _request(app, path, [b'{"query": '], then_wait=True)
            stats = app.extensions["kit.sim"].statistics()
            pending = len(app.extensions[BODY_DEADLINES]._reading)
        finally:
            await app.shutdown()
        return took, sent, stats, pending

    took, sent, stats, pending = uvloop.run(main())
    period = BodyDeadlines(DEADLINE_S).period_s
    assert DEADLINE_S <= took < DEADLINE_S + period + 0.5
    assert sent[0]["status"] == 408
    headers = dict(sent[0]["headers"])
    assert headers[b"connection"] == b"close" and headers[b"content-type"] == b"application/json"
    body = orjson.loads(sent[1]["body"])
    assert body["error"] == "request_timeout" and "SIM_REQUEST_BODY_TIMEOUT_SECS" in body["detail"]
    assert stats["request_body_timeouts"] == 1 and pending == 0


def test_a_body_in_chunks_within_the_deadline_is_read_and_leaves_nothing_behind():
    async def main():
        app = _app()
        await app.startup()
        try:
            _, sent = await _request(app, "/session/abc/run", [b'{"query": ', b"1}"], then_wait=False)
            return sent, app.extensions["kit.sim"].statistics(), len(app.extensions[BODY_DEADLINES]._reading)
        finally:
            await app.shutdown()

    sent, stats, pending = uvloop.run(main())
    assert sent[0]["status"] == 422  # the body was read whole: {"query": 1} is refused by the view
    assert stats["request_body_timeouts"] == 0 and pending == 0


def test_a_sweep_cancels_only_the_overdue_oldest_first():
    async def main():
        deadlines = BodyDeadlines(10.0)

        async def reader(started: asyncio.Event):
            task = deadlines.begin()
            started.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                return deadlines.expired(task)
            finally:
                deadlines.end(task)

        evs = [asyncio.Event() for _ in range(3)]
        tasks = [asyncio.create_task(reader(ev)) for ev in evs]
        for ev in evs:
            await ev.wait()
        first_deadline = next(iter(deadlines._reading.values()))
        assert deadlines.sweep(first_deadline - 1) == 0
        assert deadlines.sweep(first_deadline) == 1
        tasks[2].cancel()  # a cancellation that is not the sweep's is not a timeout
        results = [await tasks[0], await asyncio.gather(tasks[2], return_exceptions=True)]
        tasks[1].cancel()
        await asyncio.gather(tasks[1], return_exceptions=True)
        return results, deadlines.timeouts, len(deadlines._reading)

    (first, third), timeouts, pending = uvloop.run(main())
    assert first is True and third == [False]
    assert timeouts == 1 and pending == 0


def test_limits_have_documented_defaults_and_a_bad_value_is_one_line_naming_the_variable():
    assert SimLimits.from_env({}) == SimLimits()
    lim = SimLimits.from_env({"SIM_MAX_SESSION_QUERIES_IN_FLIGHT": "3", "SIM_REQUEST_BODY_TIMEOUT_SECS": "2.5"})
    assert (lim.max_session_queries_in_flight, lim.request_body_timeout_secs) == (3, 2.5)
    for name, raw in (
        ("SIM_MAX_QUERIES_IN_FLIGHT", "0"),
        ("SIM_REQUEST_HEADER_TIMEOUT_SECS", "soon"),
        ("SIM_MAX_HEAD_BYTES", "100"),
    ):
        with pytest.raises(ConfigError, match=name) as info:
            SimLimits.from_env({name: raw})
        assert "\n" not in str(info.value)
