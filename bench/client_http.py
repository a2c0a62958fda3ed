#!/usr/bin/env python3
"""CPU per HTTP request of the load client's session calls: the kit's pool vs httpx, by session count.

    .venv/bin/python bench/client_http.py                        # 200, 1000, 2500 sessions
    .venv/bin/python bench/client_http.py --sessions 500 2500 --impls lean httpx-32

Each session does what a kit session does over HTTP: ``POST /session/create``,
then ``--queries`` times ``POST /session/{id}/run`` followed by the time its
answer streams (43 tokens x 50 ms = 2.15 s, a trio sleep here), then
``POST /session/{id}/close``; sessions start at ``--ramp`` per second, as in
``fab run --ramp``.  The server is a separate asyncio+uvloop process on
loopback answering fixed JSON with keep-alive (its CPU is not counted), so the
figure is the client's HTTP cost alone.  Each client runs in its own process and
reports its CPU (getrusage user+system) over the run divided by its requests.

Clients:
- ``lean``: ``kit.client._http.HttpPool`` (what kit.client runs), 64 connections;
- ``httpx-auto``: httpx.AsyncClient sized as kit.client sized it before
  (max_connections = sessions, up to 4096);
- ``httpx-32``: httpx.AsyncClient bounded to 32 connections.

This is a micro-benchmark of the HTTP path; the all-in figure of a real run
(HTTP + WebSocket + accounting, CPU from /proc) is ``bench/e2e_capacity.py``'s.
Measured figures are in the README's benchmark section.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

BODY = json.dumps(
    {
        "session_id": "0123456789abcdef0123456789abcdef",
        "auth_token": "x" * 180,
        "ws_path": "/load-test-agent/ws/0123456789abcdef0123456789abcdef",
        "query_id": "fedcba9876543210fedcba9876543210",
        "tokens": 43,
    }
).encode()


# ---------------------------------------------------------------- server (not measured)


class _Http(asyncio.Protocol):
    def connection_made(self, transport):
        self.t = transport
        self.buf = b""

    def data_received(self, data):
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].lower()
            n = 0
            i = head.find(b"content-length:")
            if i >= 0:
                n = int(head[i + 15 :].split(b"\r\n", 1)[0])
            if len(self.buf) < end + 4 + n:
                return
            self.buf = self.buf[end + 4 + n :]
            self.t.write(
                b"HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                % (len(BODY), BODY)
            )


def serve(port_file: str) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass

    async def main():
        server = await asyncio.get_running_loop().create_server(_Http, "127.0.0.1", 0, backlog=4096)
        Path(port_file).write_text(str(server.sockets[0].getsockname()[1]))
        await asyncio.sleep(3600)

    asyncio.run(main())


# ---------------------------------------------------------------- client (measured)


def client(impl: str, url: str, sessions: int, queries: int, ramp: float, stream_s: float) -> dict:
    import trio

    counts = {"requests": 0, "errors": 0}

    async def main():
        if impl == "lean":
            from kit.client._http import HttpPool

            http = HttpPool(url, max_connections=64, timeout=60)
            post = http.post
        else:
            import httpx

            n = max(10, min(sessions, 4096)) if impl == "httpx-auto" else 32
            http = httpx.AsyncClient(
                base_url=url,
                limits=httpx.Limits(max_connections=n, max_keepalive_connections=n),
                timeout=httpx.Timeout(60.0, pool=120.0),
            )
            post = http.post

        async def one(i: int) -> None:
            try:
                r = await post("/session/create", json={"agent_id": "a"})
                r.json()
                counts["requests"] += 1
                for _ in range(queries):
                    r = await post(f"/session/{i}/run", json={"query": "q"})
                    r.json()
                    counts["requests"] += 1
                    await trio.sleep(stream_s)
                await post(f"/session/{i}/close")
                counts["requests"] += 1
            except Exception:  # noqa: BLE001 - counted
                counts["errors"] += 1

        t0 = trio.current_time()
        with trio.fail_after(600):
            async with trio.open_nursery() as n:
                for i in range(sessions):
                    await trio.sleep_until(t0 + i / ramp)
                    n.start_soon(one, i)
        if impl == "lean":
            await http.aclose()
        else:
            await http.aclose()

    r0 = resource.getrusage(resource.RUSAGE_SELF)
    w0 = time.monotonic()
    trio.run(main)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return {
        "impl": impl,
        "sessions": sessions,
        "requests": counts["requests"],
        "errors": counts["errors"],
        "cpu_s": round(cpu, 3),
        "wall_s": round(time.monotonic() - w0, 2),
        "us_per_request": round(cpu * 1e6 / max(1, counts["requests"]), 1),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", type=int, nargs="+", default=[200, 1000, 2500])
    ap.add_argument("--impls", nargs="+", default=["lean", "httpx-32", "httpx-auto"])
    ap.add_argument("--queries", type=int, default=3)
    ap.add_argument("--ramp", type=float, default=250.0)
    ap.add_argument("--stream-s", type=float, default=2.15, help="seconds one answer streams (43 x 50 ms)")
    ap.add_argument("--_serve", help=argparse.SUPPRESS)
    ap.add_argument("--_client", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._serve:
        serve(args._serve)
        return 0
    if args._client:
        impl, url = args._client
        print(json.dumps(client(impl, url, args.sessions[0], args.queries, args.ramp, args.stream_s)))
        return 0
    port_file = f"/tmp/bench-client-http-{os.getpid()}.port"
    server = subprocess.Popen([sys.executable, __file__, "--_serve", port_file])
    try:
        deadline = time.monotonic() + 20
        while not (Path(port_file).exists() and Path(port_file).read_text().strip()):
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit("bench server did not start")
            time.sleep(0.05)
        url = f"http://127.0.0.1:{Path(port_file).read_text().strip()}"
        rows = []
        for n in args.sessions:
            for impl in args.impls:  # side by side, interleaved per session count
                out = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--_client",
                        impl,
                        url,
                        "--sessions",
                        str(n),
                        "--queries",
                        str(args.queries),
                        "--ramp",
                        str(args.ramp),
                        "--stream-s",
                        str(args.stream_s),
                    ],
                    capture_output=True,
                    text=True,
                    timeout=900,
                )
                if out.returncode != 0:
                    print(out.stderr[-2000:], file=sys.stderr)
                    continue
                rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
                r = rows[-1]
                print(
                    f"{r['impl']:11s} sessions={r['sessions']:5d} requests={r['requests']:6d} "
                    f"errors={r['errors']:3d} cpu={r['cpu_s']:7.2f}s wall={r['wall_s']:6.1f}s "
                    f"us/request={r['us_per_request']:8.1f}",
                    flush=True,
                )
    finally:
        server.terminate()
        server.wait(10)
        Path(port_file).unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
