#!/usr/bin/env python3
"""Where the machine's CPU goes while N lab sessions sit connected and silent.

    .venv/bin/python bench/lab_idle.py                         # 50,000 sessions (the 13-host lab)
    .venv/bin/python bench/lab_idle.py --sessions 10000 --think 120

Builds the lab ``scale_run.py --sessions N`` builds (same arithmetic, same ``.lab/bench`` prefix and subnet),
deploys it, and runs ``fab run --clients N --queries 2 --think-time T --ramp R`` (through kit.run), so every
session asks one query, then idles for T seconds, then asks its second.  Every 5 s, beside the run, it reads
the whole machine from /proc: the CPU line of /proc/stat (user, system, softirq ...) and utime+stime of every
process (kit processes, HAProxy, Redis, the monitors, sshd, kernel threads), named by command.  The *idle
window* is the run's seconds (timeline.csv) with every session connected and not one token; over it, it
prints the machine's split in cores and each command's cores, busiest first.  The samples are kept beside
the run's tarball (``<run>.machine-samples.jsonl``).

Measured on the 2-core dev VM, 2026-12-05 07:03 (results/20261205-070350-c50000-idle.*; before d0d66bd):
50,000 idle sessions, 85 s window: machine 61 % busy (user 0.45, system 0.67, softirq 0.11 cores); clients
0.235, HAProxy 0.168, wsproxy 0.130 cores (the pings, 3,333 a second), the 13 hosts' monitors 0.020 each
(0.26: listing /proc/PID/fd, fixed since), the simulator and Redis under 0.01.

Bounded: the run has --max-duration; the lab is torn down (teardown.yml, lab-down) whatever happens.
Needs root, like scale_run.py.  Traffic stays on the lab's namespaces.
"""

from __future__ import annotations

import argparse
import collections
import csv
import json
import os
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import scale_run  # noqa: E402

from kit.lab import lab_down, lab_up, parse_layout  # noqa: E402
from kit.run import RunOptions, execute  # noqa: E402

HZ = os.sysconf("SC_CLK_TCK")
SPLIT = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def machine_sample() -> dict:
    """/proc/stat's CPU line and utime+stime (s) and command of every process now."""
    with open("/proc/stat") as fh:
        cpu = [int(x) for x in fh.readline().split()[1 : 1 + len(SPLIT)]]
    procs = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as fh:
                raw = fh.read()
            with open(f"/proc/{name}/cmdline", "rb") as fh:
                argv = [a.decode(errors="replace") for a in fh.read().split(b"\0")[:3] if a]
        except OSError:
            continue
        f = raw[raw.rindex(")") + 2 :].split()
        comm = raw[raw.index("(") + 1 : raw.rindex(")")]
        procs[name] = [comm, (int(f[11]) + int(f[12])) / HZ, command_name(comm, argv)]
    return {"ts": time.time(), "cpu": cpu, "procs": procs}


def command_name(comm: str, argv: list[str]) -> str:
    """A short name for grouping: ``kit.client``, ``hostmon``, ``haproxy``, ``sshd`` ..."""
    joined = " ".join(argv)
    if "-m" in argv:
        return argv[argv.index("-m") + 1] if argv.index("-m") + 1 < len(argv) else comm
    if "hostmon" in joined:
        return "hostmon"
    return comm


def idle_window(timeline: Path) -> tuple[float, float] | None:
    """The first and last second with every session connected and no token, None when there is none."""
    rows = list(csv.DictReader(timeline.open()))
    peak = max((int(float(r["active_sessions"] or 0)) for r in rows), default=0)
    idle = [
        int(r["second"]) for r in rows if int(float(r["active_sessions"] or 0)) == peak and int(r["tokens"] or 0) == 0
    ]
    return (idle[0] + 2, idle[-1]) if len(idle) > 10 else None  # 2 s in: the last answers' tails


def report(samples: list[dict], a: float, b: float) -> None:
    first = min(samples, key=lambda s: abs(s["ts"] - a))
    last = min(samples, key=lambda s: abs(s["ts"] - b))
    dt = last["ts"] - first["ts"]
    d = [y - x for x, y in zip(first["cpu"], last["cpu"])]
    cores = (os.cpu_count() or 1) / max(1, sum(d))
    print(f"idle window {dt:.0f} s: machine " + ", ".join(f"{k} {v * cores:.3f}" for k, v in zip(SPLIT, d)) + " cores")
    by = collections.Counter()
    for pid, (comm, cpu, name) in last["procs"].items():
        old = first["procs"].get(pid)
        if old is not None and old[0] == comm:
            by[name] += cpu - old[1]
    print(f"processes {sum(by.values()) / dt:.3f} cores:")
    for name, cpu in by.most_common(15):
        print(f"  {name:<40} {cpu / dt:.3f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", type=int, default=50000)
    ap.add_argument("--think", type=float, default=300.0, help="seconds each session idles between its queries")
    ap.add_argument("--ramp", type=float, default=250.0, help="sessions started per second")
    args = ap.parse_args()
    if args.think <= args.sessions / args.ramp:
        print(
            f"lab_idle: --think {args.think:g} must exceed the ramp's {args.sessions / args.ramp:.0f} s to leave an idle window"
        )
        return 2
    hosts, layout, _, _ = scale_run.scale_plan(args.sessions, 8000.0)
    base, cfg = scale_run.bench_lab()
    samples: list[dict] = []
    stop = threading.Event()

    def sampler() -> None:
        while not stop.is_set():
            samples.append(machine_sample())
            stop.wait(5)

    run_id = time.strftime("%Y%m%d-%H%M%S") + f"-c{args.sessions}-idle"
    try:
        lab_up(hosts, parse_layout(layout), cfg=cfg)
        if scale_run.playbook(cfg.inventory_path, "site.yml", base / "site.log"):
            print(f"site.yml failed: see {base / 'site.log'}")
            return 1
        threading.Thread(target=sampler, daemon=True).start()
        rc = execute(
            RunOptions(
                inventory=cfg.inventory_path,
                clients=args.sessions,
                queries=2,
                ramp=args.ramp,
                think_time=args.think,
                max_duration=args.sessions / args.ramp + args.think + 200,
                run_id=run_id,
            ),
            out=lambda line: None,
        )
    finally:
        stop.set()
        scale_run.playbook(cfg.inventory_path, "teardown.yml", base / "teardown.log")
        lab_down(cfg)
    run_dir = REPO / "results" / run_id
    with open(f"{run_dir}.machine-samples.jsonl", "w") as fh:
        fh.writelines(json.dumps(s) + "\n" for s in samples)
    window = idle_window(run_dir / "timeline.csv")
    if window is None:
        print(f"{run_id}: no idle window in timeline.csv (exit {rc})")
        return 1
    report(samples, *window)
    print(f"results: {run_dir}.tar.gz, {run_dir}.machine-samples.jsonl (exit {rc})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
