#!/usr/bin/env python3
"""Memory per connected, idle session: one generator process, the wsproxy and Redis (issue 18, "Cheap sessions").

    .venv/bin/python bench/idle_sessions.py                      # 19,000 sessions, ramp 500/s
    .venv/bin/python bench/idle_sessions.py --sessions 2000      # a quick check

Starts devkit.localstack (Redis + simulator + wsproxy on loopback) with this process's open-files
soft limit raised to its hard limit first, so every process started here (the services and the client)
inherits ``ulimit -n`` = the hard limit.  Then runs ONE ``python -m kit.client --processes 1`` of N sessions,
each: create, connect, one short query (``--tokens 5``), a long think time, a second query, close.
The think time defaults to the ramp's length + 45 s, so every session is connected and idle for about
45 s before the first one's second query.

Once a second, while the run goes, it reads from /proc the RSS (VmRSS) and CPU (utime+stime) of the client,
the wsproxy, the simulator and Redis, the client's status.json, the wsproxy's ``/stats`` and Redis's
``INFO``.  The *idle window* is the samples in which every session has started, no query is in flight and
no second query can have started yet (before the client's start + think time).  Over it:

- client KB/session = (client RSS in the window - its RSS at start) / active_sessions; "at start" is
  the client fully set up, waiting for ``--start-at`` (imports, pools, hub done; no session yet);
- wsproxy KB/session = (wsproxy RSS in the window - its RSS before the run) / ``connections_open``;
- Redis: ``used_memory`` growth / ``pubsub_channels`` (everything the sessions cost Redis, per
  subscribed channel), and split into the session hashes (``MEMORY USAGE`` of a sample of keys x their
  count), the clients' buffers (``mem_clients_normal``: the wsproxy's pub/sub pool connections) and the
  rest (the channels' own dict entries and subscriber lists);
- the client's event-loop lag p99 and max *within the window*: kit.client's status.json holds the lag
  p99 since the start only, so the client runs under a two-line wrapper that adds the cumulative
  ``loop_lag`` histogram to its status.json (``kit.client._load.STATUS_HISTOGRAMS``), and the window's
  histogram is the last idle snapshot's minus the first's (``Histogram.subtract``: exact counts).
  ``--plain-client`` runs plain ``python -m kit.client`` (then only the p99 since the start is known).

Beside the client runs a *control*: a do-nothing trio process probing its own sleep overshoot exactly like
the client's lag probe (every 50 ms), over the same window, and the client's run-queue wait
(/proc/<pid>/schedstat) is printed: on a shared machine they tell the machine's share of the lag from the
client's own.

The RSS figure is the median of the window's samples (the maximum is printed too).  HAProxy is not part of
this stack: its memory per session is not measured here.

``--profile memory`` runs the client under tracemalloc and, by SIGUSR1, takes a snapshot and a census of the
collector's objects before the sessions and again while they idle, and prints what they allocated per session
(by kit/ frame, by line, by type); the run stops after the second snapshot.  ``--profile lag`` adds a trio
Instrument and gc callbacks and prints what held the client's loop over 5 ms during the idle window.

Measured on the 2-core dev VM, shared (loadavg 5-18, machine 86-93 % busy over the window), runs of
``.venv/bin/python bench/idle_sessions.py`` (19,000 sessions, ramp 500/s, think time 83 s, 5 tokens):

    sessions  client KB/session  wsproxy KB/session  Redis B/channel (all | channel only)  client lag p99 idle
       19000               15.6                16.6              594 | 299                 96.16 ms
    (2,000 sessions: 16.5, 16.6, 716 | 401, 21.2 ms; control process p99 6.4 ms, 19,000 all ok after the idle)

``--profile lag`` at 19,000: the loop is held once a second by ``_load._reporter`` (57 ms mean, 125 ms max):
status.json is 0.8 MB of indented JSON (delivery / ttft / latency histograms), encoded by Python's pure
encoder every second.  ``--profile memory`` at 2,000: 14.7 KB/session traced; a random.Random per session
2.5 KB, two trio tasks per session (coroutines, nursery, cancel scopes, sets) about 7 KB.

Bounded: the client runs with ``--max-duration``, and the whole script has a deadline; every process started
here is stopped by its PID (the client by SIGTERM, then SIGKILL; the stack by devkit.localstack).  Traffic
stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import resource
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: runs ``python -m kit.client`` unchanged except that status.json also carries the cumulative loop-lag histogram
WRAPPER = r"""
import runpy
import kit.client._load as load
if hasattr(load, "STATUS_HISTOGRAMS") and "loop_lag" not in load.STATUS_HISTOGRAMS:
    load.STATUS_HISTOGRAMS = (*load.STATUS_HISTOGRAMS, "loop_lag")
