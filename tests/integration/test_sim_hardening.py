"""The simulator under abuse and faults, as a real process (``python -m kit.sim``, Uvicorn workers) against a
real redis-server: request heads and bodies bounded in time, queries bounded as a whole and in number,
``close`` cancelling a session's queries on every worker, and a killed worker replaced while the other
keeps streaming.  Each case is the hostile probe's (issue 16), at test scale."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import psutil
import pytest
import redis
from test_sim import collect, subscribed

from devkit.localstack import start_sim
from kit.sim._serve import CRASH_LOOP_S, KILL_AFTER_S

pytestmark = pytest.mark.timeout(120)

TEXT = " ".join(f"w{i}" for i in range(30))


class Sim:
    def __init__(self, proc, port: int) -> None:
        self.proc = proc
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.http = httpx.Client(base_url=self.url, timeout=10.0)

    def fresh(self) -> httpx.Client:
        """A client of its own: a new connection, so that the kernel may hand it to any worker."""
        return httpx.Client(base_url=self.url, timeout=10.0)

    def create(self) -> str:
        with self.fresh() as c:
            r = c.post("/session/create")
        assert r.status_code == 201, r.text
        return r.json()["session_id"]

    def run(self, sid: str, **body) -> httpx.Response:
        with self.fresh() as c:
            return c.post(f"/session/{sid}/run", json={"query": "q", **body})

    def total(self) -> dict:
        return self.http.get("/stats/all").json()

    def workers(self) -> list[psutil.Process]:
        """The workers: the supervisor's children."""
        return psutil.Process(self.proc.pid).children()


@contextlib.contextmanager
def simulator(tmp_path: Path, redis_url: str, **env) -> Iterator[Sim]:
    proc, port = start_sim(
        tmp_path / f"sim{secrets.token_hex(3)}",
        redis_url=redis_url,
        jwt_secret=secrets.token_urlsafe(48),
        LLM_RESPONSE_TEXT=TEXT,
        **env,
    )
    sim = Sim(proc, port)
    try:
        yield sim
    finally:
        sim.http.close()
        proc.stop()


def wait_for(check, what: str, timeout: float = 15.0, every: float = 0.05):
    """Poll *check* until it returns something truthy (returned), or fail naming *what*."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"{what}: not within {timeout}s (last: {got!r})"
        time.sleep(every)  # poll interval of a bounded wait for a condition


def read_until_closed(s: socket.socket, timeout: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and when (s after the call)."""
    t = time.monotonic()
    s.settimeout(timeout)
    data = b""
    while True:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return data, time.monotonic() - t


# -- request heads and bodies ---------------------------------------------------------------------


def test_a_body_that_never_arrives_is_answered_408_and_closed_at_the_deadline(tmp_path, redis_server):
    with simulator(tmp_path, redis_server.url, SIM_REQUEST_BODY_TIMEOUT_SECS=1) as sim:
        sid = sim.create()
        for path in (f"/session/{sid}/run", "/no/such/route"):  # the direct path and Quart's
            with socket.create_connection(("127.0.0.1", sim.port)) as s:
                s.sendall(f'POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{{"qu'.encode())
                data, took = read_until_closed(s, 10)
            assert data.startswith(b"HTTP/1.1 408 "), data[:200]
            assert b"SIM_REQUEST_BODY_TIMEOUT_SECS" in data
            assert 0.9 < took < 2.5, took
        assert sim.total()["request_body_timeouts"] == 2


