#!/usr/bin/env python3
"""What the simulator costs per published token: a publishing micro-benchmark and a realistic run.

Both against a kit-owned redis-server and a real ``python -m kit.sim`` under Granian,
each for every ``--ticks`` value of PUBLISH_TICK_MS (default ``0,5``: the old exact
wake-up per due time, and the default tick), printed side by side in one run.

**micro** (publishing only): creates ``--sessions`` sessions and fires one run on each
(``--tokens`` tokens, a ``TOKEN_DELAY_MS`` of 1 ms, so thousands of messages are due at
once), with ``TTFT_MS`` long enough that every run is accepted before the first token is
due.  The sim's CPU time (psutil, Granian supervisor + worker) is sampled after the
last run was accepted and again once ``/stats`` says every message went out (plus ~50
/stats polls a second).  Side by side, in child processes with the same uvloop and
redis.asyncio+hiredis, two naive publishers build the same messages:
  * ``naive loop``: one awaited ``PUBLISH`` per token in a tight loop;
  * ``naive tasks``: one task per query sleeping TOKEN_DELAY_MS between awaited
    ``PUBLISH``es (the seed's design), over a 64-connection pool.

**realistic** (everything the sim does in a run): ``--real-sessions`` sessions (500
and 1,000) start evenly over ``--ramp-s``; each does ``POST /session/create``, three
times ``POST /session/{id}/run`` (43 tokens 50 ms apart, the next run after the last
token is due) and ``POST /session/{id}/close``, over ``--conns`` shared keep-alive
connections (HAProxy reuses its backend connections in a real run).  The driver is a
raw asyncio HTTP/1.1 client so that it costs far less than the sim on the same cores.
A plain subscriber (PSUBSCRIBE ``session:*:down`` on a raw socket, hiredis) drains
Redis.  The sim's CPU is utime + stime from ``/proc/<pid>/stat`` of the Granian main
process and its worker children, from before the first create to when every query's
last message went out; tokens published come from ``GET /stats``, which counts per
worker: each worker answers with its own counters, so the script asks on fresh
connections until every worker pid (the main process's children) has answered and
sums the latest answer of each.  "us/token all-in" = that CPU / tokens published:
HTTP handling and publishing together.

    .venv/bin/python bench/sim_publish.py [--ticks 0,5] [--real-sessions 500,1000] [--workers 1]
        [--py-spy PREFIX]   # also a raw py-spy profile of the worker during each realistic run
                            # (PYSPY_NATIVE=1: with native frames, py-spy then pauses the worker per sample)

Measured 2026-11-30 on the 2-core machine shared with other jobs (load average
0.8-2.1), default options, two consecutive runs of ``.venv/bin/python bench/sim_publish.py``:

    publisher                        tokens     recv  wall s   CPU s tokens/s/core us/token  tokens/s redis CPU s max batch
    kit.sim (batched) tick 0 ms      100000   101000    0.71    0.75       133,333      7.5   141,611        0.17       376
    kit.sim (batched) tick 5 ms      100000   101000    0.59    0.50       200,000      5.0   170,826        0.10      1448
    naive loop (1 PUBLISH/await)      30000    30000    3.56    2.55        11,759     85.0     8,429        0.68         1
    naive tasks (sleep+PUBLISH)       30000    30000    2.23    2.08        14,400     69.4    13,451        0.23         1

    run                      tick ms   tokens     recv  wall s sim CPU s us/token all-in batches/s max lag ms redis CPU s
    realistic 500 sessions         0    64500    66000    9.46      3.29            51.0      1738        3.0        0.65
    realistic 500 sessions         5    64500    66000    9.46      2.46            38.1       204        7.7        0.26
    realistic 1000 sessions        0   129000   132000    9.46      5.45            42.2      2902       11.4        0.98
    realistic 1000 sessions        5   129000   132000    9.46      4.06            31.5       209        9.3        0.39

    kit.sim (batched) tick 0 ms      100000   101000    0.99    0.80       125,000      8.0   101,186        0.24       308
    kit.sim (batched) tick 5 ms      100000   101000    0.73    0.48       208,333      4.8   137,016        0.10      1238
    naive loop (1 PUBLISH/await)      30000    30000    3.09    2.37        12,681     78.9     9,698        0.53         1
    naive tasks (sleep+PUBLISH)       30000    30000    2.43    2.26        13,294     75.2    12,362        0.27         1

    realistic 500 sessions         0    64500    66000    9.45      2.63            40.8      1503        5.5        0.41
    realistic 500 sessions         5    64500    66000    9.46      2.00            31.0       202        8.0        0.23
    realistic 1000 sessions        0   129000   132000    9.46      4.94            38.3      2556       11.1        0.82
    realistic 1000 sessions        5   129000   132000    9.46      3.60            27.9       206        9.2        0.36

(every realistic run: 201 x sessions, 202 x 3 x sessions, 200 x sessions, no errors.)
The same realistic runs against the simulator as it was before this change set
(commit 0394a27: no tick, the publisher borrowing pool connections and reading each
reply under its own timer, Quart's stock request path; this script copied in), twice,
minutes apart: 500 sessions 52.6 us/token, 1,000 sessions 50.7 (then with a
connection per session) and 39.3 us/token.

Reading: the machine's noise is +-20% from run to run, so compare within one run.  A
5 ms tick cuts the publisher's wake-ups from 1,500-2,900/s to ~200/s, Redis's CPU
per message by half, and the all-in cost by about a quarter (1,000 sessions:
38-42 -> 28-32 us/token; 500: 41-51 -> 31-38).  Publishing alone is 4-8 us/token
(micro; and ~6 with the same pacing and no HTTP), so at the default tick most of the
all-in figure is request handling: one request per ~26 tokens at ~300-400 us of CPU
each (Granian's glue and loop I/O, Quart ~70 us, redis-py ~45 us a command, PyJWT
~20 us a token).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import hiredis  # noqa: E402
import httpx  # noqa: E402
import psutil  # noqa: E402

from devkit.localstack import RedisServer, start_redis, start_sim  # noqa: E402

POLL_S = 0.02


# -- the subscriber: a raw hiredis reader counting pmessages ------------------------------------


class Counter(threading.Thread):
    def __init__(self, server: RedisServer) -> None:
        super().__init__(daemon=True)
        self.sock = socket.create_connection((server.host, server.port), timeout=10)
        self.sock.sendall(f"AUTH {server.password}\r\nPSUBSCRIBE session:*:down\r\n".encode())
        self.reader = hiredis.Reader()
        self.count = 0
        self.stop = threading.Event()
        replies = []
        while len(replies) < 2:  # +OK, then the psubscribe confirmation
            self.reader.feed(self.sock.recv(65536))
            while (r := self.reader.gets()) is not False:
                replies.append(r)
        self.sock.settimeout(0.2)

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                data = self.sock.recv(1 << 20)
            except TimeoutError:
                continue
            if not data:
                return
            self.reader.feed(data)
            while self.reader.gets() is not False:
                self.count += 1

    def close(self) -> None:
        self.stop.set()
        self.join(5)
        self.sock.close()


# -- the real simulator ------------------------------------------------------------------------


def cpu_seconds(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        t = p.cpu_times()
        total += t.user + t.system
    return total


def bench_sim(server: RedisServer, workdir: Path, args, tick_ms: float) -> dict:
    words = " ".join(f"tok{i}" for i in range(args.tokens))
    secret = secrets.token_urlsafe(48)
    proc, port = start_sim(
        workdir,
        redis_url=server.url,
        jwt_secret=secret,
        TOKEN_DELAY_MS=args.delay_ms,
        TTFT_MS=args.ttft_ms,
        LLM_RESPONSE_TEXT=words,
        PUBLISH_TICK_MS=tick_ms,
        LOG_LEVEL="WARNING",
    )
    counter = Counter(server)
    counter.start()
    try:
        sim_procs = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        redis_proc = psutil.Process(server.proc.pid)
        base = f"http://127.0.0.1:{port}"
        local = threading.local()

        def client() -> httpx.Client:
            if not hasattr(local, "c"):
                local.c = httpx.Client(base_url=base, timeout=30)
            return local.c

        with ThreadPoolExecutor(16) as pool:
            sids = list(pool.map(lambda _: client().post("/session/create").json()["session_id"], range(args.sessions)))
            first_submit = time.monotonic()
            codes = list(pool.map(lambda s: client().post(f"/session/{s}/run", json={"query": "q"}).status_code, sids))
        accepted = time.monotonic()
        assert codes == [202] * len(sids), f"runs refused: {set(codes)}"
        http = httpx.Client(base_url=base, timeout=30)
        stats0 = http.get("/stats").json()
        cpu0, rcpu0 = cpu_seconds(sim_procs), cpu_seconds([redis_proc])
        if stats0["tokens_published"]:
            print(
                f"warning: publishing began before all runs were accepted ({accepted - first_submit:.2f}s); "
                "raise --ttft-ms",
                file=sys.stderr,
            )
        expected = args.sessions * (args.tokens + 1)
        deadline = time.monotonic() + args.ttft_ms / 1000 + 120
        started = None
        while True:
            s = http.get("/stats").json()
            done = s["tokens_published"] + s["done_published"] - stats0["tokens_published"] - stats0["done_published"]
            if started is None and done > 0:
                started = time.monotonic()
            if done + s["messages_dropped"] >= expected or time.monotonic() > deadline:
                break
            time.sleep(POLL_S)  # poll interval of a progress check, bounded by the deadline
        finished = time.monotonic()
        cpu1, rcpu1 = cpu_seconds(sim_procs), cpu_seconds([redis_proc])
        http.close()
        deadline = time.monotonic() + 10
        while counter.count < expected and time.monotonic() < deadline:
            time.sleep(POLL_S)
        tokens = s["tokens_published"] - stats0["tokens_published"]
        return {
            "name": f"kit.sim (batched) tick {tick_ms:g} ms",
            "tokens": tokens,
            "messages": done,
            "received": counter.count,
            "wall": finished - (started or finished),
            "cpu": cpu1 - cpu0,
            "redis_cpu": rcpu1 - rcpu0,
            "max_batch": s["publish_max_batch"],
            "batches": s["publish_batches"] - stats0["publish_batches"],
            "dropped": s["messages_dropped"],
        }
    finally:
        counter.close()
        proc.stop()


# -- the realistic run: HTTP per query, tokens 50 ms apart, CPU per published token all-in -------


def proc_cpu_seconds(pids: list[int]) -> float:
    """utime + stime of *pids* from /proc/<pid>/stat (fields 14 and 15, in clock ticks)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rpartition(b")")[2].split()
        total += int(fields[11]) + int(fields[12])  # fields 14, 15 counted from the pid
    return total / tick