runpy.run_module("kit.client", run_name="__main__", alter_sys=True)
"""

#: --profile: the same client under tracemalloc; each SIGUSR1 dumps a snapshot and a census of the objects the
#: collector tracks (type -> count, shallow bytes) into IDLE_PROFILE_DIR, then writes done<N>
PROFILE_PRELUDE = r"""
import collections, gc, json, os, signal, sys, tracemalloc
tracemalloc.start(int(os.environ["IDLE_PROFILE_FRAMES"]))
_out, _n = os.environ["IDLE_PROFILE_DIR"], [0]
def _census():
    count, size = collections.Counter(), collections.Counter()
    for o in gc.get_objects():
        k = f"{type(o).__module__}.{type(o).__qualname__}"
        count[k] += 1
        size[k] += sys.getsizeof(o)
    return {k: [count[k], size[k]] for k in count}
def _dump(signum, frame):
    _n[0] += 1
    tracemalloc.take_snapshot().dump(os.path.join(_out, f"snap{_n[0]}.tm"))
    with open(os.path.join(_out, f"census{_n[0]}.json"), "w") as f:
        json.dump(_census(), f)
    open(os.path.join(_out, f"done{_n[0]}"), "w").close()
signal.signal(signal.SIGUSR1, _dump)
open(os.path.join(_out, "ready"), "w").close()
"""

#: --profile lag: trio task steps and scheduler batches over 5 ms, and every collection over 2 ms, one line each
#: ("epoch kind ms detail") into IDLE_PROFILE_DIR/steps.txt (an Instrument added to the client's trio.run)
LAG_PRELUDE = r"""
import gc, os, time, trio
_log = open(os.path.join(os.environ["IDLE_PROFILE_DIR"], "steps.txt"), "w", buffering=1)
class _Steps(trio.abc.Instrument):
    t = b = 0.0
    inside = 0.0
    n = 0
    def after_io_wait(self, timeout):
        self.b, self.inside, self.n = time.perf_counter(), 0.0, 0
    def before_io_wait(self, timeout):
        d = time.perf_counter() - self.b
        if d > 0.005:
            _log.write(f"{time.time():.3f} batch {d * 1e3:.1f} steps={self.inside * 1e3:.1f}ms/{self.n}\n")
    def before_task_step(self, task):
        self.t = time.perf_counter()
    def after_task_step(self, task):
        d = time.perf_counter() - self.t
        self.inside += d
        self.n += 1
        if d > 0.005:
            _log.write(f"{time.time():.3f} step {d * 1e3:.1f} {task.name}\n")
_g = [0.0]
def _gc(phase, info):
    if phase == "start":
        _g[0] = time.perf_counter()
    elif time.perf_counter() - _g[0] > 0.002:
        _log.write(f"{time.time():.3f} gc{info['generation']} {(time.perf_counter() - _g[0]) * 1e3:.1f} "
                   f"collected={info['collected']}\n")
gc.callbacks.append(_gc)
_run = trio.run
def _run_instrumented(*a, **k):
    k["instruments"] = [*k.get("instruments", ()), _Steps()]
    return _run(*a, **k)
trio.run = _run_instrumented
"""

#: a do-nothing trio process probing its own sleep overshoot like kit.client's lag probe (every 50 ms): the
#: machine's share of the lag.  Prints "epoch_time overshoot_us" lines; bounded by its own count.
CONTROL = r"""
import sys, time, trio
async def main(n):
    for _ in range(n):
        t = trio.current_time()
        await trio.sleep(0.05)
        print(f"{time.time():.3f} {max(0, int((trio.current_time() - t - 0.05) * 1e6))}", flush=True)
trio.run(main, int(sys.argv[1]))
"""

START_DELAY_S = 8.0  # the client sets up, then waits for --start-at: its baseline RSS is read meanwhile
PAGE = os.sysconf("SC_PAGE_SIZE")
TICK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- /proc


def rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_s(pid: int) -> float | None:
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(f[11]) + int(f[12])) / TICK  # utime + stime


def sched_wait_s(pid: int) -> float | None:
    """Seconds the task waited on a run queue (runnable, not running): /proc/<pid>/schedstat's second field."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return None