def test_a_body_trickled_a_byte_at_a_time_is_closed_at_the_deadline_not_when_it_ends(tmp_path, redis_server):
    # the probe's 125 s trickle: bytes keep coming, the deadline counts from the head
    with simulator(tmp_path, redis_server.url, SIM_REQUEST_BODY_TIMEOUT_SECS=1) as sim:
        with socket.create_connection(("127.0.0.1", sim.port)) as s:
            s.sendall(b"POST /session/x/run HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
            t = time.monotonic()
            s.settimeout(0.2)
            data = b""
            while time.monotonic() - t < 10:
                try:
                    s.sendall(b" ")
                    chunk = s.recv(4096)
                except TimeoutError:
                    continue
                except (BrokenPipeError, ConnectionResetError):
                    break
                if not chunk:
                    break
                data += chunk
            took = time.monotonic() - t
        assert data.startswith(b"HTTP/1.1 408 "), data[:200]
        assert took < 3.0, took


def test_a_head_that_never_ends_and_an_idle_connection_are_closed_at_the_header_timeout(tmp_path, redis_server):
    with simulator(tmp_path, redis_server.url, SIM_REQUEST_HEADER_TIMEOUT_SECS=1) as sim:
        for first in (b"POST /session/create HTTP/1.1\r\nHost: x\r\nX-Slow: ", b""):
            with socket.create_connection(("127.0.0.1", sim.port)) as s:
                s.sendall(first)
                data, took = read_until_closed(s, 10)
            assert data == b"" and 0.9 < took < 3.0, (data, took)


def test_a_head_over_the_bound_is_431(tmp_path, redis_server):
    with simulator(tmp_path, redis_server.url, SIM_MAX_HEAD_BYTES=16384) as sim:
        with socket.create_connection(("127.0.0.1", sim.port)) as s:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"X-Big: " + b"a" * 40000 + b"\r\n\r\n")
            data, _ = read_until_closed(s, 10)
        assert data.startswith(b"HTTP/1.1 431 "), data[:100]
        assert sim.http.get("/health").status_code == 200


def test_hundreds_of_stalled_bodies_leave_health_answering_and_are_all_closed_at_the_deadline(tmp_path, redis_server):
    with simulator(tmp_path, redis_server.url, SIM_REQUEST_BODY_TIMEOUT_SECS=2) as sim:
        worker = sim.workers()[0]
        fds_before = worker.num_fds()
        stalled = []
        try:
            for _ in range(300):
                s = socket.create_connection(("127.0.0.1", sim.port))
                s.sendall(b"POST /session/x/run HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n{")
                stalled.append(s)
            t = time.monotonic()
            assert sim.http.get("/health").status_code == 200
            assert time.monotonic() - t < 1.0
            answers = [read_until_closed(s, 10)[0] for s in stalled]
        finally:
            for s in stalled:
                s.close()
        assert all(a.startswith(b"HTTP/1.1 408 ") for a in answers)
        wait_for(lambda: worker.num_fds() <= fds_before + 5, "the worker's sockets closed")


# -- queries: bounded as a whole and in number; close cancels them ------------------------------------


@pytest.mark.parametrize(
    "env, needle",
    [
        ({"TTFT_MS": "600000", "TOKEN_DELAY_MS": "20000"}, "the deployed workload"),
        ({"SIM_MAX_QUERIES_IN_FLIGHT": "0"}, "SIM_MAX_QUERIES_IN_FLIGHT"),
        ({"SIM_REQUEST_BODY_TIMEOUT_SECS": "soon"}, "SIM_REQUEST_BODY_TIMEOUT_SECS"),
    ],
)
def test_a_deployed_workload_past_the_bound_or_a_bad_limit_is_one_line_and_exit_2(env, needle):
    import subprocess
    import sys

    run_env = {**os.environ, "JWT_SECRET": secrets.token_urlsafe(48), "FASTAPI_PORT": "1", **env}
    res = subprocess.run([sys.executable, "-m", "kit.sim"], env=run_env, capture_output=True, text=True, timeout=30)
    assert res.returncode == 2 and res.stderr.startswith("kit.sim: ") and needle in res.stderr, res.stderr
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr


def test_twenty_69_day_queries_are_refused_and_hold_nothing(tmp_path, redis_server):
    with simulator(tmp_path, redis_server.url) as sim:
        sid = sim.create()
        rss = sim.workers()[0].memory_info().rss
        for _ in range(20):
            r = sim.run(sid, max_tokens=100_000, token_delay_ms=60_000, ttft_ms=600_000)
            assert r.status_code == 422, r.text
            assert r.json()["error"] == "invalid_body" and "69.5 days" in r.json()["detail"]
        total = sim.total()
        assert total["queries"] == 0 and total["queries_in_flight"] == 0
        assert sim.workers()[0].memory_info().rss < rss + 20 * 1024 * 1024
        # the longest query allowed is still taken: 15 minutes
        assert sim.run(sid, max_tokens=901, token_delay_ms=1000).status_code == 202


