"""The simulator as a real process (``python -m kit.sim``, Uvicorn workers) against a real redis-server."""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import orjson
import psutil
import pytest
import redis

from devkit.localstack import RedisServer, start_redis, start_sim
from kit.auth import verify_token

pytestmark = pytest.mark.timeout(120)

WORDS = [f"w{i}" for i in range(30)]
TEXT = " ".join(WORDS)


class Sim:
    def __init__(self, proc, port: int, secret: str, redis_server: RedisServer) -> None:
        self.proc = proc
        self.port = port
        self.secret = secret
        self.redis_server = redis_server
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10.0)

    def create(self, **body) -> dict:
        r = self.http.post("/session/create", json=body or None)
        assert r.status_code == 201, r.text
        return r.json()

    def stats(self) -> dict:
        return self.http.get("/stats").json()


@pytest.fixture(scope="module")
def sim_factory(tmp_path_factory, redis_server):
    started: list[Sim] = []

    def make(redis_srv: RedisServer | None = None, **env) -> Sim:
        srv = redis_srv or redis_server
        secret = secrets.token_urlsafe(48)
        proc, port = start_sim(
            tmp_path_factory.mktemp("sim"), redis_url=srv.url, jwt_secret=secret, LLM_RESPONSE_TEXT=TEXT, **env
        )
        sim = Sim(proc, port, secret, srv)
        started.append(sim)
        return sim

    yield make
    for sim in started:
        sim.http.close()
        sim.proc.stop()


@pytest.fixture(scope="module")
def sim(sim_factory) -> Sim:
    return sim_factory(TOKEN_DELAY_MS=2, SESSION_TTL_SECONDS=120)


def _redis(server: RedisServer) -> redis.Redis:
    return redis.Redis(host=server.host, port=server.port, password=server.password, socket_timeout=10)


@contextlib.contextmanager
def subscribed(server: RedisServer, *, channels=(), patterns=()):
    """A redis-py pub/sub connection, subscribed (confirmed) before the block runs."""
    client = _redis(server)
    ps = client.pubsub(ignore_subscribe_messages=True)
    try:
        if channels:
            ps.subscribe(*channels)
        if patterns:
            ps.psubscribe(*patterns)
        # the confirmations arrive in order; once each is read the server is delivering to us
        for _ in range(len(channels) + len(patterns)):
            msg = ps.parse_response(block=True, timeout=10)
            assert msg is not None and msg[0] in (b"subscribe", b"psubscribe")
        yield ps
    finally:
        ps.close()
        client.close()


def collect(ps, count: int, *, timeout: float = 20.0) -> list[tuple[bytes, dict]]:
    """Read *count* messages as (channel, parsed JSON); fail if they do not all arrive in time."""
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < count:
        left = deadline - time.monotonic()
        assert left > 0, f"only {len(out)} of {count} messages arrived in {timeout}s"
        msg = ps.get_message(timeout=min(left, 1.0))
        if msg is not None and msg["type"] in ("message", "pmessage"):
            out.append((msg["channel"], orjson.loads(msg["data"])))
    return out


def assert_error(resp: httpx.Response, status: int, code: str, *mentions: str) -> None:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert set(body) == {"error", "detail"}
    assert body["error"] == code
    for m in mentions:
        assert m in body["detail"]


# -- sessions --------------------------------------------------------------------------------


def test_create_returns_201_with_a_token_for_that_session_and_its_ws_path(sim):
    body = sim.create()
    assert set(body) == {"session_id", "auth_token", "ws_path"}
    sid = body["session_id"]
    claims = verify_token(body["auth_token"], secret=sim.secret, session_id=sid)
    assert claims["session_id"] == sid
    assert body["ws_path"] == f"/load-test-agent/ws/{sid}"


def test_create_with_agent_id_puts_it_in_the_ws_path(sim):
    body = sim.create(agent_id="agent-42")
    assert body["ws_path"] == f"/agent-42/ws/{body['session_id']}"


def test_session_record_is_open_with_its_agent_and_expires_within_session_ttl(sim):
    sid = sim.create(agent_id="ttl-agent")["session_id"]
    r = _redis(sim.redis_server)
    try:
        record = r.hgetall(f"session:{sid}")
        ttl = r.ttl(f"session:{sid}")
    finally:
        r.close()
    assert record[b"status"] == b"open"
    assert record[b"agent_id"] == b"ttl-agent"
    assert abs(float(record[b"created"]) - time.time()) < 60
    assert 0 < ttl <= 120


