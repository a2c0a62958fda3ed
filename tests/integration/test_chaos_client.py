"""The load client under faults, against the real simulator, wsproxy and Redis (devkit.localstack).

- a session whose ``/run`` answers 404 (the session is gone, as after a Redis restart without
  persistence) ends at once instead of posting each remaining query;
- a query whose stream ended while the socket was down (its ``done`` published then) fails as
  ``lost_on_reconnect`` soon after the session reconnected, not after the whole query timeout.
"""

from __future__ import annotations

import random
import socket
import time

import pytest
import trio

from devkit.localstack import Stack, start_wsproxy
from kit.client._accounting import Recorder
from kit.client._http import HttpPool
from kit.client._session import RESUME_GRACE_S, Session, SessionConfig

pytestmark = pytest.mark.timeout(120)


def _redis(stack: Stack, *cmd: str) -> bytes:
    with socket.create_connection((stack.redis.host, stack.redis.port), timeout=5) as s:
        parts = [b"AUTH", stack.redis.password.encode()]
        out = b"*2\r\n" + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)
        args = [c.encode() for c in cmd]
        out += b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)
        s.sendall(out)
        data = b""
        while data.count(b"\r\n") < 2:
            data += s.recv(4096)
        return data


async def _session(stack: Stack, cfg: SessionConfig, during=None) -> tuple[Session, Recorder, float]:
    rec = Recorder()
    http = HttpPool(stack.api_url, max_connections=4)
    try:
        sess = Session(cfg, http, rec, 0, time.monotonic_ns(), random.Random(1))
        t0 = time.monotonic()
        async with trio.open_nursery() as n:
            n.start_soon(sess.run)
            if during is not None:
                await during(sess)
        return sess, rec, time.monotonic() - t0
    finally:
        await http.aclose()


async def test_a_session_whose_run_answers_404_ends_at_once_with_its_remaining_queries_skipped(stack_factory):
    stack = stack_factory(sim_env={"TOKEN_DELAY_MS": 5})
    cfg = SessionConfig(
        api_url=stack.api_url, ws_url=stack.ws_url, queries=6, think_time=0.3, max_tokens=5, query_timeout=20
    )

    async def flush_after_first_query(sess: Session) -> None:
        while sess.s.queries_ok < 1:
            await trio.sleep(0.01)  # polling the session's own counters, bounded by the test timeout
        assert b"+OK" in _redis(stack, "FLUSHALL")  # what a Redis restart without persistence does

    with trio.fail_after(60):
        sess, rec, _ = await _session(stack, cfg, flush_after_first_query)
    s = sess.s
    assert s.queries_ok == 1
    assert s.queries_failed == 1 and rec.errors.get("run_http_404") == 1  # one 404, not five
    assert s.queries_skipped == 4
    assert s.status == "failed" and any("session gone" in e for e in s.errors)


async def test_a_query_whose_done_was_published_while_disconnected_fails_soon_after_the_reconnect(stack_factory):
    stack = stack_factory(sim_env={"TOKEN_DELAY_MS": 20})
    cfg = SessionConfig(
        api_url=stack.api_url,
        ws_url=stack.ws_url,
        queries=1,
        max_tokens=40,
        query_timeout=60,
        initial_backoff=0.2,
        max_backoff=0.5,
        max_reconnect_attempts=40,
    )
    restarted = []

    async def crash_mid_stream_and_come_back_after_it_ended(sess: Session) -> None:
        while sess.current is None or sess.current.received < 5:
            await trio.sleep(0.005)  # polling the session's own counters, bounded by the test timeout
        stack.wsproxy.kill()  # as a crash would: the rest of the stream, done included, is published meanwhile
        await trio.sleep(40 * 0.020 + 0.5)
        proc, _ = await trio.to_thread.run_sync(
            lambda: start_wsproxy(
                stack.workdir / "restarted",
                redis_url=stack.redis.url,
                jwt_secret=stack.jwt_secret,
                port=stack.wsproxy_port,
            )
        )
        restarted.append(proc)

    try:
        with trio.fail_after(60):
            sess, rec, elapsed = await _session(stack, cfg, crash_mid_stream_and_come_back_after_it_ended)
    finally:
        for p in restarted:
            p.stop()
    (q,) = rec.queries
    assert q.status == "lost_tokens" and q.error.startswith("lost_on_reconnect:"), q.error
    assert rec.errors.get("query_lost_on_reconnect") == 1
    assert q.received + q.lost == q.expected == 40 and q.lost > 0
    assert sess.s.reconnects_ok == 1
    # failed within the grace after the reconnect, not after the 60 s query timeout
    assert elapsed < 40 * 0.020 + 0.5 + 5 + RESUME_GRACE_S + 3