def test_queries_past_a_bound_in_flight_are_429_naming_the_bound(tmp_path, redis_server):
    with simulator(
        tmp_path,
        redis_server.url,
        SIM_MAX_SESSION_QUERIES_IN_FLIGHT=2,
        SIM_MAX_QUERIES_IN_FLIGHT=5,
        SIM_MAX_TOKENS_IN_FLIGHT=5000,
        TOKEN_DELAY_MS=1000,
    ) as sim:
        a = sim.create()
        assert [sim.run(a).status_code for _ in range(2)] == [202, 202]
        r = sim.run(a)
        assert r.status_code == 429 and r.json()["error"] == "too_many_queries"
        assert "SIM_MAX_SESSION_QUERIES_IN_FLIGHT=2" in r.json()["detail"]
        others = [sim.create() for _ in range(3)]
        assert [sim.run(s).status_code for s in others] == [202, 202, 202]
        r = sim.run(sim.create())
        assert r.status_code == 429 and "SIM_MAX_QUERIES_IN_FLIGHT=5" in r.json()["detail"]
        sim.http.post(f"/session/{a}/close")
        r = sim.run(others[0], max_tokens=4990, token_delay_ms=1)
        assert r.status_code == 429 and "SIM_MAX_TOKENS_IN_FLIGHT=5000" in r.json()["detail"]
        total = sim.total()
        assert total["queries_refused"] == 3 and total["queries_in_flight"] == 3


def test_close_cancels_the_sessions_queries_on_every_worker_each_ending_with_a_cancelled_done(tmp_path, redis_server):
    with simulator(tmp_path, redis_server.url, FASTAPI_WORKERS=2, TOKEN_DELAY_MS=500) as sim:
        sids = [sim.create() for _ in range(3)]
        with subscribed(redis_server, channels=[f"session:{sid}:down" for sid in sids]) as ps:
            qids = {}
            for sid in sids:  # 3 sessions x 8 queries of 30 tokens, 15 s each, over both workers
                for _ in range(8):
                    r = sim.run(sid)
                    assert r.status_code == 202, r.text
                    qids[r.json()["query_id"]] = sid
            # both workers hold some (each new connection goes to either): ask each for its own counters
            seen: dict[int, int] = {}

            def both_workers_hold_queries():
                with sim.fresh() as c:
                    st = c.get("/stats").json()
                seen[st["pid"]] = st["queries_in_flight"]
                return len(seen) == 2 and all(seen.values())

            wait_for(both_workers_hold_queries, "both workers answered /stats holding queries")
            assert wait_for(lambda: sim.total()["queries_in_flight"] == 24 or None, "24 in flight")
            for sid in sids:
                with sim.fresh() as c:
                    assert c.post(f"/session/{sid}/close").status_code == 200
            wait_for(lambda: sim.total()["queries_in_flight"] == 0, "every query cancelled")
            dones = {}
            deadline = time.monotonic() + 10
            while len(dones) < 24 and time.monotonic() < deadline:
                for channel, m in collect(ps, 1, timeout=10):
                    if m["type"] == "done":
                        dones[m["query_id"]] = (channel, m)
        assert set(dones) == set(qids)
        for qid, (channel, m) in dones.items():
            assert channel == f"session:{qids[qid]}:down".encode()
            assert m["cancelled"] is True and m["tokens"] == m["seq"] < 30
        total = sim.total()
        # every token a cancelled query never published is counted, exactly (how many depends on how soon the
        # close came on this machine, so the test asserts the sum, not a share)
        unsent = sum(30 - m["tokens"] for _, m in dones.values())
        assert total["queries_cancelled"] == 24 and total["tokens_cancelled"] == unsent > 0
        assert total["closes_heard"] >= 3 * 2  # each close heard by both workers


def test_without_the_acl_for_closes_a_close_still_cancels_the_answering_workers_queries_and_says_why(
    tmp_path, redis_server
):
    # the deployed ACL before redis_acl_sim_rules grants the close channel: the sim user's rules of today
    admin = redis.Redis(host=redis_server.host, port=redis_server.port, password=redis_server.password)
    user, password = f"sim{secrets.token_hex(4)}", secrets.token_urlsafe(24)
    admin.execute_command(
        "ACL",
        "SETUSER",
        user,
        "on",
        f">{password}",
        "resetchannels",
        "&session:*:down",
        "resetkeys",
        "~session:*",
        "-@all",
        "+publish",
        "+ping",
        "+hset",
        "+hget",
        "+hsetnx",
        "+expire",
        "+del",
        "+multi",
        "+exec",
        "+discard",
    )
    url = f"redis://{user}:{password}@{redis_server.host}:{redis_server.port}/0"
    try:
        with simulator(tmp_path, url, TOKEN_DELAY_MS=500) as sim:
            sid = sim.create()
            assert sim.run(sid).status_code == 202
            assert sim.http.post(f"/session/{sid}/close").status_code == 200
            wait_for(lambda: sim.total()["queries_in_flight"] == 0, "the answering worker's query cancelled")
            log = wait_for(lambda: "redis_acl_sim_rules" in (t := sim.proc.log_path.read_text()) and t, "the warning")
            assert "&kit:sim:close +subscribe +unsubscribe" in log and password not in log
            assert "Traceback" not in log
    finally:
        admin.execute_command("ACL", "DELUSER", user)
        admin.close()


