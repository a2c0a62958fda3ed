#!/usr/bin/env python3
"""Granian vs Hypercorn under a saturating load, side by side (how the simulator's server was first chosen;
since 6a420ae it is Uvicorn, chosen at a real run's sparse pace by ``bench/sim_server_ab.sh``).

Starts a kit-owned redis-server and, one after another, the simulator app
(``kit.sim:app``) under each candidate server with 1 worker; drives each with
``wrk -c64 -t2 -d5s`` running a Lua script that POSTs ``/session/create`` (one
Redis write per request), and prints req/s and p99 per server.  Candidates are
interleaved over ``--rounds`` rounds so machine noise hits all of them alike;
the table shows each server's best and median round.

    .venv/bin/python bench/asgi_servers.py [--rounds 2] [--duration 5] [--connections 64]

Besides req/s and p99 it prints requests per CPU-second of the server's processes
(psutil), which a noisy shared machine disturbs far less than req/s.  Results:
docs/benchmarks.md, "asgi_servers".
Everything runs on 127.0.0.1 with free ports; every process is stopped by PID.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402

from devkit.localstack import LOOPBACK, Proc, free_port, spawn, start_redis, wait_http_ok  # noqa: E402

WRK_LUA = r"""
wrk.method = "POST"
wrk.path = "/session/create"
wrk.body = '{"agent_id": "bench-agent"}'
wrk.headers["Content-Type"] = "application/json"

local non201 = 0
response = function(status, headers, body)
  if status ~= 201 then non201 = non201 + 1 end
end

done = function(summary, latency, requests)
  local errs = summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout
  io.write(string.format('RESULT {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "max_us": %d, "socket_errors": %d, "status_errors": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.max,
    errs, summary.errors.status))
