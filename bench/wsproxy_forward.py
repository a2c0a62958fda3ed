#!/usr/bin/env python3
"""Messages the reference wsproxy forwards per CPU core, with 1,000 sessions.

    .venv/bin/python bench/wsproxy_forward.py                                  # defaults below
    .venv/bin/python bench/wsproxy_forward.py --sessions 1000 --rates 10000,25000,50000 \\
        --duration 5 --pool-sizes 512,1

Real parts only, all on loopback and all started (and stopped, by PID) here:

- a kit-owned ``redis-server``;
- ``python -m kit.wsproxy`` (the process whose CPU is measured, via psutil);
- a *clients* process (this script, ``--role clients``): N raw-socket WebSocket
  clients on uvloop that complete the handshake, count text frames with a
  minimal frame parser, and answer pings; its CPU is not counted;
- a *publisher* process (``--role publisher``) per offered rate: pipelined
  PUBLISH of token-like JSON round-robin over the N channels
  ``session:{id}:down`` at a fixed total rate for ``--duration`` seconds.

For each rate: read the wsproxy's CPU time and ``/stats``, run the publisher,
wait (bounded) until the clients counted every published message, read them
again.  Per message CPU = wsproxy CPU seconds / messages forwarded; messages per
core = messages / CPU seconds.  Target: >= 50,000 per core.  Every step has a
deadline; the machine is shared, so compare rows of one run.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEADLINE = 120.0  # seconds any one phase may take
TARGET_PER_CORE = 50_000
_PONG = b"\x8a\x80\x00\x00\x00\x00"  # masked, empty pong (zero mask)


# ---------------------------------------------------------------- clients (separate process)


class _Client(asyncio.Protocol):
    """One WebSocket client: handshake, then count text frames (server frames are unmasked)."""

    def __init__(self, state: dict, connected: asyncio.Future) -> None:
        self.state = state
        self.connected = connected
        self.buf = bytearray()
        self.upgraded = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            if not buf.startswith(b"HTTP/1.1 101"):
                self.connected.set_exception(RuntimeError(bytes(buf[:200]).decode(errors="replace")))
                return
            del buf[: end + 4]
            self.upgraded = True
            self.connected.set_result(None)
        off, size, frames = 0, len(buf), 0
        while size - off >= 2:
            n = buf[off + 1] & 0x7F
            head = 2
            if n == 126:
                if size - off < 4:
                    break
                n = int.from_bytes(buf[off + 2 : off + 4], "big")
                head = 4
            elif n == 127:
                if size - off < 10:
                    break
                n = int.from_bytes(buf[off + 2 : off + 10], "big")
                head = 10
            if size - off < head + n:
                break
            opcode = buf[off] & 0x0F
            if opcode == 0x1:
                frames += 1
            elif opcode == 0x9:
                self.transport.write(_PONG)
            elif opcode == 0x8:
                self.state["closed"] += 1
            off += head + n
        if off:
            del buf[:off]
        self.state["frames"] += frames

    def connection_lost(self, exc) -> None:
        self.state["lost"] += 1


async def _clients_main(port: int, sids: list[str], tokens: list[str]) -> None:
    loop = asyncio.get_running_loop()
    state = {"frames": 0, "closed": 0, "lost": 0}
    sem = asyncio.Semaphore(100)

    async def connect(sid: str, token: str) -> None:
        async with sem:
            connected = loop.create_future()
            transport, _ = await loop.create_connection(lambda: _Client(state, connected), "127.0.0.1", port)
            key = base64.b64encode(os.urandom(16)).decode()
            transport.write(
                (
                    f"GET /bench/ws/{sid} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                    f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                    f"Authorization: Bearer {token}\r\n\r\n"
                ).encode()
            )
            await asyncio.wait_for(connected, 30)

    await asyncio.wait_for(asyncio.gather(*(connect(s, t) for s, t in zip(sids, tokens))), DEADLINE)
    print("READY", flush=True)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:  # the parent asks "COUNT" and finally "STOP" (or closes stdin)
        line = await asyncio.wait_for(reader.readline(), DEADLINE * 4)
        if not line or line.strip() == b"STOP":
            return
        print(json.dumps(state), flush=True)


def run_clients(args: argparse.Namespace) -> None:
    spec = json.loads(sys.stdin.readline())
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        runner.run(_clients_main(spec["port"], spec["sids"], spec["tokens"]))


# ---------------------------------------------------------------- publisher (separate process)


def run_publisher(args: argparse.Namespace) -> None:
    """Pipelined PUBLISH at --rate messages/s in total for --duration seconds; prints a JSON line."""
    from kit.wsproxy._redis import encode_command, parse_redis_url

    address = parse_redis_url(os.environ["BENCH_REDIS_URL"])  # from the environment: it holds a password
    channels = [f"session:{s}:down".encode() for s in json.loads(sys.stdin.readline())]
    prefixes = [b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%s\r\n" % (len(c), c) for c in channels]
    sock = socket.create_connection((address.host, address.port))
    sock.sendall(encode_command(b"AUTH", address.password))
    assert sock.recv(64).startswith(b"+OK")
    sock.setblocking(False)
    replies = 0
    sent = 0
    tick = 0.002
    start = time.monotonic()
    end = start + args.duration
    nch = len(prefixes)

    def drain() -> None:
        nonlocal replies
        while True:
            try:
                data = sock.recv(1 << 16)
            except BlockingIOError:
                return
            if not data:
                raise RuntimeError("redis closed the publisher connection")
            replies += data.count(b"\r\n")

    while True:
        now = time.monotonic()
        if now >= end:
            break
        due = int((now - start) * args.rate) - sent
        if due > 0:
            ts = time.time_ns()
            out = []
            for i in range(sent, sent + due):
                payload = b'{"type":"token","query_id":"q%d","seq":%d,"ts":%d,"text":"token "}' % (
                    i % nch,
                    i // nch,
                    ts,
                )
                out.append(prefixes[i % nch] + b"$%d\r\n%s\r\n" % (len(payload), payload))
            data = memoryview(b"".join(out))
            while data:
                try:
                    n = sock.send(data)
                    data = data[n:]
                except BlockingIOError:
                    drain()
                    time.sleep(0.0005)  # redis is backed up: yield the CPU, bounded by the deadline
            sent += due
        drain()
        time.sleep(tick)
    deadline = time.monotonic() + DEADLINE
    while replies < sent and time.monotonic() < deadline:
        drain()
        time.sleep(0.001)
    sock.close()
    print(json.dumps({"published": sent, "replies": replies, "seconds": time.monotonic() - start}), flush=True)


# ---------------------------------------------------------------- driver


def _stats(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=10) as resp:
        return json.loads(resp.read())


def _ask(proc: subprocess.Popen) -> dict:
    proc.stdin.write("COUNT\n")
    proc.stdin.flush()
    return json.loads(proc.stdout.readline())


def _cpu(pid: int) -> float:
    import psutil

    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def measure_pool(args: argparse.Namespace, pool_size: int, workdir: Path) -> list[dict]:
    from devkit.localstack import start_redis, start_wsproxy
    from kit.auth import issue_token

    secret = secrets.token_urlsafe(48)
    sids = [os.urandom(16).hex() for _ in range(args.sessions)]
    tokens = [issue_token(secret, s) for s in sids]
    rows = []
    server = start_redis(workdir / f"redis-{pool_size}")
    try:
        ws, port = start_wsproxy(
            workdir, redis_url=server.url, jwt_secret=secret, PUBSUB_POOL_SIZE=pool_size, LOG_LEVEL="WARNING"
        )
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        clients = subprocess.Popen(
            [sys.executable, __file__, "--role", "clients"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
        )
        try:
            clients.stdin.write(json.dumps({"port": port, "sids": sids, "tokens": tokens}) + "\n")
            clients.stdin.flush()
            line = clients.stdout.readline()
            if line.strip() != "READY":
                raise RuntimeError(f"clients did not connect: {line!r}")
            stats = _stats(port)
            assert stats["connections_open"] == args.sessions, stats
            for rate in args.rates:
                s0, c0, k0, t0 = _stats(port), _cpu(ws.pid), _ask(clients), time.monotonic()
                pub = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--role",
                        "publisher",
                        "--rate",
                        str(rate),
                        "--duration",
                        str(args.duration),
                    ],
                    input=json.dumps(sids) + "\n",
                    capture_output=True,
                    text=True,
                    timeout=DEADLINE,
                    env={**env, "BENCH_REDIS_URL": server.url},
                    cwd=ROOT,
                    check=True,
                )
                published = json.loads(pub.stdout)["published"]
                deadline = time.monotonic() + DEADLINE
                while True:  # bounded: until every published message was counted by the clients
                    k1 = _ask(clients)
                    if k1["frames"] - k0["frames"] >= published or time.monotonic() > deadline:
                        break
                    time.sleep(0.05)
                t1, c1, s1 = time.monotonic(), _cpu(ws.pid), _stats(port)
                forwarded = s1["messages_forwarded"] - s0["messages_forwarded"]
                cpu = c1 - c0
                rows.append(
                    {
                        "pool": pool_size,
                        "pubsub_conns": s1["pubsub_connections"],
                        "sessions": args.sessions,
                        "offered_per_s": rate,
                        "published": published,
                        "forwarded": forwarded,
                        "delivered": k1["frames"] - k0["frames"],
                        "wall_s": t1 - t0,
                        "cpu_s": cpu,
                        "us_per_msg": cpu / forwarded * 1e6 if forwarded else float("nan"),
                        "per_core": forwarded / cpu if cpu else float("nan"),
                        "drops": s1["slow_client_drops"] + s1["ping_timeouts"] + s1["redis_lost_drops"],
                    }
                )
        finally:
            try:
                clients.stdin.write("STOP\n")
                clients.stdin.flush()
            except OSError:
                pass
            try:
                clients.wait(10)
            except subprocess.TimeoutExpired:
                clients.kill()
                clients.wait(10)
            ws.stop()
    finally:
        server.proc.stop()
    return rows


def run_driver(args: argparse.Namespace) -> int:
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-wsproxy-") as tmp:
        for pool in args.pool_sizes:
            rows += measure_pool(args, pool, Path(tmp))
    head = (
        f"{'pool':>5} {'conns':>5} {'sessions':>8} {'offered/s':>9} {'published':>9} {'forwarded':>9} "
        f"{'delivered':>9} {'wall s':>7} {'CPU s':>7} {'us/msg':>7} {'msgs/s/core':>11} {'drops':>5}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['pool']:>5} {r['pubsub_conns']:>5} {r['sessions']:>8} {r['offered_per_s']:>9} "
            f"{r['published']:>9} {r['forwarded']:>9} {r['delivered']:>9} {r['wall_s']:>7.2f} "
            f"{r['cpu_s']:>7.2f} {r['us_per_msg']:>7.2f} {r['per_core']:>11,.0f} {r['drops']:>5}"
        )
    worst = min(r["per_core"] for r in rows)
    print(
        f"\nwsproxy CPU only (psutil, user+system over the whole phase incl. drain); target >= "
        f"{TARGET_PER_CORE:,} msgs/s/core: {'met' if worst >= TARGET_PER_CORE else 'NOT met'} "
        f"(worst row {worst:,.0f})"
    )
    lossless = all(r["delivered"] == r["published"] == r["forwarded"] for r in rows)
    if not lossless:
        print("WARNING: some rows lost messages (published != forwarded != delivered)")
    return 0 if lossless else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--role", choices=["driver", "clients", "publisher"], default="driver")
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument(
        "--rates",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[10000, 25000, 50000],
        help="offered total PUBLISH rates, messages/s (comma-separated)",
    )
    parser.add_argument("--rate", type=int, default=10000, help=argparse.SUPPRESS)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds each rate is offered")
    parser.add_argument(
        "--pool-sizes",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[512, 1],
        help="PUBSUB_POOL_SIZE values to compare (comma-separated)",
    )
    args = parser.parse_args()
    if args.role == "clients":
        run_clients(args)
        return 0
    if args.role == "publisher":
        run_publisher(args)
        return 0
    if not 1 <= args.sessions <= 5000 or args.duration > 60:
        parser.error("keep it bounded: --sessions 1..5000, --duration <= 60")
    return run_driver(args)


if __name__ == "__main__":
    sys.exit(main())