def nofile(pid: int) -> str:
    try:
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                return "/".join(line.split()[3:5])
    except OSError:
        pass
    return "?"


def machine_cpu() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = f[3] + f[4]
    return sum(f) - idle, sum(f)


# ---------------------------------------------------------------- services


def redis_cmd(host: str, port: int, password: str, *cmds: list[str]) -> list[object]:
    """Send AUTH then *cmds* over one connection (RESP); return their replies (bulk strings decoded)."""

    def enc(args: list[str]) -> bytes:
        out = [f"*{len(args)}\r\n".encode()]
        for a in args:
            b = a.encode()
            out.append(b"$%d\r\n%s\r\n" % (len(b), b))
        return b"".join(out)

    with socket.create_connection((host, port), timeout=5.0) as s:
        s.sendall(enc(["AUTH", password]) + b"".join(enc(c) for c in cmds))
        f = s.makefile("rb")

        def read() -> object:
            line = f.readline().rstrip(b"\r\n")
            kind, rest = line[:1], line[1:]
            if kind in (b"+", b"-"):
                return rest.decode()
            if kind == b":":
                return int(rest)
            if kind == b"$":
                n = int(rest)
                if n < 0:
                    return None
                data = f.read(n + 2)[:-2]
                return data.decode(errors="replace")
            if kind == b"*":
                return [read() for _ in range(int(rest))]
            raise RuntimeError(f"unexpected Redis reply {line[:80]!r}")

        replies = [read() for _ in range(len(cmds) + 1)]
    return replies[1:]


def info_fields(text: str) -> dict[str, str]:
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line and not line.startswith("#"))


def redis_state(redis) -> dict:
    mem, stats, size = redis_cmd(
        redis.host, redis.port, redis.password, ["INFO", "memory"], ["INFO", "stats"], ["DBSIZE"]
    )
    m, s = info_fields(mem), info_fields(stats)
    return {
        "used_memory": int(m["used_memory"]),
        "mem_clients_normal": int(m.get("mem_clients_normal", 0)),
        "pubsub_channels": int(s.get("pubsub_channels", 0)),
        "keys": int(size),
    }


def redis_key_bytes(redis, sample: int = 50) -> tuple[float | None, str]:
    """Mean MEMORY USAGE of up to *sample* keys, and the key pattern seen (e.g. ``session:*``)."""
    cursor, keys = "0", []
    for _ in range(20):
        cursor, batch = redis_cmd(redis.host, redis.port, redis.password, ["SCAN", cursor, "COUNT", "100"])[0]
        keys += batch
        if cursor == "0" or len(keys) >= sample:
            break
    keys = keys[:sample]
    if not keys:
        return None, ""
    sizes = redis_cmd(redis.host, redis.port, redis.password, *[["MEMORY", "USAGE", k] for k in keys])
    sizes = [x for x in sizes if isinstance(x, int)]
    prefixes = sorted({k.split(":", 1)[0] + ":*" for k in keys})
    return (sum(sizes) / len(sizes) if sizes else None), ",".join(prefixes)


def wsproxy_stats(port: int) -> dict:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2.0)
        try:
            conn.request("GET", "/stats")
            return json.loads(conn.getresponse().read())
        finally:
            conn.close()
    except (OSError, ValueError):
        return {}