def test_close_marks_the_session_closed(sim):
    sid = sim.create()["session_id"]
    resp = sim.http.post(f"/session/{sid}/close")
    assert resp.status_code == 200
    assert resp.json() == {"session_id": sid, "status": "closed"}
    r = _redis(sim.redis_server)
    try:
        assert r.hget(f"session:{sid}", "status") == b"closed"
        assert r.ttl(f"session:{sid}") > 0  # closing keeps the expiry
    finally:
        r.close()


# -- errors ----------------------------------------------------------------------------------


def test_unknown_session_is_404_for_run_and_close(sim):
    assert_error(sim.http.post("/session/0123abc/run", json={"query": "q"}), 404, "session_not_found", "0123abc")
    assert_error(sim.http.post("/session/0123abc/close"), 404, "session_not_found")


def test_closed_session_is_409_for_run_and_for_a_second_close(sim):
    sid = sim.create()["session_id"]
    assert sim.http.post(f"/session/{sid}/close").status_code == 200
    assert_error(sim.http.post(f"/session/{sid}/run", json={"query": "q"}), 409, "session_closed")
    assert_error(sim.http.post(f"/session/{sid}/close"), 409, "session_closed")


@pytest.mark.parametrize(
    ("content", "field"),
    [
        (b"{not json", "JSON"),
        (b"[1]", "object"),
        (b"{}", "query"),
        (b'{"query": 7}', "query"),
        (b'{"query": "q", "max_tokens": 0}', "max_tokens"),
        (b'{"query": "q", "max_tokens": "3"}', "max_tokens"),
    ],
)
def test_malformed_run_body_is_422_naming_the_field(sim, content, field):
    sid = sim.create()["session_id"]
    resp = sim.http.post(f"/session/{sid}/run", content=content, headers={"content-type": "application/json"})
    assert_error(resp, 422, "invalid_body", field)


@pytest.mark.parametrize(
    ("content", "field"), [(b'{"agent_id": 3}', "agent_id"), (b"oops", "JSON"), (b'{"agent_id": "a/b"}', "agent_id")]
)
def test_malformed_create_body_is_422_naming_the_field(sim, content, field):
    assert_error(sim.http.post("/session/create", content=content), 422, "invalid_body", field)


def test_a_body_over_64_kib_is_413_json_and_a_body_in_chunks_is_read_whole(sim):
    sid = sim.create()["session_id"]
    big = b'{"query": "' + b"x" * (70 * 1024) + b'"}'
    assert_error(sim.http.post(f"/session/{sid}/run", content=big), 413, "request_entity_too_large")

    def chunks():  # no Content-Length: chunked, several ASGI body messages
        yield b'{"query": '
        yield b'"q", "max_'
        yield b'tokens": 2}'

    resp = sim.http.post(f"/session/{sid}/run", content=chunks())
    assert resp.status_code == 202, resp.text
    assert resp.json()["tokens"] == 2


def test_unknown_route_and_wrong_method_are_json_errors(sim):
    assert_error(sim.http.get("/nope"), 404, "not_found")
    assert sim.http.get("/session/create").status_code == 405
    assert sim.http.get("/session/create").json()["error"] == "method_not_allowed"


# -- token streams ---------------------------------------------------------------------------


def test_run_publishes_every_word_in_order_then_done_with_the_count(sim):
    sid = sim.create()["session_id"]
    with subscribed(sim.redis_server, channels=[f"session:{sid}:down"]) as ps:
        resp = sim.http.post(f"/session/{sid}/run", json={"query": "tell me"})
        assert resp.status_code == 202
        qid, n = resp.json()["query_id"], resp.json()["tokens"]
        assert n == len(WORDS)
        msgs = [m for _, m in collect(ps, n + 1)]
    assert [m["type"] for m in msgs] == ["token"] * n + ["done"]
    assert {m["query_id"] for m in msgs} == {qid}
    assert [m["seq"] for m in msgs] == list(range(n + 1))
    assert [m["text"] for m in msgs[:-1]] == WORDS
    assert msgs[-1]["tokens"] == n
    assert all(isinstance(m["ts"], int) for m in msgs)
    assert [m["ts"] for m in msgs] == sorted(m["ts"] for m in msgs)


def test_max_tokens_truncates_the_answer(sim):
    sid = sim.create()["session_id"]
    with subscribed(sim.redis_server, channels=[f"session:{sid}:down"]) as ps:
        resp = sim.http.post(f"/session/{sid}/run", json={"query": "q", "max_tokens": 3})
        assert resp.json()["tokens"] == 3
        msgs = [m for _, m in collect(ps, 4)]
    assert [m.get("text") for m in msgs] == WORDS[:3] + [None]
    assert msgs[-1] == {**msgs[-1], "type": "done", "seq": 3, "tokens": 3}


