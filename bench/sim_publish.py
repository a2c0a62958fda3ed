#!/usr/bin/env python3
"""How many tokens per second per core does the simulator publish?  Batched scheduler vs naive.

Starts a kit-owned redis-server and a real ``python -m kit.sim`` (1 Granian worker),
creates ``--sessions`` sessions and fires one run on each (``--tokens`` tokens, a
``TOKEN_DELAY_MS`` of 1 ms, so thousands of messages are due at once), with
``TTFT_MS`` long enough that every run is accepted before the first token is
due.  The sim's CPU time (psutil, Granian supervisor + worker) is sampled after the
last run was accepted and again once ``/stats`` says every message went out, so
the figure is publishing work only (plus ~50 /stats polls a second).  A
subscriber thread PSUBSCRIBEs ``session:*:down`` and counts what Redis delivered.

Side by side, in child processes with the same uvloop and redis.asyncio+hiredis,
two naive publishers build the same messages:
  * ``naive loop``: one awaited ``PUBLISH`` per token in a tight loop;
  * ``naive tasks``: one task per query sleeping TOKEN_DELAY_MS between awaited
    ``PUBLISH``es (the seed's design), over a 64-connection pool.

    .venv/bin/python bench/sim_publish.py [--sessions 1000] [--tokens 100] [--baseline-tokens 30000]

tokens/s per core = tokens published / CPU seconds of the publishing process.

Measured 2026-11-28 on the 2-core machine with other jobs running (load average ~5),
default options, two consecutive runs:

    publisher                        tokens     recv  wall s   CPU s tokens/s/core  tokens/s redis CPU s
    kit.sim (batched)                100000   101000    1.81    0.98       102,041    55,362        0.09
    naive loop (1 PUBLISH/await)      30000    30000    4.95    1.75        17,170     6,055        0.63
    naive tasks (sleep+PUBLISH)       30000    30000    3.65    2.48        12,105     8,212        0.43

    kit.sim (batched)                100000   101000    1.14    0.88       113,636    87,372        0.10
    naive loop (1 PUBLISH/await)      30000    30000    7.42    2.46        12,178     4,043        1.11
    naive tasks (sleep+PUBLISH)       30000    30000    4.72    2.54        11,803     6,360        0.44

The batched scheduler publishes 100-115k tokens/s per core (target >= 50k), 6-9x the
naive loop, and costs Redis a sixth of the CPU per message (one write per batch).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
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

from kit.localstack import RedisServer, start_redis, start_sim  # noqa: E402

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


def bench_sim(server: RedisServer, workdir: Path, args) -> dict:
    words = " ".join(f"tok{i}" for i in range(args.tokens))
    secret = secrets.token_urlsafe(48)
    proc, port = start_sim(workdir, redis_url=server.url, jwt_secret=secret, TOKEN_DELAY_MS=args.delay_ms,
                           TTFT_MS=args.ttft_ms, LLM_RESPONSE_TEXT=words, LOG_LEVEL="WARNING")
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
            sids = list(pool.map(lambda _: client().post("/session/create").json()["session_id"],
                                 range(args.sessions)))
            first_submit = time.monotonic()
            codes = list(pool.map(lambda s: client().post(f"/session/{s}/run", json={"query": "q"}).status_code,
                                  sids))
        accepted = time.monotonic()
        assert codes == [202] * len(sids), f"runs refused: {set(codes)}"
        http = httpx.Client(base_url=base, timeout=30)
        stats0 = http.get("/stats").json()
        cpu0, rcpu0 = cpu_seconds(sim_procs), cpu_seconds([redis_proc])
        if stats0["tokens_published"]:
            print(f"warning: publishing began before all runs were accepted ({accepted - first_submit:.2f}s); "
                  "raise --ttft-ms", file=sys.stderr)
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
        return {"name": "kit.sim (batched)", "tokens": tokens, "messages": done, "received": counter.count,
                "wall": finished - (started or finished), "cpu": cpu1 - cpu0, "redis_cpu": rcpu1 - rcpu0,
                "max_batch": s["publish_max_batch"], "batches": s["publish_batches"] - stats0["publish_batches"],
                "dropped": s["messages_dropped"]}
    finally:
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
            await r.publish(channels[i % sessions], token_message(qid, i // sessions, time.time_ns(),
                                                                  texts[i // sessions]))
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
    argv = [sys.executable, __file__, "--naive-worker", mode, "--baseline-tokens", str(args.baseline_tokens),
            "--sessions", str(sessions), "--delay-ms", str(args.delay_ms)]
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
    return {"name": label, "tokens": res["tokens"], "messages": res["tokens"], "received": counter.count,
            "wall": res["wall"], "cpu": res["cpu"], "redis_cpu": cpu_seconds([redis_proc]) - rcpu0,
            "max_batch": 1, "batches": res["tokens"], "dropped": 0}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=1000)
    ap.add_argument("--tokens", type=int, default=100, help="tokens per query")
    ap.add_argument("--delay-ms", type=float, default=1.0, help="TOKEN_DELAY_MS")
    ap.add_argument("--ttft-ms", type=float, default=6000.0, help="TTFT_MS: time to accept every run first")
    ap.add_argument("--baseline-tokens", type=int, default=30000)
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--naive-worker", choices=["loop", "tasks"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.naive_worker:
        import uvloop

        res = uvloop.run(_naive(args.naive_worker, os.environ["BENCH_REDIS_URL"], args.baseline_tokens,
                                args.sessions, args.delay_ms))
        print(json.dumps(res))
        return 0
    if not (1 <= args.sessions <= 20000 and 1 <= args.tokens <= 10000 and 1 <= args.baseline_tokens <= 10**6):
        ap.error("--sessions 1..20000, --tokens 1..10000, --baseline-tokens 1..1e6")

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-sim-publish-") as tmp:
        server = start_redis(Path(tmp) / "redis")
        try:
            rows.append(bench_sim(server, Path(tmp), args))
            if not args.no_baseline:
                rows.append(bench_naive("loop", server, args))
                rows.append(bench_naive("tasks", server, args))
        finally:
            server.proc.stop()

    print(f"\n{args.sessions} sessions x {args.tokens} tokens (TOKEN_DELAY_MS={args.delay_ms:g}); "
          f"naive baselines: {args.baseline_tokens} tokens; {os.cpu_count()} cores")
    print(f"{'publisher':30s} {'tokens':>8s} {'recv':>8s} {'wall s':>7s} {'CPU s':>7s} {'tokens/s/core':>13s} "
          f"{'tokens/s':>9s} {'redis CPU s':>11s} {'max batch':>9s}")
    for r in rows:
        per_core = r["tokens"] / r["cpu"] if r["cpu"] > 0 else float("nan")
        wall_rate = r["tokens"] / r["wall"] if r["wall"] > 0 else float("nan")
        print(f"{r['name']:30s} {r['tokens']:8d} {r['received']:8d} {r['wall']:7.2f} {r['cpu']:7.2f} "
              f"{per_core:13,.0f} {wall_rate:9,.0f} {r['redis_cpu']:11.2f} {r['max_batch']:9d}")
    sim = rows[0]
    if sim["dropped"] or sim["received"] < sim["messages"]:
        print(f"note: kit.sim dropped {sim['dropped']}, subscriber saw {sim['received']} of {sim['messages']}")
    if len(rows) > 1 and rows[1]["cpu"] > 0:
        print(f"batched / naive loop, per core: "
              f"{(sim['tokens'] / sim['cpu']) / (rows[1]['tokens'] / rows[1]['cpu']):.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