end
"""


def candidates(host: str, port: int) -> dict[str, list[str]]:
    py = sys.executable
    return {
        "granian loop=uvloop": [
            py,
            "-m",
            "granian",
            "--interface",
            "asgi",
            "--loop",
            "uvloop",
            "--workers",
            "1",
            "--http",
            "1",
            "--no-ws",
            "--host",
            host,
            "--port",
            str(port),
            "kit.sim:app",
        ],
        "granian loop=asyncio": [
            py,
            "-m",
            "granian",
            "--interface",
            "asgi",
            "--loop",
            "asyncio",
            "--workers",
            "1",
            "--http",
            "1",
            "--no-ws",
            "--host",
            host,
            "--port",
            str(port),
            "kit.sim:app",
        ],
        "granian uvloop task=rust": [
            py,
            "-m",
            "granian",
            "--interface",
            "asgi",
            "--loop",
            "uvloop",
            "--task-impl",
            "rust",
            "--workers",
            "1",
            "--http",
            "1",
            "--no-ws",
            "--host",
            host,
            "--port",
            str(port),
            "kit.sim:app",
        ],
        "hypercorn -k uvloop": [
            py,
            "-m",
            "hypercorn",
            "-k",
            "uvloop",
            "-w",
            "1",
            "--log-level",
            "warning",
            "-b",
            f"{host}:{port}",
            "kit.sim:app_from_env()",
        ],
        "hypercorn -k asyncio": [
            py,
            "-m",
            "hypercorn",
            "-k",
            "asyncio",
            "-w",
            "1",
            "--log-level",
            "warning",
            "-b",
            f"{host}:{port}",
            "kit.sim:app_from_env()",
        ],
    }


def run_wrk(port: int, lua: Path, *, connections: int, threads: int, duration: int) -> dict:
    argv = [
        "wrk",
        f"-c{connections}",
        f"-t{threads}",
        f"-d{duration}s",
        "-s",
        str(lua),
        f"http://{LOOPBACK}:{port}/session/create",
    ]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60, check=True).stdout
    for line in out.splitlines():
        if line.startswith("RESULT "):
            res = json.loads(line[len("RESULT ") :])
            res["rps"] = res["requests"] / (res["duration_us"] / 1e6)
            return res
    raise RuntimeError(f"wrk printed no RESULT line:\n{out}")


def _cpu(procs: list[psutil.Process]) -> float:
    return sum(t.user + t.system for t in (p.cpu_times() for p in procs))


def one(name: str, argv_for, env: dict, workdir: Path, lua: Path, args) -> dict:
    port = free_port()
    proc: Proc = spawn(f"{name.replace(' ', '_').replace('=', '-')}-{port}", argv_for(port), env=env, log_dir=workdir)
    try:
        wait_http_ok(LOOPBACK, port, proc=proc)
        # a short warm-up so imports, pools and JIT-less caches are settled alike
        run_wrk(port, lua, connections=args.connections, threads=args.threads, duration=1)
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        cpu0 = _cpu(tree)
        res = run_wrk(port, lua, connections=args.connections, threads=args.threads, duration=args.duration)
        # requests per CPU-second of the server's processes: far less sensitive to a noisy machine than req/s
        res["req_per_cpu_s"] = res["requests"] / max(1e-9, _cpu(tree) - cpu0)
        return res
    finally:
        code = proc.stop()
        if code not in (0, -15):
            print(f"  note: {name} exited with {code} on SIGTERM; log tail:\n{proc.log_tail(10)}", file=sys.stderr)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--duration", type=int, default=5, help="seconds of wrk per measurement")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", action="append", help="run only candidates whose name contains this")
    args = ap.parse_args()
    if not (1 <= args.rounds <= 10 and 1 <= args.duration <= 60):
        ap.error("--rounds must be 1..10 and --duration 1..60")
    if shutil.which("wrk") is None:
        print("asgi_servers: wrk not found: apt-get install wrk", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory(prefix="bench-asgi-") as tmp:
        workdir = Path(tmp)
        lua = workdir / "create.lua"
        lua.write_text(WRK_LUA)
        redis = start_redis(workdir / "redis")
        try:
            env = dict(
                os.environ,
                REDIS_URL=redis.url,
                JWT_SECRET=secrets.token_urlsafe(48),
                PYTHONPATH=str(ROOT),
                LOG_LEVEL="WARNING",
            )
            names = list(candidates(LOOPBACK, 0))
            if args.only:
                names = [n for n in names if any(o in n for o in args.only)]
            results: dict[str, list[dict]] = {n: [] for n in names}
            for r in range(args.rounds):
                for name in names:
                    res = one(name, lambda port, n=name: candidates(LOOPBACK, port)[n], env, workdir, lua, args)
                    results[name].append(res)
                    print(
                        f"round {r + 1}: {name:24s} {res['rps']:8.0f} req/s  p99 {res['p99_us'] / 1000:7.1f} ms  "
                        f"{res['req_per_cpu_s']:6.0f} req/CPU-s",
                        file=sys.stderr,
                    )
        finally:
            redis.proc.stop()

    print(
        f"\nPOST /session/create, wrk -c{args.connections} -t{args.threads} -d{args.duration}s, "
        f"1 worker, {args.rounds} round(s), {os.cpu_count()} cores"
    )
    print(
        f"{'server':24s} {'best req/s':>10s} {'median req/s':>12s} {'p99 ms (best)':>13s} "
        f"{'req/CPU-s (median)':>18s} {'sock err':>8s} {'non-201':>7s}"
    )
    best_rps = {}
    eff = {name: statistics.median(x["req_per_cpu_s"] for x in rs) for name, rs in results.items()}
    for name, rs in results.items():
        best = max(rs, key=lambda x: x["rps"])
        best_rps[name] = best["rps"]
        sock = sum(x["socket_errors"] for x in rs)
        status = sum(x["status_errors"] for x in rs)
        print(
            f"{name:24s} {best['rps']:10.0f} {statistics.median(x['rps'] for x in rs):12.0f} "
            f"{best['p99_us'] / 1000:13.1f} {statistics.median(x['req_per_cpu_s'] for x in rs):18.0f} "
            f"{sock:8d} {status:7d}"
        )
    winner = max(best_rps, key=best_rps.get)
    others = sorted((v, k) for k, v in best_rps.items() if k != winner)
    if others:
        v, k = others[-1]
        print(f"\nwinner: {winner}, {best_rps[winner] / v:.2f}x the runner-up ({k})")
    by_family = {
        fam: max((v for k, v in best_rps.items() if k.startswith(fam)), default=0.0) for fam in ("granian", "hypercorn")
    }
    eff_family = {
        fam: max((v for k, v in eff.items() if k.startswith(fam)), default=0.0) for fam in ("granian", "hypercorn")
    }
    if all(by_family.values()):
        print(
            f"best granian / best hypercorn: {by_family['granian'] / by_family['hypercorn']:.2f}x req/s, "
            f"{eff_family['granian'] / eff_family['hypercorn']:.2f}x req per CPU-second"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