def test_ttft_and_token_delay_are_honoured_never_early(sim_factory):
    ttft_ms, delay_ms, n = 80, 15, 8
    slow = sim_factory(TTFT_MS=ttft_ms, TOKEN_DELAY_MS=delay_ms)
    sid = slow.create()["session_id"]
    with subscribed(slow.redis_server, channels=[f"session:{sid}:down"]) as ps:
        sent_ns = time.time_ns()
        assert slow.http.post(f"/session/{sid}/run", json={"query": "q", "max_tokens": n}).status_code == 202
        msgs = [m for _, m in collect(ps, n + 1)]
    ts = [m["ts"] for m in msgs]
    for k in range(n):
        assert ts[k] - sent_ns >= (ttft_ms + k * delay_ms) * 1_000_000, f"token {k} published early"
    assert ts[n] >= ts[n - 1]
    assert ts[n - 1] - sent_ns >= (ttft_ms + (n - 1) * delay_ms) * 1_000_000


def test_jitter_keeps_every_token_in_order(sim_factory):
    jittery = sim_factory(TOKEN_DELAY_MS=2, TOKEN_JITTER_MS=10)
    sid = jittery.create()["session_id"]
    with subscribed(jittery.redis_server, channels=[f"session:{sid}:down"]) as ps:
        for _ in range(3):
            assert jittery.http.post(f"/session/{sid}/run", json={"query": "q"}).status_code == 202
        msgs = [m for _, m in collect(ps, 3 * (len(WORDS) + 1))]
    by_query: dict[str, list[dict]] = {}
    for m in msgs:
        by_query.setdefault(m["query_id"], []).append(m)
    assert len(by_query) == 3
    for stream in by_query.values():
        assert [m["seq"] for m in stream] == list(range(len(WORDS) + 1))
        assert [m["text"] for m in stream[:-1]] == WORDS


def test_many_concurrent_queries_are_each_delivered_exactly_once_in_order(sim_factory):
    sessions, per_query = 200, 20
    busy = sim_factory(TOKEN_DELAY_MS=5)
    sids = [busy.create()["session_id"] for _ in range(sessions)]
    before = busy.stats()
    with subscribed(busy.redis_server, patterns=["session:*:down"]) as ps:
        qids = {}
        for sid in sids:
            resp = busy.http.post(f"/session/{sid}/run", json={"query": "q", "max_tokens": per_query})
            assert resp.status_code == 202
            qids[sid] = resp.json()["query_id"]
        msgs = collect(ps, sessions * (per_query + 1), timeout=60)
        # nothing beyond the expected count arrives
        assert ps.get_message(timeout=0.3) is None
    streams: dict[str, list[dict]] = {}
    for channel, m in msgs:
        sid = channel.decode().split(":")[1]
        if sid in qids:
            streams.setdefault(sid, []).append(m)
    assert set(streams) == set(sids)
    for sid, stream in streams.items():
        assert [m["seq"] for m in stream] == list(range(per_query + 1)), sid
        assert {m["query_id"] for m in stream} == {qids[sid]}
        assert stream[-1]["type"] == "done" and stream[-1]["tokens"] == per_query
    after = busy.stats()
    assert after["tokens_published"] - before["tokens_published"] == sessions * per_query
    assert after["done_published"] - before["done_published"] == sessions
    assert after["queries"] - before["queries"] == sessions
    assert after["publish_max_batch"] > 1  # due messages of different queries went out together
    assert after["messages_dropped"] == 0 and after["publish_errors"] == 0


def test_stats_count_sessions_queries_and_tokens(sim_factory):
    fresh = sim_factory(TOKEN_DELAY_MS=1)
    sid = fresh.create()["session_id"]
    with subscribed(fresh.redis_server, channels=[f"session:{sid}:down"]) as ps:
        fresh.http.post(f"/session/{sid}/run", json={"query": "q", "max_tokens": 4})
        collect(ps, 5)
    fresh.http.post(f"/session/{sid}/close")
    fresh.http.post(f"/session/{sid}/close")  # 409
    stats = fresh.stats()
    assert stats["sessions_created"] == 1
    assert stats["sessions_closed"] == 1
    assert stats["queries"] == 1
    assert stats["tokens_published"] == 4
    assert stats["done_published"] == 1
    assert stats["client_errors"] == 1
    assert stats["errors"] == 0
    assert stats["pid"] != fresh.proc.pid  # counted by a worker, not the supervisor


# -- health ----------------------------------------------------------------------------------


