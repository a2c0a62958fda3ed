#!/usr/bin/env python3
"""The simulator's CPU per request, route by route, at a real run's sparse pace; checkouts side by side.

    .venv/bin/python bench/sim_requests.py [--rate 500] [--requests 3000] [--rounds 2] [--health]
                                           [--checkout PATH ...] [--connections 64]

Why: a real run sends the simulator one request per ~26 tokens, a few hundred a second, each arriving
alone; what a request costs then is not what a saturating load generator (wrk, ``bench/granian_interfaces.py``)
shows, where one wake-up serves many.  Measured here at the pace a run has: for each route, ``--requests``
requests spread evenly at ``--rate`` per second over ``--connections`` keep-alive connections (as
HAProxy's reused backend connections carry them): ``POST /session/create``; ``POST /session/{id}/run``
with ``max_tokens`` 1 (one token and its done published: the request, not the stream); ``POST
/session/{id}/close`` of each session made; with ``--health`` first a bare ``GET /health`` (through
Quart, no I/O: the floor of a request).  The simulator's CPU (its main process and worker, from /proc)
over each route's requests is divided by their count; each round also prints every thread's share of
the simulator's CPU (/proc/PID/task: the event loop's thread, Granian's tokio thread...).

``--checkout`` (repeatable; default: this checkout) runs ``python -m kit.sim`` from each given
checkout (another worktree, e.g. ``git worktree add /tmp/base HEAD~1``), each against its own
kit-owned redis-server, interleaved round by round so the machine's noise hits them alike; the table
gives each route's median over the rounds.  Everything is on 127.0.0.1 with free ports; every process
is stopped by its PID.  Results: docs/benchmarks.md, "sim_requests".
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402

from bench.sim_publish import RawHttp  # noqa: E402
from devkit.localstack import LOOPBACK, free_port, start_redis, wait_http_ok  # noqa: E402

ROUTES = ("create", "run", "close")
#: measured too with --health: a bare GET /health (through Quart, no I/O), the floor of a request
HEALTH = "health"
#: a bound on each route's requests: the whole round is abandoned past it
DEADLINE_S = 120.0


async def _paced(port: int, route: str, sessions: list[str], args) -> list[str]:
    """*args.requests* requests of *route*, evenly at *args.rate*/s; returns the session ids made (create)."""
    idle: asyncio.Queue[RawHttp] = asyncio.Queue()
    for _ in range(args.connections):
        idle.put_nowait(RawHttp(*await asyncio.open_connection(LOOPBACK, port)))
    made: list[str] = []
    t0 = time.monotonic()

    async def one(i: int) -> None:
        await asyncio.sleep(max(0.0, t0 + i / args.rate - time.monotonic()))
        http = await idle.get()
        try:
            if route == HEALTH:
                status, body = await http.get("/health")
                want = 200
            elif route == "create":
                status, body = await http.post("/session/create")
                made.append(json.loads(body)["session_id"])
                want = 201
            elif route == "run":
                status, body = await http.post(f"/session/{sessions[i % len(sessions)]}/run", _RUN_BODY)
                want = 202
            else:
                status, body = await http.post(f"/session/{sessions[i]}/close")
                want = 200
            if status != want:
                raise RuntimeError(f"{route}: HTTP {status} {body[:200]!r}")
        finally:
            idle.put_nowait(http)

    try:
        async with asyncio.timeout(DEADLINE_S):
            await asyncio.gather(*(one(i) for i in range(args.requests)))
    finally:
        while not idle.empty():
            idle.get_nowait().writer.close()
    return made


_RUN_BODY = b'{"query": "q", "max_tokens": 1}'


def _cpu_s(procs: list[psutil.Process]) -> float:
    return sum(sum(p.cpu_times()[:2]) for p in procs)


def _thread_cpu(procs: list[psutil.Process]) -> dict[str, float]:
    """CPU seconds per thread of *procs*, keyed ``<pid>/<tid> <name>`` (names from /proc/PID/task)."""
    out = {}
    for p in procs:
        for t in p.threads():
            try:
                name = Path(f"/proc/{p.pid}/task/{t.id}/comm").read_text().strip()
            except OSError:
                continue
            out[f"{p.pid}/{t.id} {name}"] = t.user_time + t.system_time
    return out


def one_round(checkout: Path, workdir: Path, args) -> dict[str, float]:
    """Start Redis and the simulator from *checkout*, time each route, stop both; us of CPU per request."""
    redis = start_redis(workdir / "redis")
    port = free_port()
    env = dict(
        os.environ,
        PYTHONPATH=str(checkout),
        REDIS_URL=redis.url,
        JWT_SECRET=secrets.token_urlsafe(48),
        FASTAPI_HOST=LOOPBACK,
        FASTAPI_PORT=str(port),
        LOG_LEVEL="WARNING",
        SIM_MAX_QUERIES_PER_SESSION=str(args.requests),
    )
    log = open(workdir / "sim.log", "ab")
    sim = subprocess.Popen(
        [sys.executable, "-m", "kit.sim"], cwd=checkout, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        wait_http_ok(LOOPBACK, port)
        procs = [psutil.Process(sim.pid), *psutil.Process(sim.pid).children(recursive=True)]
        out: dict[str, float] = {}
        sessions: list[str] = []
        threads0 = _thread_cpu(procs)
        for route in ([HEALTH] if args.health else []) + list(ROUTES):
            cpu0 = _cpu_s(procs)
            made = asyncio.run(_paced(port, route, sessions, args))
            out[route] = (_cpu_s(procs) - cpu0) * 1e6 / args.requests
            sessions = made or sessions
        threads = {k: v - threads0.get(k, 0.0) for k, v in _thread_cpu(procs).items()}
        total = sum(threads.values()) or 1.0
        busy = sorted(((v / total, k) for k, v in threads.items() if v / total >= 0.01), reverse=True)
        print("  threads' shares of the CPU: " + ", ".join(f"{k} {share:.0%}" for share, k in busy), flush=True)
        return out
    finally:
        sim.terminate()
        try:
            sim.wait(timeout=15)
        except subprocess.TimeoutExpired:
            sim.kill()
            sim.wait()
        log.close()
        redis.proc.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=500.0, help="requests per second (default 500)")
    ap.add_argument("--requests", type=int, default=3000, help="requests per route and round (default 3000)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--health", action="store_true", help="also time a bare GET /health (the floor of a request)")
    ap.add_argument("--checkout", action="append", type=Path, help="a checkout to run kit.sim from (repeatable)")
    args = ap.parse_args()
    checkouts = [c.resolve() for c in (args.checkout or [ROOT])]
    for c in checkouts:
        if not (c / "kit" / "sim" / "__main__.py").is_file():
            print(f"--checkout {c}: no kit/sim there; give the root of a wsproxy-loadkit checkout", file=sys.stderr)
            return 2
    routes = ([HEALTH] if args.health else []) + list(ROUTES)
    results: dict[Path, dict[str, list[float]]] = {c: {r: [] for r in routes} for c in checkouts}
    with tempfile.TemporaryDirectory(prefix="sim-requests-") as tmp:
        for rnd in range(args.rounds):
            for i, c in enumerate(checkouts):  # interleaved: each round runs every checkout once
                got = one_round(c, Path(tmp) / f"r{rnd}-{i}", args)
                for r in routes:
                    results[c][r].append(got[r])
                print(f"round {rnd + 1} {c}: " + ", ".join(f"{r} {got[r]:.0f}" for r in routes), flush=True)
    print(
        f"\nsimulator CPU per request (us, median of {args.rounds} rounds), {args.requests} requests per route "
        f"at {args.rate:g}/s over {args.connections} keep-alive connections"
    )
    print(f"{'checkout':<40} " + " ".join(f"{r:>8}" for r in routes) + f" {'session':>9}")
    for c in checkouts:
        med = {r: statistics.median(results[c][r]) for r in routes}
        # a session of the realistic run: create, three runs, close
        session = med["create"] + 3 * med["run"] + med["close"]
        print(f"{str(c):<40} " + " ".join(f"{med[r]:8.0f}" for r in routes) + f" {session:9.0f}")
    print("('session' = create + 3 x run + close: one session of the realistic run, 129 tokens)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