def read_status(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------- the run


def raise_nofile() -> tuple[int, int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # inherited by every child started here
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def wait_file(path: Path, until: float) -> bool:
    while not path.exists():
        if time.time() > until:
            return False
        time.sleep(0.1)  # poll for a file the profiled client writes, bounded by *until*
    return True


def memory_breakdown(prof: Path, sessions: int, top: int) -> dict:
    """What the sessions allocated between the two tracemalloc snapshots, per session: by the innermost
    kit/ frame and by the allocating line; and the collector's objects by type (count, shallow bytes)."""
    import collections
    import linecache
    import tracemalloc

    a, b = (tracemalloc.Snapshot.load(str(prof / f"snap{i}.tm")) for i in (1, 2))
    by_kit: collections.Counter = collections.Counter()
    by_line: collections.Counter = collections.Counter()
    total = 0
    for st in b.compare_to(a, "traceback"):
        if not st.size_diff:
            continue
        total += st.size_diff
        frames = list(st.traceback)  # oldest first; the last is the allocating line

        def where(f) -> str:
            name = f.filename.split("/site-packages/")[-1].split(str(ROOT) + "/")[-1]
            return f"{name}:{f.lineno}  {linecache.getline(f.filename, f.lineno).strip()[:70]}"

        kit = next((f for f in reversed(frames) if f"{ROOT}/kit/" in f.filename), None)
        by_kit[where(kit) if kit else "(no kit/ frame: " + where(frames[-1]) + ")"] += st.size_diff
        by_line[
            where(frames[-1]) + (f"   <- {where(kit).split('  ')[0]}" if kit and kit is not frames[-1] else "")
        ] += st.size_diff
    c1, c2 = (json.loads((prof / f"census{i}.json").read_text()) for i in (1, 2))
    census = sorted(
        ((k, v[0] - c1.get(k, [0, 0])[0], v[1] - c1.get(k, [0, 0])[1]) for k, v in c2.items()), key=lambda x: -x[2]
    )
    per = max(1, sessions)
    return {
        "traced_bytes_per_session": total / per,
        "by_kit_frame": [(k, v / per) for k, v in by_kit.most_common(top)],
        "by_line": [(k, v / per) for k, v in by_line.most_common(top)],
        "census": [(k, n / per, sz / per) for k, n, sz in census[:top]],
    }


def stop(popen: subprocess.Popen, timeout: float = 30.0) -> None:
    if popen.poll() is None:
        popen.send_signal(signal.SIGTERM)
        try:
            popen.wait(timeout)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait(10)


def lag_window(first: dict, last: dict) -> dict:
    """Loop lag p99/max (ms) between two status snapshots, from their cumulative histograms."""
    from kit.metrics import Histogram

    a, b = first.get("loop_lag_histogram"), last.get("loop_lag_histogram")
    if not a or not b:
        return {"p99_ms": None, "max_ms": None, "samples": 0, "how": "not in status.json"}
    h = Histogram.from_dict(b).subtract(Histogram.from_dict(a))
    if not h.count:
        return {"p99_ms": None, "max_ms": None, "samples": 0, "how": "no samples"}
    return {
        "p99_ms": h.percentile(99) / 1000,
        "p50_ms": h.percentile(50) / 1000,
        "max_ms": h.max / 1000,
        "samples": h.count,
        "how": "window histogram",
    }


def run(args: argparse.Namespace) -> dict:
    from devkit.localstack import local_stack

    soft, hard = raise_nofile()
    think = args.think_time if args.think_time is not None else round(args.sessions / args.ramp + 45)
    # the ramp, the think time, the second queries' ramp, and slack; the client is bounded by it too
    max_duration = int(START_DELAY_S + 2 * args.sessions / args.ramp + think + 120)
    deadline = time.monotonic() + max_duration + 120
    with tempfile.TemporaryDirectory(prefix="idle-sessions-") as tmp, local_stack(Path(tmp) / "stack") as stack:
        out = Path(tmp) / "client"
        services = {"wsproxy": stack.wsproxy.pid, "sim": stack.sim.pid, "redis": stack.redis.proc.pid}
        time.sleep(1.0)  # measurement spacing: let the services' start-up allocations settle before the baseline
        ws_base = rss_kb(services["wsproxy"])
        redis_base = redis_state(stack.redis)
        start_at = time.time() + START_DELAY_S * (2 if args.profile == "memory" else 1)
        client_args = [
            "--api-url",
            stack.api_url,
            "--ws-url",
            stack.ws_url,
            "--clients",
            str(args.sessions),
            "--processes",
            "1",
            "--queries",
            "2",
            "--tokens",
            str(args.tokens),
            "--think-time",
            str(think),
            "--ramp",
            str(args.ramp),
            "--status-interval",
            "1",
            "--max-duration",
            str(max_duration),
            "--start-at",
            f"{start_at:.3f}",
            "--output-dir",
            str(out),
            "--quiet",
            "--no-preflight",
        ]
        prelude = {"memory": PROFILE_PRELUDE, "lag": LAG_PRELUDE}.get(args.profile, "")
        argv = (
            [sys.executable, "-m", "kit.client", *client_args]
            if args.plain_client
            else [sys.executable, "-c", prelude + WRAPPER, *client_args]
        )
        prof = Path(tmp) / "profile"
        prof.mkdir()
        env = {**os.environ, "IDLE_PROFILE_DIR": str(prof), "IDLE_PROFILE_FRAMES": str(args.frames)}
        shown = ".venv/bin/python -m kit.client " + " ".join(
            shlex.quote(a)
            if not a.startswith(("http://", "ws://", "/")) and a != f"{start_at:.3f}"
            else {stack.api_url: "$API", stack.ws_url: "$WS", str(out): "$OUT"}.get(a, "$START")
            for a in client_args
        )
        log = open(Path(tmp) / "client.log", "wb")
        control_out = open(Path(tmp) / "control.txt", "wb")
        client = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        control = subprocess.Popen(
            [sys.executable, "-c", CONTROL, str(int(max_duration / 0.05))],
            cwd=ROOT,
            stdout=control_out,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        samples: list[dict] = []
        client_base = None
        idle_seen = math.inf
        profile: dict | None = None
        key_bytes, key_pattern = None, ""
        try:
            # baseline of the client: set up and waiting for --start-at
            while time.time() < start_at - 0.5 and client.poll() is None:
                client_base = rss_kb(client.pid)
                if (
                    args.profile == "memory"
                    and not (prof / "done1").exists()
                    and (prof / "ready").exists()
                    and time.time() > start_at - START_DELAY_S
                ):
                    client.send_signal(signal.SIGUSR1)  # baseline snapshot: set up, no session yet
                    wait_file(prof / "done1", start_at - 0.5)
                time.sleep(0.25)  # sampling interval before the start, bounded by start_at
            pids = {"client": client.pid, **services}
            nofiles = {k: nofile(p) for k, p in pids.items()}
            mstart = machine_cpu()
            while client.poll() is None and time.monotonic() < deadline:
                t = time.time()
                samples.append(
                    {
                        "t": t - start_at,
                        "rss": {k: rss_kb(p) for k, p in pids.items()},
                        "cpu": {k: cpu_s(p) for k, p in pids.items()},
                        "machine": machine_cpu(),
                        "wait": {k: sched_wait_s(p) for k, p in pids.items()},
                        "status": read_status(out / "status.json"),
                        "ws": wsproxy_stats(stack.wsproxy_port),
                        "redis": redis_state(stack.redis),
                        "load": Path("/proc/loadavg").read_text().split()[:3],
                    }
                )
                st = samples[-1]["status"]
                if key_bytes is None and st and _idle(st, args.sessions, samples[-1]["t"], think):
                    key_bytes, key_pattern = redis_key_bytes(stack.redis)
                    idle_seen = samples[-1]["t"]
                if (
                    args.profile == "memory"
                    and key_bytes is not None
                    and samples[-1]["t"] > idle_seen + 3
                    and (prof / "done1").exists()
                    and not (prof / "done2").exists()
                ):
                    client.send_signal(signal.SIGUSR1)  # the idle snapshot; then the run is of no further use
                    wait_file(prof / "done2", time.time() + 300)
                    profile = {
                        "active": samples[-1]["status"]["active_sessions"],
                        **memory_breakdown(prof, samples[-1]["status"]["active_sessions"], args.top),
                    }
                    break
                time.sleep(max(0.0, t + 1.0 - time.time()))  # one sample a second
            timed_out = client.poll() is None and time.monotonic() >= deadline
        finally:
            stop(client)
            stop(control)
            log.close()
            control_out.close()
        control_lines = [
            tuple(map(float, ln.split()))
            for ln in (Path(tmp) / "control.txt").read_text().splitlines()
            if len(ln.split()) == 2
        ]
        summary = read_status(out / "summary.json") or {}
        if args.profile == "lag":
            profile = {
                "lines": (prof / "steps.txt").read_text(errors="replace").splitlines()
                if (prof / "steps.txt").exists()
                else []
            }
        tail = (Path(tmp) / "client.log").read_text(errors="replace").splitlines()[-5:]
    return {
        "args": vars(args),
        "think": think,
        "command": shown,
        "wrapped": not args.plain_client,
        "nofile": {"bench": f"{soft}/{hard}", **nofiles},
        "client_base": client_base,
        "ws_base": ws_base,
        "redis_base": redis_base,
        "key_bytes": key_bytes,
        "key_pattern": key_pattern,
        "samples": samples,
        "control": control_lines,
        "machine_start": mstart,
        "summary": summary,
        "timed_out": timed_out,
        "client_log_tail": tail,
        "profile": profile,
    }


def _idle(st: dict, n: int, t: float, think: float) -> bool:
    """Every session started, no query in flight, and no second query possible yet."""
    done = st.get("queries_ok", 0) + st.get("queries_failed", 0)
    return st.get("sessions_started") == n and st.get("queries_started", 0) == done and done > 0 and t < think - 1.0


def analyse(r: dict) -> dict:
    n = r["args"]["sessions"]
    idle = [s for s in r["samples"] if s["status"] and _idle(s["status"], n, s["t"], r["think"])]
    res: dict = {"idle_samples": len(idle)}
    if not idle:
        return res
    # de-duplicate status snapshots (one per second, read once a second: the same one may be read twice)
    first, last = idle[0], idle[-1]
    active = statistics.median(s["status"]["active_sessions"] for s in idle)
    conns = [s["ws"].get("connections_open") for s in idle if s["ws"].get("connections_open") is not None]
    ws_conns = statistics.median(conns) if conns else None
    c_rss = [s["rss"]["client"] for s in idle if s["rss"]["client"]]
    w_rss = [s["rss"]["wsproxy"] for s in idle if s["rss"]["wsproxy"]]
    res.update(
        {
            "window_s": (round(first["t"], 1), round(last["t"], 1)),
            "active": active,
            "connections_open": ws_conns,
            "client_rss_kb": (r["client_base"], statistics.median(c_rss), max(c_rss)),
            "wsproxy_rss_kb": (r["ws_base"], statistics.median(w_rss), max(w_rss)),
            "client_kb_per_session": (statistics.median(c_rss) - r["client_base"]) / active if active else None,
            "wsproxy_kb_per_session": (statistics.median(w_rss) - r["ws_base"]) / ws_conns if ws_conns else None,
            "lag": lag_window(first["status"], last["status"]),
            "lag_cumulative_p99_ms": last["status"].get("loop_lag_p99_ms"),
            "lag_cumulative_max_ms": last["status"].get("loop_lag_max_ms"),
            "load": last["load"],
        }
    )
    # the control process's overshoots between the same two status snapshots
    t0, t1 = first["status"].get("time", 0), last["status"].get("time", 0)
    ctl = sorted(us for t, us in r.get("control", ()) if t0 < t <= t1)
    res["control_lag"] = (
        {"p99_ms": ctl[max(0, -(-99 * len(ctl) // 100) - 1)] / 1000, "max_ms": ctl[-1] / 1000, "samples": len(ctl)}
        if ctl
        else None
    )
    # Redis: the last idle sample against the baseline
    rb, ri = r["redis_base"], last["redis"]
    chans = ri["pubsub_channels"] - rb["pubsub_channels"]
    grow = ri["used_memory"] - rb["used_memory"]
    keys = ri["keys"] - rb["keys"]
    clients = ri["mem_clients_normal"] - rb["mem_clients_normal"]
    res["redis"] = {
        "channels": chans,
        "keys": keys,
        "used_memory_growth": grow,
        "clients_growth": clients,
        "bytes_per_channel_all": grow / chans if chans else None,
        "key_bytes": r["key_bytes"],
        "key_pattern": r["key_pattern"],
    }
    if chans and r["key_bytes"] is not None:
        res["redis"]["bytes_per_channel_only"] = (grow - clients - keys * r["key_bytes"]) / chans
    # CPU over the window, per process and for the machine
    dt = last["t"] - first["t"]
    if dt > 0:
        res["cpu_percent"] = {
            k: round(100 * (last["cpu"][k] - first["cpu"][k]) / dt, 1)
            for k in last["cpu"]
            if last["cpu"][k] is not None and first["cpu"][k] is not None
        }
        (b0, t0), (b1, t1) = first["machine"], last["machine"]
        res["runqueue_wait_ms_per_s"] = {
            k: round(1000 * (last["wait"][k] - first["wait"][k]) / dt, 1)
            for k in last["wait"]
            if last["wait"][k] is not None and first["wait"][k] is not None
        }
        res["machine_busy_percent"] = round(100 * (b1 - b0) / max(1, t1 - t0), 1)
    return res


def lag_breakdown(lines: list[str], t0: float, t1: float) -> dict:
    """--profile lag: the instrument's lines between epoch *t0* and *t1*, summed by kind (task step by task
    name, scheduler batch, collection by generation): count, total ms, max ms."""
    out: dict[str, list[float]] = {}
    for ln in lines:
        parts = ln.split(maxsplit=3)
        if len(parts) < 3 or not t0 < float(parts[0]) <= t1:
            continue
        kind, ms = parts[1], float(parts[2])
        key = {
            "step": f"task step: {parts[3] if len(parts) > 3 else '?'}",
            "batch": "scheduler batch (wall, all its steps)",
        }.get(kind, f"collection {kind}")
        c = out.setdefault(key, [0, 0.0, 0.0])
        c[0] += 1
        c[1] += ms
        c[2] = max(c[2], ms)
    return dict(sorted(out.items(), key=lambda kv: -kv[1][1]))


def _f(v, fmt="{:.1f}") -> str:
    return "-" if v is None else fmt.format(v)


def report(r: dict, a: dict) -> None:
    s = r["summary"]
    print(
        f"\nidle sessions: {r['args']['sessions']} sessions, ramp {r['args']['ramp']}/s, think time {r['think']} s, "
        f"open files (soft/hard): {r['nofile']}"
    )
    if not a.get("idle_samples"):
        print(
            "no idle window observed (sessions not all started, or a query always in flight before the think "
            "time ended): no figure.  Last status:",
            json.dumps((r["samples"] or [{}])[-1].get("status"))[:600],
        )
        print("client log tail:", *r["client_log_tail"], sep="\n  ")
        return
    red = a["redis"]
    lag = a["lag"]
    print(
        f"idle window: t = {a['window_s'][0]} .. {a['window_s'][1]} s after the client's start, "
        f"{a['idle_samples']} samples; active sessions {a['active']:.0f}, wsproxy connections_open "
        f"{_f(a['connections_open'], '{:.0f}')}"
    )
    print(
        f"  client RSS KB: start {a['client_rss_kb'][0]}, idle median {a['client_rss_kb'][1]:.0f}, max "
        f"{a['client_rss_kb'][2]}; wsproxy RSS KB: before {a['wsproxy_rss_kb'][0]}, idle median "
        f"{a['wsproxy_rss_kb'][1]:.0f}, max {a['wsproxy_rss_kb'][2]}"
    )
    print(
        f"  Redis: used_memory +{red['used_memory_growth']} B for {red['channels']} channels and {red['keys']} "
        f"keys ({red['key_pattern']}, {_f(red['key_bytes'], '{:.0f}')} B each by MEMORY USAGE); clients' "
        f"buffers +{red['clients_growth']} B; channel only {_f(red.get('bytes_per_channel_only'), '{:.0f}')} B"
    )
    print(
        f"  client loop lag in the window: p50 {_f(lag.get('p50_ms'), '{:.2f}')} ms, p99 "
        f"{_f(lag['p99_ms'], '{:.2f}')} ms, max {_f(lag['max_ms'], '{:.2f}')} ms over {lag['samples']} probes "
        f"({lag['how']}); since the start (status.json): p99 {_f(a['lag_cumulative_p99_ms'], '{:.2f}')} ms, "
        f"max {_f(a['lag_cumulative_max_ms'], '{:.2f}')} ms"
    )
    ctl = a.get("control_lag")
    if ctl:
        print(
            f"  control (an idle trio process probing the same way, same window): lag p99 {ctl['p99_ms']:.2f} ms, "
            f"max {ctl['max_ms']:.2f} ms over {ctl['samples']} probes: the machine's share"
        )
    print(f"  run-queue wait in the window, ms per s (/proc/<pid>/schedstat): {a.get('runqueue_wait_ms_per_s')}")
    print(
        f"  CPU % in the window (/proc/<pid>/stat): {a.get('cpu_percent')}; machine busy "
        f"{a.get('machine_busy_percent')} % of {os.cpu_count()} cores; loadavg {' '.join(a['load'])}"
    )
    if s:
        print(f"  run: errors {json.dumps(s.get('errors'))[:300]}") if s.get("errors") else None
        print(
            f"  run: status {s.get('status')} {s.get('status_reason', '')}; sessions {s.get('successful_sessions')}/"
            f"{s.get('total_sessions')} ok; queries {s.get('successful_queries')}/{s.get('total_queries')} ok "
            f"(the second query of each session, after the idle time, included); lost tokens {s.get('lost_tokens')}"
        )
    if r["args"]["profile"]:
        print(
            f"  (--profile {r['args']['profile']}: the figures above are taken under the profiler; use a run "
            "without --profile for them)"
        )
        pr = r.get("profile") or {}
        if r["args"]["profile"] == "memory" and pr:
            print(
                f"\n  memory profile at {pr['active']} idle sessions (tracemalloc, {r['args']['frames']} frames): "
                f"{pr['traced_bytes_per_session'] / 1024:.1f} KB/session traced by Python's allocators"
            )
            print("  by the innermost kit/ frame, bytes/session:")
            for k, v in pr["by_kit_frame"]:
                print(f"    {v:8.0f}  {k}")
            print("  by allocating line, bytes/session:")
            for k, v in pr["by_line"]:
                print(f"    {v:8.0f}  {k}")
            print("  objects the collector tracks, by type, per session: count, shallow bytes:")
            for k, n, sz in pr["census"]:
                print(f"    {n:6.2f}  {sz:7.0f}  {k}")
        elif r["args"]["profile"] == "lag":
            idle = [
                x for x in r["samples"] if x["status"] and _idle(x["status"], r["args"]["sessions"], x["t"], r["think"])
            ]
            if idle:
                t0, t1 = idle[0]["status"]["time"], idle[-1]["status"]["time"]
                print(
                    f"\n  lag profile over the idle window ({t1 - t0:.0f} s): what held the loop > 5 ms "
                    "(count, total ms, max ms); collections > 2 ms"
                )
                for k, (n, tot, mx) in lag_breakdown(pr.get("lines", []), t0, t1).items():
                    print(f"    {n:5d}  {tot:8.1f}  {mx:7.1f}  {k}")
    if r["timed_out"]:
        print("  the script's deadline stopped the client")
    print(
        "\n  sessions  client KB/session  wsproxy KB/session  Redis B/channel (all | channel only)  client lag p99 idle"
    )
    print(
        f"  {a['active']:>8.0f}  {_f(a['client_kb_per_session']):>17}  {_f(a['wsproxy_kb_per_session']):>18}  "
        f"{_f(red['bytes_per_channel_all'], '{:.0f}'):>15} | {_f(red.get('bytes_per_channel_only'), '{:.0f}'):<18}"
        f"  {_f(lag['p99_ms'], '{:.2f}')} ms"
    )
    print("  HAProxy: not in this stack (devkit.localstack has none): not measured")
    print(
        f"  command ({'under bench/idle_sessions.py WRAPPER: status.json also holds loop_lag' if r['wrapped'] else 'plain'}):"
        f"\n    {r['command']}"
    )
    print(
        f"\n  targets (issue 18): client <= 20 KB/session: "
        f"{'met' if a['client_kb_per_session'] is not None and a['client_kb_per_session'] <= 20 else 'NOT met'}; "
        f"{r['args']['sessions']} sessions in one process with idle lag p99 < 20 ms: "
        f"{'met' if lag['p99_ms'] is not None and lag['p99_ms'] < 20 and a['active'] >= r['args']['sessions'] else 'NOT met'}"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument(
        "--sessions",
        type=int,
        default=19_000,
        help="sessions of the one client process (default 19,000: its descriptor cap here)",
    )
    ap.add_argument("--ramp", type=float, default=500.0, help="sessions started per second (default 500)")
    ap.add_argument("--tokens", type=int, default=5, help="tokens of each query (default 5)")
    ap.add_argument(
        "--think-time",
        type=float,
        default=None,
        help="seconds between a session's two queries (default: the ramp's length + 45)",
    )
    ap.add_argument(
        "--plain-client",
        action="store_true",
        help="run plain python -m kit.client (the idle window's lag then unknown: cumulative only)",
    )
    ap.add_argument(
        "--profile",
        choices=("memory", "lag"),
        help="memory: tracemalloc + object census of the client, baseline vs idle, per session (the "
        "run stops after the idle snapshot); lag: what holds the client's loop while idle "
        "(trio Instrument + gc callbacks)",
    )
    ap.add_argument("--frames", type=int, default=10, help="--profile memory: tracemalloc frames (default 10)")
    ap.add_argument("--top", type=int, default=15, help="--profile memory: rows of each list (default 15)")
    ap.add_argument("--json", type=Path, help="also write the raw samples and figures here")
    args = ap.parse_args()
    if args.profile and args.plain_client:
        ap.error("--profile runs the client under its wrapper: not with --plain-client")
    if not 1 <= args.sessions <= 100_000 or args.ramp <= 0:
        ap.error("--sessions 1..100000 and --ramp > 0")
    r = run(args)
    a = analyse(r)
    report(r, a)
    if args.json:
        args.json.write_text(json.dumps({"run": {k: v for k, v in r.items()}, "figures": a}, default=str))
    return 0 if a.get("idle_samples") else 1


if __name__ == "__main__":
    sys.exit(main())