# -- workers that survive -----------------------------------------------------------------------------


def test_a_killed_worker_is_replaced_and_the_other_workers_queries_all_finish(tmp_path, redis_server):
    tokens = 30
    # 9 s per query: on a busy machine too, none of the killed worker's queries is done before the kill
    with simulator(tmp_path, redis_server.url, FASTAPI_WORKERS=2, TOKEN_DELAY_MS=300) as sim:
        workers = wait_for(lambda: len(sim.workers()) == 2 and sim.workers(), "two workers")
        sids = [sim.create() for _ in range(40)]
        with subscribed(redis_server, patterns=["session:*:down"]) as ps:
            qids = set()
            for sid in sids:  # 40 queries of 30 tokens at 300 ms: 9 s each, spread over both workers
                r = sim.run(sid)
                assert r.status_code == 202, r.text
                qids.add(r.json()["query_id"])
            victim, survivor = workers
            streams: dict[str, list[dict]] = {}
            for _, m in collect(ps, 40, timeout=10):  # a real stream: kill once tokens are flowing
                streams.setdefault(m["query_id"], []).append(m)
            os.kill(victim.pid, signal.SIGKILL)

            def survivor_done():
                # its own counters, once it holds no query in flight (it answers some new connections;
                # the worker started in the killed one's place answers the others)
                with sim.fresh() as c:
                    st = c.get("/stats").json()
                return st if st["pid"] == survivor.pid and st["queries_in_flight"] == 0 else None

            st = wait_for(survivor_done, "the surviving worker finishing its queries", timeout=40)
            while (msg := ps.get_message(timeout=1.0)) is not None:  # what it published, to the last
                if msg["type"] == "pmessage":
                    m = orjson.loads(msg["data"])
                    streams.setdefault(m["query_id"], []).append(m)
        complete = {
            qid
            for qid, msgs in streams.items()
            if [m["seq"] for m in msgs] == list(range(tokens + 1)) and msgs[-1]["type"] == "done"
        }
        assert complete <= qids
        # every query the survivor accepted finished whole; only the killed worker's did not
        assert st["queries"] >= 1 and len(complete) == st["queries"], (len(complete), st)
        assert len(complete) < 40
        # a replacement worker serves, and a new /run streams whole
        new = wait_for(
            lambda: [w for w in sim.workers() if w.pid not in {victim.pid, survivor.pid}],
            "a new worker in the killed one's place",
        )
        assert len(sim.workers()) == 2 and sim.proc.alive()
        sid = sim.create()
        with subscribed(redis_server, channels=[f"session:{sid}:down"]) as ps:
            for _ in range(4):  # on new connections: the new worker takes some of them
                r = sim.run(sid, max_tokens=3, token_delay_ms=1)
                assert r.status_code == 202, r.text
            msgs = collect(ps, 4 * 4, timeout=10)
        assert sum(m["type"] == "done" for _, m in msgs) == 4
        # the sums read every worker, the dead one's counters once (as of its last write, up to a second
        # before the kill) and none of its gauges: the live workers' files settle within a second (each
        # writes its own once a second, so a file written before the 4 new queries still lacks them: wait for
        # them too), the dead one's queries in flight would stay in the sum for ever
        total = wait_for(
            lambda: (
                (t := sim.total())["workers"] == 2
                and t["queries_in_flight"] == 0
                and t["queries"] >= st["queries"] + 4
                and t
            ),
            "the sums over the two live workers, with the 4 new queries and no query in flight",
        )
        assert {victim.pid, survivor.pid, new[0].pid} <= set(total["pids"])
        assert st["queries"] + 4 <= total["queries"] <= 44 and total["queries_in_flight"] == 0
        assert "Traceback" not in sim.proc.log_path.read_text()


