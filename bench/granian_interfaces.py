#!/usr/bin/env python3
"""What Granian's own RSGI interface would save the simulator per request, beside ASGI (issue 18, part 3).

    .venv/bin/python bench/granian_interfaces.py [--rounds 3] [--duration 5] [--connections 64]

Issue 18 asks to measure, before changing anything, whether the simulator's hot routes would be cheaper
under Granian's RSGI interface than under ASGI (where Quart runs).  This isolates the part that would
change: the server's glue per request.  Two apps answer ``POST /session/create`` with the same 201 JSON
body and no other work, one written to ASGI (reads the body through ``receive``, answers with two
``send`` messages: what the simulator's direct routes do, kit/sim/_asgi.py), one to RSGI (``await
protocol()``, ``protocol.response_bytes``).  Each runs under Granian with the simulator's settings
(1 worker, uvloop, HTTP/1, no WebSockets); ``wrk`` POSTs over 64 keep-alive connections for
``--duration`` s; the server's CPU (main process and worker, psutil) is divided by the requests
answered.  The two are interleaved over ``--rounds`` so machine noise hits both; the medians are
compared.  Everything runs on 127.0.0.1 with free ports; each server is stopped by its PID.

The answer is in us per request; the simulator makes one request per ~26 tokens published (create,
three runs of 43 tokens, close), so a saving of S us per request is S / 26 us per token of the
simulator's all-in cost (25-32 us per token in ``bench/sim_publish.py``'s realistic 1,000-session run).
Results: docs/benchmarks.md, "granian_interfaces".
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402

from devkit.localstack import LOOPBACK, free_port, wait_tcp  # noqa: E402

#: tokens the simulator publishes per request in the realistic run (3 x 43 tokens / 5 requests)
TOKENS_PER_REQUEST = 3 * 43 / 5

APPS = """
BODY = b'{"session_id":"0123456789abcdef0123456789abcdef","auth_token":"%s","ws_path":"/ws/0123456789abcdef"}' % (
    b"t" * 180
)
H_ASGI = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(BODY))]


async def asgi(scope, receive, send):
    if scope["type"] != "http":
        return
    while True:
        message = await receive()
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 201, "headers": H_ASGI})
    await send({"type": "http.response.body", "body": BODY, "more_body": False})


H_RSGI = [("content-type", "application/json")]


class RSGIApp:
    async def __rsgi__(self, scope, protocol):
        await protocol()
        protocol.response_bytes(201, H_RSGI, BODY)


rsgi = RSGIApp()
"""

WRK_LUA = """
wrk.method = "POST"
wrk.body = '{"agent_id": "bench-agent"}'
wrk.headers["Content-Type"] = "application/json"
"""


def _cpu(procs: list[psutil.Process]) -> float:
    return sum(sum(p.cpu_times()[:2]) for p in procs)


def one(workdir: Path, interface: str, args: argparse.Namespace) -> tuple[int, float]:
    """(requests answered, server CPU seconds) of one wrk run against *interface*."""
    port = free_port()
    granian = str(Path(sys.executable).parent / "granian")
    argv = [granian, "--interface", interface, "--host", LOOPBACK, "--port", str(port), "--workers", "1"]
    argv += ["--loop", "uvloop", "--http", "1", "--no-ws", "--log-level", "warning", f"apps:{interface}"]
    server = subprocess.Popen(argv, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_tcp(LOOPBACK, port)
        main = psutil.Process(server.pid)
        procs = [main, *main.children(recursive=True)]
        cpu0 = _cpu(procs)
        out = subprocess.run(
            ["wrk", f"-c{args.connections}", "-t1", f"-d{args.duration}s", "-s", str(workdir / "post.lua")]
            + [f"http://{LOOPBACK}:{port}/session/create"],
            capture_output=True,
            text=True,
            timeout=args.duration + 60,
            check=True,
        ).stdout
        cpu = _cpu(procs) - cpu0
        m = re.search(r"(\d+) requests in", out)
        if m is None or "Non-2xx" in out:
            raise SystemExit(f"wrk against {interface}: unexpected output: {out.strip()[-300:]}")
        return int(m.group(1)), cpu
    finally:
        server.terminate()
        server.wait(15)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=5, help="seconds of wrk per round and interface")
    ap.add_argument("--connections", type=int, default=64)
    args = ap.parse_args()
    if not (1 <= args.rounds <= 20 and 1 <= args.duration <= 60 and 1 <= args.connections <= 1000):
        ap.error("--rounds 1..20, --duration 1..60, --connections 1..1000")
    if subprocess.run(["sh", "-c", "command -v wrk"], capture_output=True, check=False).returncode != 0:
        raise SystemExit("granian_interfaces: wrk not found: apt-get install wrk")
    per: dict[str, list[float]] = {"asgi": [], "rsgi": []}
    with tempfile.TemporaryDirectory(prefix="bench-granian-") as tmp:
        work = Path(tmp)
        (work / "apps.py").write_text(APPS)
        (work / "post.lua").write_text(WRK_LUA)
        print(f"{'round':>5} {'interface':<9} {'requests':>9} {'CPU s':>6} {'us/request':>10} {'req/s':>8}")
        for r in range(args.rounds):
            for interface in per:
                n, cpu = one(work, interface, args)
                per[interface].append(cpu * 1e6 / n)
                print(f"{r:>5} {interface:<9} {n:>9} {cpu:6.2f} {per[interface][-1]:10.1f} {n / args.duration:8.0f}")
    asgi, rsgi = statistics.median(per["asgi"]), statistics.median(per["rsgi"])
    saved = asgi - rsgi
    print(
        f"median: ASGI {asgi:.1f} us/request, RSGI {rsgi:.1f} us/request: RSGI saves {saved:.1f} us per request, "
        f"{saved / TOKENS_PER_REQUEST:.2f} us per token of the simulator at one request per "
        f"{TOKENS_PER_REQUEST:.1f} tokens"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