def _health_settles(sim: Sim, status: int, path: str = "/health", timeout: float = 5.0) -> httpx.Response:
    """Poll *path* until five answers in a row (every worker, whichever answers) are *status*."""
    deadline = time.monotonic() + timeout
    in_a_row = 0
    while in_a_row < 5:
        resp = sim.http.get(path)
        in_a_row = in_a_row + 1 if resp.status_code == status else 0
        assert time.monotonic() < deadline, f"{path} did not settle at {status}: {resp.status_code} {resp.text}"
        if in_a_row < 5:
            time.sleep(0.05)  # poll interval of a bounded readiness check
    return resp


def test_health_is_200_with_redis_and_503_json_once_its_redis_is_stopped(sim_factory, tmp_path):
    own = start_redis(tmp_path / "redis")
    try:
        dedicated = sim_factory(own, TTFT_MS=400, TOKEN_DELAY_MS=1)
        resp = dedicated.http.get("/health")
        assert resp.status_code == 200 and resp.json() == {"status": "ok"}
        assert dedicated.http.get("/health/deep").status_code == 200
        sid = dedicated.create()["session_id"]
        # accepted now, due after the Redis below is gone: its messages cannot be published
        assert dedicated.http.post(f"/session/{sid}/run", json={"query": "q"}).status_code == 202
    finally:
        own.proc.stop()
    # /health reads the workers' watch on Redis (one PING a second each), so it turns within seconds
    resp = _health_settles(dedicated, 503)
    assert resp.json()["status"] == "unavailable" and resp.json()["redis"] == "down"
    assert dedicated.http.get("/health/deep").status_code == 503
    assert_error(dedicated.http.post("/session/create"), 503, "redis_unavailable", "REDIS_URL")

    deadline = time.monotonic() + 20
    while True:
        stats = dedicated.stats()
        if stats["messages_dropped"] + stats["tokens_published"] + stats["done_published"] >= len(WORDS) + 1:
            break
        assert time.monotonic() < deadline, stats
        time.sleep(0.05)  # poll interval of a progress check, bounded by the deadline
    assert stats["messages_dropped"] >= 1
    assert stats["publish_errors"] >= 1
    assert stats["errors"] >= 2  # the failed create and the failed publishing
    log = dedicated.proc.log_path.read_text()
    assert "publishing failed" in log
    assert '"text"' not in log and own.password not in log  # no token contents, no secrets


# -- the Redis connection pool ---------------------------------------------------------------


def _burst_creates(sim: Sim, n: int) -> list[httpx.Response]:
    """*n* concurrent POST /session/create, each on its own connection."""

    def one(_: int) -> httpx.Response:
        return httpx.post(f"http://127.0.0.1:{sim.port}/session/create", timeout=20)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


