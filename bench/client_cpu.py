#!/usr/bin/env python3
"""CPU per received token: kit.client's WebSocket vs trio-websocket, side by side in one run.

    .venv/bin/python bench/client_cpu.py                     # defaults below
    .venv/bin/python bench/client_cpu.py --sockets 200 --rate 5000 --messages 40000 --repeat 2

For each condition a *server process* (asyncio + uvloop, loopback only, its CPU
not counted) accepts N WebSocket connections and sends token-like JSON frames:

- ``realistic``: paced at --rate frames/s in total, one frame per socket write,
  spread over the sockets, so the client reads about one frame per read
  (what a real proxy's token stream looks like);
- ``burst``: --burst frames concatenated per write, so one read returns many.

Each *client process* connects N sockets, then measures its own CPU time
(getrusage: user+system) from the first to the last frame and divides it by
the frames received.  Every client does the same per-token accounting as
kit.client (orjson parse, query lookup, seq check, inter-token and delivery
histograms), so the difference is the WebSocket layer.  Clients:

- ``kit``: what kit.client runs: kit.client._ws's Sans-I/O parser, reads done by
  the epoll hub (kit.client._hub), messages handed to the accounting callback;
- ``kit-noacct``: the same without the accounting (the transport's own cost);
- ``kit-tasks``: kit.client._ws with one trio reader task per socket
  (``wait_readable`` per socket, the fallback where epoll is missing);
- ``trio-websocket``: trio_websocket.open_websocket_url + get_message.

Prints a table and the ratios trio-websocket / kit.  Bounded: fixed message
counts and a deadline per process.

Measured on the 2-core dev VM (other helpers' jobs running), one run of
``.venv/bin/python bench/client_cpu.py --repeat 2`` (defaults: 200 sockets,
40000 frames per run), us of CPU per received token, min of 2:

    condition        kit   kit-noacct  kit-tasks  trio-websocket  ratio tws/kit
    realistic@5000   16.4     13.2       23.1         58.5            3.6x
    realistic@10000  11.4      9.9       17.7         47.4            4.2x
    realistic@20000   9.2      8.4       14.8         28.0            3.0x
    burst (50/write)  1.6      0.8        1.8         21.0           13.4x

Next to it, ``--real-run 1000`` (the default) prints the all-in figure of a real run: one
``python -m kit.client`` process, 1,000 sessions x 3 queries of 43 tokens 50 ms apart, HTTP
create/run/close per session and query, against the real simulator + wsproxy + Redis (devkit.localstack),
CPU from getrusage of that process.  One run, 2026-11-30 (a lab run was going on the same cores):

    .venv/bin/python bench/client_cpu.py --modes realistic --rate 10000 --clients kit --real-run 1000
    realistic@10000  kit  8.44 us/token (micro: the WebSocket path alone)
    real run, all-in: 22.0 us/token (2.84 CPU-s / 129000 tokens), 947 us/query; not overloaded

``--real-only`` skips the micro-benchmark; ``--py-spy FILE`` records a py-spy raw profile of the real run's
client (py-spy's CPU is then in the figure: profile and measure in separate runs).  ``--tokens 2,43,172``
repeats the real run per answer length and fits CPU per query = a x tokens + b (what a token costs, what a
query costs besides); ``--think-time 40 --real-run 2500 --ramp 62.5`` is one generator process of the
10,000-session chat-like lab run; ``--checkout DIR`` (repeatable) runs the client of another checkout
against this tree's stack, interleaved ``--repeat`` times.  Each real run prints its reads per hub wake-up,
delivery p99 and loop-lag p99.

The real run is what a run costs; the micro-benchmark is one part of it.  In a ``fab run`` on the
local stack the client measured 16-33 us/token from 2,000 down to 250 sessions
(``bench/e2e_capacity.py``, README "Benchmarks of the kit itself").

A cold trio wake-up costs 20-40 us of CPU on this VM, so at low rates (few
ready sockets per wake-up) the per-token figure is dominated by it; the hub
amortises one wake-up over every socket ready at that moment.  Run-to-run
noise on this machine is about +-25%.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
ROOT = Path(__file__).resolve().parent.parent
DEADLINE = 300.0


# ---------------------------------------------------------------- server (separate process)


def _frame(payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        return bytes([0x81, n]) + payload
    return bytes([0x81, 126]) + n.to_bytes(2, "big") + payload


def serve(args: argparse.Namespace) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(_serve(args))


async def _serve(args: argparse.Namespace) -> None:
    writers: list[asyncio.StreamWriter] = []
    all_in = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        key = next(
            line.split(b":", 1)[1].strip()
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"sec-websocket-key:")
        )
        accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )
        writers.append(writer)
        if len(writers) == args.sockets:
            all_in.set()
        try:
            await reader.read()  # until the client closes
        except ConnectionError:
            pass

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    print(port, flush=True)
    await asyncio.wait_for(all_in.wait(), DEADLINE)
    await asyncio.sleep(0.3)
    per_socket = args.messages // args.sockets
    text = b"tok "
    qid = b"0123456789abcdef0123456789abcdef"

    def msg(seq: int) -> bytes:
        return _frame(
            b'{"type":"token","query_id":"'
            + qid
            + b'","seq":'
            + str(seq).encode()
            + b',"ts":'
            + str(time.time_ns()).encode()
            + b',"text":"'
            + text
            + b'"}'
        )

    sent = [0] * args.sockets
    loop = asyncio.get_running_loop()
    start = loop.time()
    if args.mode == "realistic":
        tick = 0.001
        per_tick = float(args.rate) * tick
        budget = 0.0
        i = 0
        n = 0
        while n < per_socket * args.sockets:
            budget += per_tick
            while budget >= 1 and n < per_socket * args.sockets:
                w = i % args.sockets
                writers[w].write(msg(sent[w]))
                sent[w] += 1
                i += 1
                n += 1
                budget -= 1
            start += tick
            await asyncio.sleep(max(0.0, start - loop.time()))
    else:
        w = 0
        bursts_per_s = float(args.rate) / args.burst
        while any(s < per_socket for s in sent):
            if sent[w] < per_socket:
                k = min(args.burst, per_socket - sent[w])
                writers[w].write(b"".join(msg(sent[w] + j) for j in range(k)))
                sent[w] += k
                await writers[w].drain()
                start += 1.0 / bursts_per_s
                await asyncio.sleep(max(0.0, start - loop.time()))
            w = (w + 1) % args.sockets
    for w in writers:
        await w.drain()
    await asyncio.sleep(2.0)
    server.close()


# ---------------------------------------------------------------- clients (separate processes)


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _sys() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_stime


def client(args: argparse.Namespace) -> None:
    import orjson
    import trio

    sys.path.insert(0, str(ROOT))
    from kit.client._accounting import Recorder

    per_socket = args.messages // args.sockets
    total = per_socket * args.sockets
    url = f"ws://127.0.0.1:{args.port}"
    state = {"got": 0, "first_cpu": None, "first_t": None, "reads": 0}
    done = None

    def make_account(accounting: bool):
        rec = Recorder()
        loads = orjson.loads
        mono = time.monotonic_ns
        wall = time.time_ns

        def new_query():
            q = rec.new_query("s", 0, mono(), mono(), None)
            q.query_id = "0123456789abcdef0123456789abcdef"
            return {q.query_id: q}

        def on_batch(by_id, batch, m_ns=None, w_ns=None):
            if state["first_cpu"] is None:
                state["first_cpu"], state["first_t"], state["first_sys"] = _cpu(), time.perf_counter(), _sys()
            if accounting:
                if m_ns is None:
                    m_ns, w_ns = mono(), wall()
                for payload in batch:
                    m = loads(payload)
                    q = by_id.get(m["query_id"])
                    if q.status:
                        continue
                    if m["type"] == "token":
                        q.token(m["seq"], m["ts"], m_ns, w_ns)
            state["got"] += len(batch)
            if state["got"] >= total:
                done.set()

        return new_query, on_batch, rec

    async def main() -> None:
        nonlocal done
        done = trio.Event()
        new_query, on_batch, rec = make_account(args.client != "kit-noacct")
        async with trio.open_nursery() as n:
            if args.client.startswith("kit"):
                from kit.client._hub import Hub
                from kit.client._ws import ConnectionClosed, connect

                hub = None
                if args.client != "kit-tasks":
                    hub = Hub()
                    await n.start(hub.run)
                socks = [await connect(url, f"/a/ws/{i}") for i in range(args.sockets)]

                async def reader(ws):
                    by_id = new_query()
                    try:
                        await ws.run_receiver(lambda batch, m_ns, w_ns: on_batch(by_id, batch, m_ns, w_ns), hub)
                    except ConnectionClosed:
                        pass

                for ws in socks:
                    n.start_soon(reader, ws)
                print("ready", flush=True)
                await done.wait()
                state["reads"] = sum(ws.reads for ws in socks)
                for ws in socks:
                    ws.abort_nowait()
            else:
                from trio_websocket import open_websocket_url

                async def reader(i, task_status=trio.TASK_STATUS_IGNORED):
                    async with open_websocket_url(f"{url}/a/ws/{i}") as ws:
                        task_status.started()
                        by_id = new_query()
                        got = 0
                        while got < per_socket:
                            msg = await ws.get_message()
                            on_batch(by_id, [msg if isinstance(msg, bytes) else msg.encode()])
                            got += 1
                        await done.wait()

                for i in range(args.sockets):
                    await n.start(reader, i)
                print("ready", flush=True)
                await done.wait()
            cpu = _cpu() - state["first_cpu"]
            sys_s = _sys() - state["first_sys"]
            wall_s = time.perf_counter() - state["first_t"]
            lost = rec.counters["lost_tokens"]
            print(
                json.dumps(
                    {
                        "client": args.client,
                        "messages": state["got"],
                        "cpu_s": cpu,
                        "wall_s": wall_s,
                        "us_per_msg": cpu / state["got"] * 1e6,
                        "sys_us_per_msg": sys_s / state["got"] * 1e6,
                        "reads": state["reads"],
                        "lost": lost,
                    }
                ),
                flush=True,
            )
            n.cancel_scope.cancel()

    async def bounded() -> None:
        with trio.fail_after(DEADLINE):
            await main()

    trio.run(bounded)


# ---------------------------------------------------------------- driver


def run_one(mode: str, client_name: str, args: argparse.Namespace) -> dict:
    me = [sys.executable, str(Path(__file__).resolve())]
    rate = mode.split("@")[1] if "@" in mode else str(args.burst_rate)
    mode = mode.split("@")[0]
    common = [
        "--sockets",
        str(args.sockets),
        "--messages",
        str(args.messages),
        "--rate",
        rate,
        "--burst",
        str(args.burst),
    ]
    server = subprocess.Popen([*me, "--serve", "--mode", mode, *common], stdout=subprocess.PIPE, text=True)
    try:
        port = int(server.stdout.readline())
        cli = subprocess.run(
            [*me, "--client", client_name, "--port", str(port), *common],
            capture_output=True,
            text=True,
            timeout=DEADLINE,
            cwd=ROOT,
        )
        if cli.returncode != 0:
            raise RuntimeError(f"{client_name} failed:\n{cli.stderr[-2000:]}")
        result = json.loads(cli.stdout.strip().splitlines()[-1])
    finally:
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--client", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="realistic", help=argparse.SUPPRESS)
    ap.add_argument("--sockets", type=int, default=200)
    ap.add_argument("--messages", type=int, default=40000, help="frames per client run (all sockets)")
    ap.add_argument(
        "--rate", default="5000,10000,20000", help="realistic: frames/s over all sockets (a comma list runs each)"
    )
    ap.add_argument("--burst", type=int, default=50, help="burst: frames per write")
    ap.add_argument("--burst-rate", type=int, default=100000, help="burst: frames/s over all sockets")
    ap.add_argument("--repeat", type=int, default=1, help="runs per cell (the minimum is reported)")
    ap.add_argument("--clients", default="kit,kit-noacct,kit-tasks,trio-websocket")
    ap.add_argument("--modes", default="realistic,burst")
    ap.add_argument(
        "--real-run",
        type=int,
        default=1000,
        metavar="SESSIONS",
        help="also the all-in figure of a real client run of this many sessions x 3 queries "
        "against the real simulator + wsproxy + Redis (0: skip)",
    )
    ap.add_argument("--py-spy", metavar="FILE", help="real run: a py-spy raw profile of the client process to FILE")
    ap.add_argument("--real-only", action="store_true", help="only the real run (no micro-benchmark)")
    ap.add_argument(
        "--tokens",
        default="",
        help="real run: tokens per answer, a comma list runs each (two or more: the cost split into per token "
        "and per query by a straight-line fit); default: the simulator's own",
    )
    ap.add_argument(
        "--think-time",
        type=float,
        default=0.0,
        help="real run: seconds between a session's queries (40 with --real-run 2500 is one generator process of "
        "the 10,000-session chat-like lab run: sparse streams, sessions idle between queries)",
    )
    ap.add_argument("--ramp", type=float, default=250.0, help="real run: sessions started per second")
    ap.add_argument(
        "--checkout",
        action="append",
        default=[],
        metavar="DIR",
        help="real run: the client from this checkout (repeat to compare side by side, interleaved --repeat "
        "times; the stack is this tree's)",
    )
    args = ap.parse_args()
    if args.serve:
        return serve(args)
    if args.client:
        return client(args)
    names = args.clients.split(",")
    results: dict[tuple[str, str], dict] = {}
    modes = []
    for m in args.modes.split(","):
        modes += [f"realistic@{r}" for r in args.rate.split(",")] if m == "realistic" else [m]
    if args.real_only:
        modes = []
    for mode in modes:
        for _ in range(args.repeat):
            for name in names:  # interleaved so machine noise hits every client alike
                r = run_one(mode, name, args)
                key = (mode, name)
                if key not in results or r["us_per_msg"] < results[key]["us_per_msg"]:
                    results[key] = r
    print(
        f"\nCPU per received token (us), {args.sockets} sockets, {args.messages} frames per run, "
        f"realistic@<frames/s> one frame per write, burst {args.burst} frames per write at {args.burst_rate}/s; "
        f"min of {args.repeat} run(s)"
    )
    print(
        f"{'condition':<16} {'client':<16} {'us/token':>9} {'(kernel)':>9} {'frames/read':>12} {'cpu s':>7} "
        f"{'wall s':>7}"
    )
    for (mode, name), r in results.items():
        fpr = f"{r['messages'] / r['reads']:.2f}" if r.get("reads") else "-"
        print(
            f"{mode:<16} {name:<16} {r['us_per_msg']:9.2f} {r['sys_us_per_msg']:9.2f} {fpr:>12} {r['cpu_s']:7.2f} "
            f"{r['wall_s']:7.2f}"
        )
    for mode in modes:
        if (mode, "kit") in results and (mode, "trio-websocket") in results:
            ratio = results[(mode, "trio-websocket")]["us_per_msg"] / results[(mode, "kit")]["us_per_msg"]
            print(f"{mode}: trio-websocket / kit = {ratio:.2f}x")
    if args.real_run:
        real_runs(args)


def real_runs(args: argparse.Namespace) -> None:
    """The real runs: each checkout x each --tokens value, interleaved --repeat times; a table of medians."""
    checkouts = [Path(c).resolve() for c in args.checkout] or [ROOT]
    tokens = [int(t) for t in args.tokens.split(",") if t] or [0]
    runs: dict[tuple[Path, int], list[dict]] = {}
    for _ in range(args.repeat):
        for t in tokens:
            for c in checkouts:  # interleaved so machine noise hits every checkout alike
                r = real_run(
                    args.real_run, args.py_spy, tokens=t, checkout=c, think_time=args.think_time, ramp=args.ramp
                )
                runs.setdefault((c, t), []).append(r)
                rpw = f"{r['reads_per_wakeup']:.1f}" if r["reads_per_wakeup"] else "-"
                print(
                    f"  {c.name} tokens={t or 'default'}: {r['us_per_token']:.1f} us/token, {rpw} reads per wake-up",
                    flush=True,
                )
    print(
        f"\nreal run, all-in (HTTP create/run/close, WebSocket, accounting, output), {args.real_run} sessions x 3 "
        f"queries, think time {args.think_time:g} s, tokens 50 ms apart, one client process; median of "
        f"{args.repeat}:"
    )
    print(
        f"{'checkout':<24} {'tokens/q':>8} {'us/token':>9} {'kernel':>7} {'CPU-s':>6} {'us/query':>9} "
        f"{'deliv p99':>9} {'lag p99':>8} overloaded"
    )
    for (c, _t), rs in runs.items():
        med = {
            k: statistics.median(r[k] or 0 for r in rs)
            for k in ("us_per_token", "sys_s", "cpu_s", "us_per_query", "delivery_p99_ms", "loop_lag_p99_ms")
        }
        per_q = rs[0]["tokens"] / max(1, rs[0]["queries"])
        print(
            f"{c.name:<24} {per_q:8.0f} {med['us_per_token']:9.1f} {med['sys_s']:7.2f} {med['cpu_s']:6.2f} "
            f"{med['us_per_query']:9.0f} {med['delivery_p99_ms']:9.1f} {med['loop_lag_p99_ms']:8.1f} "
            f"{any(r['overloaded'] for r in rs)}"
        )
    if len(tokens) >= 2:
        for c in checkouts:
            pts = [
                (rs[0]["tokens"] / max(1, rs[0]["queries"]), statistics.median(r["us_per_query"] for r in rs))
                for (cc, _t), rs in runs.items()
                if cc == c
            ]
            slope, intercept = statistics.linear_regression([x for x, _ in pts], [y for _, y in pts])
            print(
                f"{c.name}: {slope:.1f} us per token + {intercept:.0f} us per query (its HTTP /run, and its share of "
                "the session's create, connect, close and the process's start)"
            )
    print("  (the micro-benchmark above is the WebSocket path alone; the real run is what a run costs)")


def real_run(
    sessions: int,
    py_spy: str | None = None,
    *,
    tokens: int = 0,
    checkout: Path = ROOT,
    think_time: float = 0.0,
    ramp: float = 250.0,
) -> dict:
    """One real ``python -m kit.client`` process against devkit.localstack's Redis + simulator + wsproxy at the
    default pace; its CPU from getrusage of the child (user+system), divided by tokens received.
    With *py_spy* a py-spy raw profile of the client goes to that file (py-spy's CPU is then in the figure)."""
    import json
    import resource
    import tempfile

    sys.path.insert(0, str(ROOT))
    from devkit.localstack import local_stack

    with tempfile.TemporaryDirectory(prefix="client-cpu-") as tmp, local_stack(Path(tmp) / "stack") as stack:
        out = Path(tmp) / "out"
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        spy = [str(Path(sys.executable).parent / "py-spy"), "record", "--format", "raw", "--nonblocking", "-r", "200"]
        subprocess.run(
            [
                *([*spy, "-o", py_spy, "--"] if py_spy else []),
                sys.executable,
                "-m",
                "kit.client",
                "--api-url",
                stack.api_url,
                "--ws-url",
                stack.ws_url,
                "--clients",
                str(sessions),
                "--queries",
                "3",
                "--ramp",
                f"{ramp:g}",
                "--processes",
                "1",
                "--output-dir",
                str(out),
                "--quiet",
                "--no-preflight",
                *(["--tokens", str(tokens)] if tokens else []),
                *(["--think-time", f"{think_time:g}"] if think_time else []),
            ],
            cwd=checkout,
            env={**os.environ, "PYTHONPATH": str(checkout)},
            check=False,
            timeout=DEADLINE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        s = json.loads((out / "summary.json").read_text())
        runs = json.loads((out / "histograms.json").read_text()).get("runs") or [{}]
        reader = runs[0].get("reader") or {}
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    tokens = max(1, s["total_tokens"])
    return {
        "sessions": sessions,
        "cpu_s": cpu,
        "sys_s": after.ru_stime - before.ru_stime,
        "tokens": s["total_tokens"],
        "queries": s["total_queries"],
        "reads_per_wakeup": reader["events"] / reader["wakeups"] if reader.get("wakeups") else None,
        "delivery_p99_ms": (s.get("delivery_latency_ms") or {}).get("p99"),
        "loop_lag_p99_ms": s["generator"].get("loop_lag_p99_ms"),
        "us_per_token": cpu * 1e6 / tokens,
        "us_per_query": cpu * 1e6 / max(1, s["total_queries"]),
        "overloaded": s["generator"]["generator_overloaded"],
    }


if __name__ == "__main__":
    main()
