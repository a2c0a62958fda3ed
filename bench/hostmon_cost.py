#!/usr/bin/env python3
"""What one hostmon sample costs, against how many descriptors the watched processes hold.

    .venv/bin/python bench/hostmon_cost.py                 # one process holding 17,000 sockets
    .venv/bin/python bench/hostmon_cost.py --fds 2000 --samples 200

Starts one process holding ``--fds`` sockets (socket pairs; an HAProxy or a wsproxy at 8,500 sessions
holds 17,000), then takes ``--samples`` samples of it exactly as ``fab run``'s monitor does each second
(kit.hostmon: the host's figures, then the process tree's CPU, memory, descriptors and threads) and
prints the CPU (user+system of this process) per sample: once counting the descriptors as the kernel
gives them since Linux 6.2 (the size of /proc/PID/fd), once listing the directory as on older kernels.
Pairs interleave (stat, list, stat, list, ...) so the machine's drift falls on both alike.

Measured on the 2-core dev VM (kernel 6.18), 17,000 descriptors, 50 samples x 3 pairs:
listing 15.4 ms a sample, stat 1.2 ms.  In the lab at 50,000 sessions (13 hosts, each watching
processes of 8,600-17,000 descriptors) the 13 monitors used 0.020 cores each while the sessions
idled, 0.26 of the 2 cores all hosts share (per-process utime+stime from /proc over 85 s).

Bounded: the holder is killed by its PID at the end; nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kit import hostmon  # noqa: E402

HOLD = "import socket, sys\nk = [socket.socketpair() for _ in range({pairs})]\nprint(1, flush=True)\nsys.stdin.read()"


def listing_only(path: str, *a, _stat=os.stat, **kw) -> os.stat_result:
    """os.stat as a kernel before 6.2 answers it for /proc/PID/fd: size 0, so hostmon lists the directory."""
    st = _stat(path, *a, **kw)
    return os.stat_result((*st[:6], 0, *st[7:])) if str(path).endswith("/fd") else st


def ms_per_sample(roots: list[tuple[str, int]], samples: int) -> float:
    prev = hostmon._net()
    t = time.process_time()
    for _ in range(samples):
        _, prev = hostmon.sample(prev, 1.0)
        hostmon.sample_procs(roots)
    return (time.process_time() - t) / samples * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fds", type=int, default=17000, help="descriptors the watched process holds (even)")
    ap.add_argument("--samples", type=int, default=50)
    ap.add_argument("--pairs", type=int, default=3)
    args = ap.parse_args()
    hard = __import__("resource").getrlimit(__import__("resource").RLIMIT_NOFILE)[1]
    if not 2 <= args.fds <= hard - 100:
        print(f"hostmon_cost: --fds {args.fds}: give 2 to {hard - 100} (the open-files hard limit less 100)")
        return 2
    code = HOLD.format(pairs=args.fds // 2)
    preexec = lambda: __import__("resource").setrlimit(__import__("resource").RLIMIT_NOFILE, (hard, hard))  # noqa: E731
    with subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, preexec_fn=preexec
    ) as holder:
        try:
            holder.stdout.readline()
            roots = [("haproxy", holder.pid)]
            print(f"watched: pid {holder.pid} holding {hostmon._fds(holder.pid)} descriptors")
            hostmon._cpu_percent()
            by = {"stat": [], "list": []}
            for _ in range(args.pairs):
                by["stat"].append(ms_per_sample(roots, args.samples))
                real = hostmon.os.stat
                hostmon.os.stat = listing_only
                try:
                    by["list"].append(ms_per_sample(roots, args.samples))
                finally:
                    hostmon.os.stat = real
            for how, ms in by.items():
                print(f"{how:>5}: {statistics.median(ms):6.2f} ms CPU a sample (median of {args.pairs}: {ms})")
        finally:
            holder.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