def stats_per_worker(host: str, port: int, workers: set[int], tries: int = 200) -> dict[int, dict]:
    """Every worker's own /stats: each worker counts only what it published, and a request lands
    on whichever worker accepts it, so ask on fresh connections until every worker pid answered."""
    import http.client

    seen: dict[int, dict] = {}
    for _ in range(tries):
        conn = http.client.HTTPConnection(host, port, timeout=10)
        try:
            conn.request("GET", "/stats", headers={"Connection": "close"})
            s = json.loads(conn.getresponse().read())
        finally:
            conn.close()
        seen[s["pid"]] = s
        if workers <= set(seen):
            return seen
    raise RuntimeError(f"/stats answered only from workers {sorted(seen)} of {sorted(workers)}")


class RawHttp:
    """One keep-alive HTTP/1.1 connection, raw: the driver must cost far less than the sim (also
    bench/sim_requests.py's)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def post(self, path: str, body: bytes = b"") -> tuple[int, bytes]:
        self.writer.write(
            b"POST %s HTTP/1.1\r\nHost: sim\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (path.encode(), len(body), body)
        )
        return await self._answer()

    async def get(self, path: str) -> tuple[int, bytes]:
        self.writer.write(b"GET %s HTTP/1.1\r\nHost: sim\r\n\r\n" % path.encode())
        return await self._answer()

    async def _answer(self) -> tuple[int, bytes]:
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        return status, await self.reader.readexactly(length)


async def _drive(port: int, sessions: int, queries: int, ramp_s: float, delay_ms: float, conns: int) -> dict:
    """Each session: create, ``queries`` x (run, wait for its tokens to be due), close; sessions
    start evenly over ``ramp_s``.  Requests share ``conns`` keep-alive connections, as HAProxy's
    reused backend connections carry them in a real run (0: one connection per session).
    Returns counts of answers by status."""
    statuses: dict[int, int] = {}
    t0 = time.monotonic()
    idle: asyncio.Queue[RawHttp] = asyncio.Queue()
    for _ in range(conns):
        idle.put_nowait(RawHttp(*await asyncio.open_connection("127.0.0.1", port)))

    async def post(own: RawHttp | None, path: str, body: bytes = b"") -> tuple[int, bytes]:
        http = own or await idle.get()
        try:
            status, data = await http.post(path, body)
        finally:
            if own is None:
                idle.put_nowait(http)
        statuses[status] = statuses.get(status, 0) + 1
        return status, data

    async def session(i: int) -> None:
        await asyncio.sleep(max(0.0, t0 + i * ramp_s / sessions - time.monotonic()))
        own = None if conns else RawHttp(*await asyncio.open_connection("127.0.0.1", port))
        try:
            status, body = await post(own, "/session/create")
            if status != 201:
                return
            sid = json.loads(body)["session_id"]
            for _ in range(queries):
                status, body = await post(own, f"/session/{sid}/run", b'{"query":"q"}')
                if status != 202:
                    return
                # the client reads the answer: the next query follows its last token
                await asyncio.sleep(json.loads(body)["tokens"] * delay_ms / 1000.0)
            await post(own, f"/session/{sid}/close")
        finally:
            if own is not None:
                own.writer.close()

    await asyncio.gather(*(session(i) for i in range(sessions)))
    while not idle.empty():
        idle.get_nowait().writer.close()
    return statuses


def bench_realistic(server: RedisServer, workdir: Path, args, sessions: int, tick_ms: float) -> dict:
    secret = secrets.token_urlsafe(48)
    proc, port = start_sim(
        workdir,
        redis_url=server.url,
        jwt_secret=secret,
        TOKEN_DELAY_MS=args.real_delay_ms,
        PUBLISH_TICK_MS=tick_ms,
        FASTAPI_WORKERS=args.workers,
        LOG_LEVEL="WARNING",
    )
    counter = Counter(server)
    counter.start()
    spy = None
    try:
        workers = {p.pid for p in psutil.Process(proc.pid).children(recursive=True)}
        pids = [proc.pid, *workers]
        before = stats_per_worker("127.0.0.1", port, workers)
        if args.py_spy:
            spy = subprocess.Popen(
                [
                    str(Path(sys.executable).parent / "py-spy"),
                    "record",
                    "--format",
                    "raw",
                    *(["--native"] if os.environ.get("PYSPY_NATIVE") else ["--nonblocking"]),
                    "-r",
                    "200",
                    "-o",
                    f"{args.py_spy}-tick{tick_ms:g}-{sessions}.txt",
                    "--pid",
                    str(min(workers)),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        cpu0, rcpu0, wall0 = proc_cpu_seconds(pids), proc_cpu_seconds([server.proc.pid]), time.monotonic()
        statuses = asyncio.run(_drive(port, sessions, args.real_queries, args.ramp_s, args.real_delay_ms, args.conns))
        # the last close can precede its query's last token by the scheduler's lag: wait for the counters
        deadline = time.monotonic() + 10
        while True:
            after = stats_per_worker("127.0.0.1", port, workers)
            if sum(s["queries_in_flight"] for s in after.values()) == 0 or time.monotonic() > deadline:
                break
            time.sleep(POLL_S)  # poll interval of a progress check, bounded by the deadline
        cpu1, rcpu1, wall1 = proc_cpu_seconds(pids), proc_cpu_seconds([server.proc.pid]), time.monotonic()
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(30)

        def total(key: str, snap: dict[int, dict]) -> float:
            return sum(s[key] for s in snap.values())

        tokens = total("tokens_published", after) - total("tokens_published", before)
        batches = total("publish_batches", after) - total("publish_batches", before)
        return {
            "name": f"realistic {sessions} sessions",
            "tick": tick_ms,
            "tokens": int(tokens),
            "received": counter.count,
            "wall": wall1 - wall0,
            "cpu": cpu1 - cpu0,
            "redis_cpu": rcpu1 - rcpu0,
            "batches": int(batches),
            "statuses": statuses,
            "max_lag_ms": max(s["publish_max_lag_ms"] for s in after.values()),
            "dropped": int(total("messages_dropped", after)),
        }
    finally:
        if spy is not None and spy.poll() is None:
            spy.kill()
            spy.wait()
        counter.close()
        proc.stop()


# -- naive baselines, each in its own process --------------------------------------------------


async def _naive(mode: str, url: str, total: int, sessions: int, delay_ms: float) -> dict:
    import redis.asyncio as aioredis

    from kit.sim._schedule import encode_tokens, token_message

    pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=64)
    r = aioredis.Redis(connection_pool=pool)
    await r.ping()
    per_query = max(1, total // sessions)
    texts = encode_tokens([f"tok{i}" for i in range(per_query)])
    channels = [f"session:naive{i}:down".encode() for i in range(sessions)]
    qid = b"0" * 32
    t0, w0 = time.process_time(), time.monotonic()
    if mode == "loop":
        for i in range(per_query * sessions):
            await r.publish(
                channels[i % sessions], token_message(qid, i // sessions, time.time_ns(), texts[i // sessions])
            )
    else:

        async def one(ch: bytes) -> None:
            for seq in range(per_query):
                await asyncio.sleep(delay_ms / 1000)
                await r.publish(ch, token_message(qid, seq, time.time_ns(), texts[seq]))

        await asyncio.gather(*(one(ch) for ch in channels))
    cpu, wall = time.process_time() - t0, time.monotonic() - w0
    await r.aclose()
    await pool.aclose()
    return {"tokens": per_query * sessions, "cpu": cpu, "wall": wall}


def bench_naive(mode: str, server: RedisServer, args) -> dict:
    sessions = min(args.sessions, args.baseline_tokens)
    env = dict(os.environ, PYTHONPATH=str(ROOT), BENCH_REDIS_URL=server.url)
    argv = [
        sys.executable,
        __file__,
        "--naive-worker",
        mode,
        "--baseline-tokens",
        str(args.baseline_tokens),
        "--sessions",
        str(sessions),
        "--delay-ms",
        str(args.delay_ms),
    ]
    counter = Counter(server)
    counter.start()
    redis_proc = psutil.Process(server.proc.pid)
    rcpu0 = cpu_seconds([redis_proc])
    try:
        out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600, check=True).stdout
        res = json.loads(out.strip().splitlines()[-1])
        deadline = time.monotonic() + 10
        while counter.count < res["tokens"] and time.monotonic() < deadline:
            time.sleep(POLL_S)
    finally:
        counter.close()
    label = {"loop": "naive loop (1 PUBLISH/await)", "tasks": "naive tasks (sleep+PUBLISH)"}[mode]
    return {
        "name": label,
        "tokens": res["tokens"],
        "messages": res["tokens"],
        "received": counter.count,
        "wall": res["wall"],
        "cpu": res["cpu"],
        "redis_cpu": cpu_seconds([redis_proc]) - rcpu0,
        "max_batch": 1,
        "batches": res["tokens"],
        "dropped": 0,
    }


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=1000, help="micro: sessions, one run each")
    ap.add_argument("--tokens", type=int, default=100, help="micro: tokens per query")
    ap.add_argument("--delay-ms", type=float, default=1.0, help="micro: TOKEN_DELAY_MS")
    ap.add_argument("--ttft-ms", type=float, default=6000.0, help="micro: TTFT_MS, time to accept every run first")
    ap.add_argument("--ticks", default="0,5", help="PUBLISH_TICK_MS values to compare (0 = a wake-up per due time)")
    ap.add_argument("--real-sessions", default="500,1000", help="realistic: session counts, comma-separated")
    ap.add_argument("--real-queries", type=int, default=3, help="realistic: queries per session")
    ap.add_argument("--real-delay-ms", type=float, default=50.0, help="realistic: TOKEN_DELAY_MS")
    ap.add_argument("--ramp-s", type=float, default=3.0, help="realistic: sessions start evenly over this")
    ap.add_argument("--workers", type=int, default=1, help="realistic: FASTAPI_WORKERS")
    ap.add_argument(
        "--conns",
        type=int,
        default=64,
        help="realistic: keep-alive connections the sessions share (0: one per session)",
    )
    ap.add_argument("--py-spy", metavar="PREFIX", help="realistic: py-spy raw profile of a worker to PREFIX-*.txt")
    ap.add_argument("--no-micro", action="store_true")
    ap.add_argument("--baseline-tokens", type=int, default=30000)
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--naive-worker", choices=["loop", "tasks"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.naive_worker:
        import uvloop

        res = uvloop.run(
            _naive(args.naive_worker, os.environ["BENCH_REDIS_URL"], args.baseline_tokens, args.sessions, args.delay_ms)
        )
        print(json.dumps(res))
        return 0
    if not (1 <= args.sessions <= 20000 and 1 <= args.tokens <= 10000 and 1 <= args.baseline_tokens <= 10**6):
        ap.error("--sessions 1..20000, --tokens 1..10000, --baseline-tokens 1..1e6")
    ticks = _floats(args.ticks)
    real_sessions = [int(x) for x in _floats(args.real_sessions)]

    rows, real = [], []
    with tempfile.TemporaryDirectory(prefix="bench-sim-publish-") as tmp:
        server = start_redis(Path(tmp) / "redis")
        try:
            if not args.no_micro:
                for tick in ticks:
                    rows.append(bench_sim(server, Path(tmp), args, tick))
            if not args.no_baseline:
                rows.append(bench_naive("loop", server, args))
                rows.append(bench_naive("tasks", server, args))
            for n in real_sessions:
                for tick in ticks:
                    real.append(bench_realistic(server, Path(tmp), args, n, tick))
        finally:
            server.proc.stop()

    if rows:
        print(
            f"\nmicro: {args.sessions} sessions x {args.tokens} tokens all due at once "
            f"(TOKEN_DELAY_MS={args.delay_ms:g}); naive baselines: {args.baseline_tokens} tokens; "
            f"{os.cpu_count()} cores"
        )
        print(
            f"{'publisher':30s} {'tokens':>8s} {'recv':>8s} {'wall s':>7s} {'CPU s':>7s} {'tokens/s/core':>13s} "
            f"{'us/token':>8s} {'tokens/s':>9s} {'redis CPU s':>11s} {'max batch':>9s}"
        )
        for r in rows:
            per_core = r["tokens"] / r["cpu"] if r["cpu"] > 0 else float("nan")
            wall_rate = r["tokens"] / r["wall"] if r["wall"] > 0 else float("nan")
            print(
                f"{r['name']:30s} {r['tokens']:8d} {r['received']:8d} {r['wall']:7.2f} {r['cpu']:7.2f} "
                f"{per_core:13,.0f} {1e6 / per_core:8.1f} {wall_rate:9,.0f} {r['redis_cpu']:11.2f} "
                f"{r['max_batch']:9d}"
            )
            if r["name"].startswith("kit.sim") and (r["dropped"] or r["received"] < r["messages"]):
                print(f"  note: dropped {r['dropped']}, subscriber saw {r['received']} of {r['messages']}")
    if real:
        print(
            f"\nrealistic: sessions started over {args.ramp_s:g} s, each create + {args.real_queries} x run "
            f"(43 tokens, TOKEN_DELAY_MS={args.real_delay_ms:g}, next run after the last token) + close, "
            f"{args.workers} worker(s), {args.conns or 'one per session'} keep-alive connections; "
            "CPU = Granian main + workers from /proc, all-in (HTTP + publishing)"
        )
        print(
            f"{'run':24s} {'tick ms':>7s} {'tokens':>8s} {'recv':>8s} {'wall s':>7s} {'sim CPU s':>9s} "
            f"{'us/token all-in':>15s} {'batches/s':>9s} {'max lag ms':>10s} {'redis CPU s':>11s}  statuses"
        )
        for r in real:
            us = r["cpu"] / r["tokens"] * 1e6 if r["tokens"] else float("nan")
            print(
                f"{r['name']:24s} {r['tick']:7g} {r['tokens']:8d} {r['received']:8d} {r['wall']:7.2f} "
                f"{r['cpu']:9.2f} {us:15.1f} {r['batches'] / r['wall']:9.0f} {r['max_lag_ms']:10.1f} "
                f"{r['redis_cpu']:11.2f}  {r['statuses']}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
