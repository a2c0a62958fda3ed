#!/usr/bin/env python3
"""How long the wsproxy's health checks take at 5,000 connected sessions on a saturated machine.

    .venv/bin/python bench/health_latency.py                       # defaults below
    .venv/bin/python bench/health_latency.py --sessions 5000 --rate 20000 --duration 20 --busy 2

What a balancer sees when it checks an instance that carries thousands of sessions while the
machine has no core to spare, for the shallow check HAProxy uses (``/health``: the instance's own
state, no I/O) and, side by side in the same seconds, the deep one (``/health/deep``: a fresh Redis
connection, AUTH and PING per check, which is what ``/health`` did before "Degrade, never
collapse").  Real parts only, all on loopback, started and stopped (by PID) here:

- a kit-owned ``redis-server`` and one ``python -m kit.wsproxy``;
- *sessions* WebSocket clients in one process (``bench/wsproxy_forward.py --role clients``);
- a publisher (``bench/wsproxy_forward.py --role publisher``) offering *rate* messages/s in total
  over the sessions' channels for *duration* seconds, so the wsproxy is forwarding while checked;
- *busy* processes that each spin one core for the duration (the machine saturated);
- this process: every 100 ms one check, alternating the two paths, each on a new TCP connection
  closed after the answer (as HAProxy checks), timed from connect to the status line.

Prints p50/p99/max and the checks slower than HAProxy's check timeout (``haproxy_check_timeout``,
5 s) and than its old implicit one (``inter``, 2 s), and the Redis connections the checks opened.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

FORWARD = ROOT / "bench" / "wsproxy_forward.py"
DEADLINE = 180.0  # seconds any one phase may take
CHECK_EVERY_S = 0.1
PATHS = ("/health", "/health/deep")


def _check(port: int, path: str, timeout: float = 30.0) -> tuple[float, int]:
    """One check as HAProxy makes it: connect, GET, read the status line, close; (seconds, status)."""
    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode())
        head = b""
        while b"\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                break
            head += chunk
    took = time.perf_counter() - t0
    try:
        return took, int(head.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return took, 0


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


def _busy(seconds: float) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", f"import time\nt = time.monotonic() + {seconds}\nwhile time.monotonic() < t: pass"]
    )


def run(args: argparse.Namespace, workdir: Path) -> dict:
    import redis

    from devkit.localstack import start_redis, start_wsproxy
    from kit.auth import issue_token

    secret = secrets.token_urlsafe(48)
    sids = [os.urandom(16).hex() for _ in range(args.sessions)]
    tokens = [issue_token(secret, s) for s in sids]
    server = start_redis(workdir / "redis")
    procs: list[subprocess.Popen] = []
    ws = None
    try:
        ws, port = start_wsproxy(workdir, redis_url=server.url, jwt_secret=secret, LOG_LEVEL="WARNING")
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        clients = subprocess.Popen(
            [sys.executable, str(FORWARD), "--role", "clients"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
        )
        procs.append(clients)
        clients.stdin.write(json.dumps({"port": port, "sids": sids, "tokens": tokens}) + "\n")
        clients.stdin.flush()
        if clients.stdout.readline().strip() != "READY":
            raise RuntimeError("the clients did not connect")
        r = redis.Redis(host=server.host, port=server.port, password=server.password)
        conns0 = r.info("stats")["total_connections_received"]
        procs += [_busy(args.duration + 5) for _ in range(args.busy)]
        pub = subprocess.Popen(
            [
                sys.executable,
                str(FORWARD),
                "--role",
                "publisher",
                "--rate",
                str(args.rate),
                "--duration",
                str(args.duration),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**env, "BENCH_REDIS_URL": server.url},
            cwd=ROOT,
        )
        procs.append(pub)
        pub.stdin.write(json.dumps(sids) + "\n")
        pub.stdin.flush()
        took: dict[str, list[float]] = {p: [] for p in PATHS}
        failed: dict[str, int] = {p: 0 for p in PATHS}
        end = time.monotonic() + args.duration
        i = 0
        while time.monotonic() < end:
            path = PATHS[i % 2]
            i += 1
            t, status = _check(port, path)
            took[path].append(t)
            failed[path] += status != 200
            time.sleep(CHECK_EVERY_S)
        pub.wait(DEADLINE)
        conns1 = r.info("stats")["total_connections_received"]
        r.close()
        return {
            "sessions": args.sessions,
            "rate": args.rate,
            "busy": args.busy,
            "duration": args.duration,
            "took": took,
            "failed": failed,
            "redis_connections": conns1 - conns0,
            "deep_checks": len(took[PATHS[1]]),
        }
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait(10)
        if ws is not None:
            ws.stop()
        server.proc.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=5000)
    parser.add_argument("--rate", type=int, default=20000, help="messages/s published over all sessions")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of load and checks")
    parser.add_argument("--busy", type=int, default=os.cpu_count() or 2, help="processes spinning a core each")
    args = parser.parse_args()
    if not 1 <= args.sessions <= 9000 or not 1 <= args.duration <= 120 or not 0 <= args.busy <= 8:
        parser.error("keep it bounded: --sessions 1..9000, --duration 1..120, --busy 0..8")
    with tempfile.TemporaryDirectory(prefix="bench-health-") as tmp:
        res = run(args, Path(tmp))
    print(
        f"{res['sessions']} sessions, {res['rate']} msgs/s published, {res['busy']} busy processes, "
        f"{res['duration']:g} s; one check every {CHECK_EVERY_S * 1000:.0f} ms, paths alternating"
    )
    head = (
        f"{'path':<14} {'checks':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'>2 s':>5} {'>5 s':>5} {'non-200':>7}"
    )
    print(head)
    print("-" * len(head))
    for path in PATHS:
        t = res["took"][path]
        print(
            f"{path:<14} {len(t):>6} {_pct(t, 0.5) * 1e3:>8.1f} {_pct(t, 0.99) * 1e3:>8.1f} "
            f"{max(t, default=float('nan')) * 1e3:>8.1f} {sum(x > 2 for x in t):>5} {sum(x > 5 for x in t):>5} "
            f"{res['failed'][path]:>7}"
        )
    print(
        f"Redis connections opened during the checks: {res['redis_connections']} "
        f"({res['deep_checks']} deep checks, one each; the pool may open one of its own)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