# -- the client's side of a cancel ----------------------------------------------------------------------


def test_the_client_counts_a_query_cancelled_by_close_as_cancelled_not_lost(stack_factory, tmp_path):
    import csv
    import json
    import subprocess
    import sys

    stack = stack_factory(sim_env={"TOKEN_DELAY_MS": 50})
    out = tmp_path / "run"
    argv = [
        sys.executable,
        "-m",
        "kit.client",
        "--api-url",
        stack.api_url,
        "--ws-url",
        stack.ws_url,
        "--output-dir",
        str(out),
        "--quiet",
        "--clients",
        "1",
        "--queries",
        "1",
        "--max-tokens",
        "400",
        "--no-preflight",
    ]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        r = redis.Redis(host=stack.redis.host, port=stack.redis.port, password=stack.redis.password)
        # the client's session, once its query has been accepted (20 s of tokens at 50 ms)
        key = wait_for(lambda: [k for k in r.scan_iter("session:*") if k.count(b":") == 1], "the client's session")[0]
        sid = key.decode().split(":", 1)[1]
        wait_for(lambda: httpx.get(f"{stack.api_url}/stats/all").json()["queries_in_flight"] == 1, "its query running")
        assert httpx.post(f"{stack.api_url}/session/{sid}/close").status_code == 200
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "Traceback" not in stderr, stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["query_statuses"] == {"cancelled": 1}
    assert summary["lost_tokens"] == 0
    with open(out / "queries.csv", newline="") as fh:
        (row,) = list(csv.DictReader(fh))
    assert row["status"] == "cancelled" and row["lost"] == "0" and int(row["tokens"]) < 400
    assert "cancelled by the simulator (session closed)" in row["error"]
    assert summary["errors"].get("query_cancelled_by_server") == 1


def test_a_replacement_worker_that_dies_at_once_is_a_crash_loop_and_the_simulator_exits_1(tmp_path, redis_server):
    with simulator(tmp_path, redis_server.url, FASTAPI_WORKERS=2) as sim:
        first, other = wait_for(lambda: len(sim.workers()) == 2 and sim.workers(), "two workers")
        os.kill(first.pid, signal.SIGKILL)  # a first death: replaced, the simulator goes on
        new = wait_for(
            lambda: [w for w in sim.workers() if w.pid not in {first.pid, other.pid}], "a worker in its place"
        )[0]
        assert sim.proc.alive()
        os.kill(new.pid, signal.SIGKILL)  # the replacement dies well within CRASH_LOOP_S: a crash loop
        assert sim.proc.popen.wait(timeout=KILL_AFTER_S + 5) == 1
        assert not psutil.pid_exists(other.pid) or psutil.Process(other.pid).status() == psutil.STATUS_ZOMBIE
        log = sim.proc.log_path.read_text()
        (line,) = [ln for ln in log.splitlines() if ln.startswith("kit.sim: ")]
        assert f"worker {new.pid}, started in a dead worker's place" in line and f"under {CRASH_LOOP_S} s" in line
        assert "Traceback" not in log


def test_workers_of_a_killed_supervisor_stop_and_free_the_port(tmp_path, redis_server):
    with simulator(tmp_path, redis_server.url, FASTAPI_WORKERS=2) as sim:
        workers = wait_for(lambda: len(sim.workers()) == 2 and sim.workers(), "two workers")
        sim.proc.kill()  # SIGKILL: no chance to stop its workers itself
        gone, alive = psutil.wait_procs(workers, timeout=KILL_AFTER_S + 5)
        assert not alive, alive
        with socket.socket() as s:  # nobody holds the port any more
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", sim.port))


def test_a_second_stop_signal_during_the_stop_still_ends_in_exit_0(tmp_path, redis_server):
    # supervisord or a user may repeat SIGTERM while the workers finish: obeyed once, never a death by signal
    with simulator(tmp_path, redis_server.url, FASTAPI_WORKERS=2) as sim:
        wait_for(lambda: len(sim.workers()) == 2, "two workers")
        sim.proc.popen.send_signal(signal.SIGTERM)
        wait_for(lambda: "SIGTERM: stopping 2 sim workers" in sim.proc.log_path.read_text(), "the stop begun")
        sim.proc.popen.send_signal(signal.SIGTERM)  # the workers take ~0.3 s to stop: this one comes meanwhile
        assert sim.proc.popen.wait(timeout=KILL_AFTER_S + 5) == 0