def _wait_published(sim: Sim, messages: int, timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        stats = sim.stats()
        if stats["messages_dropped"] + stats["tokens_published"] + stats["done_published"] >= messages:
            return stats
        assert time.monotonic() < deadline, stats
        time.sleep(0.05)  # poll interval of a progress check, bounded by the deadline


def test_a_burst_beyond_the_pool_while_redis_stalls_is_503_pool_exhausted_and_publishing_goes_on(sim_factory, tmp_path):
    own = start_redis(tmp_path / "redis")
    admin = _redis(own)
    try:
        small = sim_factory(own, SIM_REDIS_POOL_SIZE=2, SIM_REDIS_POOL_TIMEOUT_MS=300, TTFT_MS=200, TOKEN_DELAY_MS=20)
        sid = small.create()["session_id"]
        # accepted now, due while Redis is paused: the publisher must not wait for the busy pool
        assert small.http.post(f"/session/{sid}/run", json={"query": "q", "max_tokens": 10}).status_code == 202
        # every other client's command waits 4 s: the whole burst lands within it on a busy machine too (with
        # 1.5 s, the suite's four shards side by side once let it start after Redis had resumed)
        admin.execute_command("CLIENT", "PAUSE", 4000, "ALL")
        responses = _burst_creates(small, 8)
        codes = [r.status_code for r in responses]
        exhausted = [r for r in responses if r.status_code == 503]
        assert set(codes) <= {201, 503}, codes
        assert codes.count(201) >= 2  # the two holding the pool's connections finish once Redis resumes
        assert len(exhausted) >= 4, codes  # the rest gave up after SIM_REDIS_POOL_TIMEOUT_MS
        for r in exhausted:
            assert_error(r, 503, "redis_pool_exhausted", "pool was exhausted", "SIM_REDIS_POOL_SIZE")
            assert "REDIS_URL" not in r.json()["detail"]
        stats = _wait_published(small, 11)
        assert stats["tokens_published"] == 10 and stats["done_published"] == 1
        assert stats["messages_dropped"] == 0 and stats["publish_errors"] == 0
        assert stats["redis_pool_exhausted"] == len(exhausted)
        assert small.http.get("/health").status_code == 200
    finally:
        admin.close()
        own.proc.stop()


def test_a_burst_beyond_the_pool_waits_for_a_connection_within_the_timeout(sim_factory, tmp_path):
    own = start_redis(tmp_path / "redis")
    admin = _redis(own)
    try:
        small = sim_factory(own, SIM_REDIS_POOL_SIZE=2, SIM_REDIS_POOL_TIMEOUT_MS=5000)
        admin.execute_command("CLIENT", "PAUSE", 300, "ALL")
        codes = [r.status_code for r in _burst_creates(small, 12)]
        assert codes == [201] * 12, codes
        assert small.stats()["redis_pool_exhausted"] == 0
    finally:
        admin.close()
        own.proc.stop()


# -- the process -----------------------------------------------------------------------------


def _run_module(env_updates: dict[str, str]) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("JWT_SECRET", "JWT_SECRET_FILE")}
    env.update(env_updates)
    return subprocess.run(
        [sys.executable, "-m", "kit.sim"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )


def test_short_jwt_secret_exits_2_naming_jwt_secret_without_a_traceback():
    res = _run_module({"JWT_SECRET": "too-short", "FASTAPI_PORT": "1"})
    assert res.returncode == 2
    assert res.stderr.startswith("kit.sim: JWT_SECRET")
    assert "32" in res.stderr
    assert "Traceback" not in res.stderr + res.stdout
    assert "too-short" not in res.stderr  # the secret itself is never echoed


def test_bad_redis_url_and_bad_port_exit_2_naming_the_variable():
    secret = secrets.token_urlsafe(48)
    res = _run_module({"JWT_SECRET": secret, "REDIS_URL": "http://nope"})
    assert res.returncode == 2 and res.stderr.startswith("kit.sim: REDIS_URL")
    res = _run_module({"JWT_SECRET": secret, "FASTAPI_PORT": "eighty"})
    assert res.returncode == 2 and res.stderr.startswith("kit.sim: FASTAPI_PORT")
    assert "Traceback" not in res.stderr


def test_stats_all_and_metrics_sum_every_worker_and_metrics_parse_as_prometheus_text(sim_factory):
    from prometheus_client.parser import text_string_to_metric_families

    from kit.sim._workers import METRICS

    multi = sim_factory(FASTAPI_WORKERS=2, TOKEN_DELAY_MS=1)
    workers = {w.pid for w in psutil.Process(multi.proc.pid).children(recursive=True)}
    # new connections, so that both workers take some of the sessions
    for _ in range(40):
        with httpx.Client(base_url=f"http://127.0.0.1:{multi.port}", timeout=10.0) as one:
            assert one.post("/session/create").status_code == 201
    deadline = time.monotonic() + 10
    while True:  # each worker writes its counters once a second: wait (bounded) until both did
        total = multi.http.get("/stats/all").json()
        if total["sessions_created"] == 40 or time.monotonic() > deadline:
            break
        time.sleep(0.1)  # poll interval of a bounded readiness check
    assert total["sessions_created"] == 40 and total["workers"] == 2 and set(total["pids"]) == workers
    resp = multi.http.get("/metrics")
    assert resp.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = {s.name: s.value for fam in text_string_to_metric_families(resp.text) for s in fam.samples}
    assert samples["sim_sessions_created_total"] == 40 and samples["sim_workers"] == 2
    for key, kind, _ in METRICS:
        assert f"sim_{key}" + ("_total" if kind == "counter" else "") in samples, key


def test_sigterm_stops_every_worker_and_runs_the_shutdown_hooks(sim_factory):
    multi = sim_factory(FASTAPI_WORKERS=2, TOKEN_DELAY_MS=1)
    parent = psutil.Process(multi.proc.pid)
    workers = parent.children(recursive=True)
    assert len(workers) == 2
    assert multi.stats()["pid"] in {w.pid for w in workers}
    assert multi.proc.stop(timeout=20) == 0
    gone, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive
    log = multi.proc.log_path.read_text()
    assert log.count("kit.sim stopped") == 2  # after_serving ran in each worker
    assert "Traceback" not in log


def test_port_in_use_exits_1_with_one_line_naming_the_address():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        res = _run_module({"JWT_SECRET": secrets.token_urlsafe(48), "FASTAPI_PORT": str(port)})
    assert res.returncode == 1
    assert res.stderr.startswith(f"kit.sim: cannot listen on 127.0.0.1:{port}")
    assert "Traceback" not in res.stderr
