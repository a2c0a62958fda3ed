#!/usr/bin/env python3
"""What watching a generator host costs that host: a command a second against one watcher (kit/run/_jobwatch.py).

    .venv/bin/python bench/watch_cost.py [--seconds 30] [--pairs 2]      # root: it makes a 1-host lab

Brings up a one-host lab (kit.lab: its own network namespace, sshd and address; prefix ``lkw``,
10.213.9.0/24), starts one background job there as ``fab run`` starts a generator
(``kit.run.start_job``, over SSH) that rewrites a 20 KB ``out/status.json`` every second, as a
generator process does, then watches it for ``--seconds`` each way, interleaved ``--pairs`` times:

- ``poll``: ``job_state`` over SSH once a second, what ``fab run`` did until a0fa129: one remote command,
  so one SSH session and one start of the user's login shell, each second;
- ``watch``: one :class:`kit.run._jobwatch.JobWatch`, its last round read once a second.

The cost on the host: the CPU (utime + stime, and the same of their reaped children) of every process in
the lab host's network namespace but the job's own, from /proc, per second of watching; the controller's
own CPU (this process: Fabric and its threads) beside it.  The login shell is the machine's: a
``~/.bashrc`` that initialises a toolchain (pyenv here) is what makes a command expensive, and what a
user's hosts may have too; the script prints what one ``bash -c true`` costs as sshd starts it.

Bounded: the job ends by itself after ``--pairs`` x 2 x ``--seconds`` + 60 s, and is stopped by its PID;
the lab is removed at the end however the script ends.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kit.inventory import load_inventory  # noqa: E402
from kit.lab import LabConfig, lab_down, lab_up, parse_layout  # noqa: E402
from kit.lab._netns import netns_pids  # noqa: E402
from kit.run import JobWatch, close_all, connect, job_state, start_job, stop_job  # noqa: E402

#: a generator's status file, as big as one of a lab run's (coarse histograms): rewritten every second, atomically
WRITER = """
import json, os, sys, time
blob = {"t": 0, "histograms": {str(i): [i, i * 2, i * 3] for i in range(900)}}
for i in range(int(sys.argv[1])):
    blob["t"] = i
    os.makedirs("out", exist_ok=True)
    with open("out/status.tmp", "w") as f:
        json.dump(blob, f)
    os.replace("out/status.tmp", "out/status.json")
    time.sleep(1)
"""


def _cpu_ticks(pid: int) -> tuple[int, int]:
    """(utime + stime + cutime + cstime in clock ticks, session id) of *pid*; (0, -1) when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0, -1
    return sum(int(f) for f in fields[11:15]), int(fields[3])


def namespace_cpu_s(ns: str, exclude_sessions: set[int]) -> float:
    """CPU seconds so far of every process in network namespace *ns* outside *exclude_sessions*."""
    total = 0
    for pid in netns_pids(ns):
        ticks, sid = _cpu_ticks(pid)
        if sid not in exclude_sessions:
            total += ticks
    return total / os.sysconf("SC_CLK_TCK")


def login_shell_cost_s() -> float:
    """CPU of one ``bash -c true`` started as sshd starts a command's shell: bash reads ~/.bashrc when it
    sees SSH_CLIENT and is not nested in another shell (SHLVL below 2 once it counts itself)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(["bash", "-c", "true"], env={**os.environ, "SSH_CLIENT": "10.0.0.1 1 22", "SHLVL": "0"}, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def one_window(mode: str, c, ns: str, job_dir: str, sid: int, seconds: float) -> tuple[float, float]:
    """(host CPU ms per second, controller CPU ms per second) over *seconds* of watching by *mode*."""
    watch = JobWatch(c, "python3", {"job": job_dir}, "out/status.json", seconds + 30) if mode == "watch" else None
    try:
        if watch is not None and not watch.wait_first():
            raise RuntimeError("the watcher sent no round")
        host0, ctl0, t0 = namespace_cpu_s(ns, {sid}), time.process_time(), time.monotonic()
        seen = 0
        while time.monotonic() - t0 < seconds:
            st = watch.latest()["job"] if watch is not None else job_state(c, job_dir, "out/status.json")
            if not st["alive"] or not st["status"]:
                raise RuntimeError(f"{mode}: the job is not reported alive with its status: {st}")
            seen += 1
            time.sleep(max(0.0, t0 + seen - time.monotonic()))  # once a second, as fab run's live view
        elapsed = time.monotonic() - t0
        return (
            (namespace_cpu_s(ns, {sid}) - host0) / elapsed * 1000,
            (time.process_time() - ctl0) / elapsed * 1000,
        )
    finally:
        if watch is not None:
            watch.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=30.0, help="seconds of watching per window (default 30)")
    ap.add_argument("--pairs", type=int, default=2, help="poll/watch pairs, interleaved (default 2)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("watch_cost.py: needs root (it makes a lab host: a network namespace and its sshd)", file=sys.stderr)
        return 2
    print(f"one 'bash -c true' as sshd starts it on this machine: {login_shell_cost_s() * 1000:.0f} ms of CPU")
    tmp = Path(tempfile.mkdtemp(prefix="watch-cost-"))
    cfg = LabConfig(root=tmp / "lab", prefix="lkw", subnet="10.213.9.0/24", inventory_path=tmp / "lab.yml")
    conns = []
    try:
        lab_up(1, parse_layout("redis=1,haproxy=1,wsproxy=1,sim=1,generators=1"), cfg=cfg)
        host = next(iter(load_inventory(cfg.inventory_path).hosts.values()))
        c = connect(host)
        conns.append(c)
        job_dir = f"{tmp}/job"
        lifetime = int(args.pairs * 2 * args.seconds + 60)
        pid = start_job(c, job_dir, ["python3", "-c", WRITER, str(lifetime)])
        try:
            results: dict[str, list[tuple[float, float]]] = {"poll": [], "watch": []}
            for p in range(args.pairs):
                for mode in ("poll", "watch"):
                    host_ms, ctl_ms = one_window(mode, c, host.name, job_dir, pid, args.seconds)
                    results[mode].append((host_ms, ctl_ms))
                    print(
                        f"pair {p + 1} {mode:>5}: host {host_ms:6.1f} ms/s, controller {ctl_ms:6.1f} ms/s", flush=True
                    )
        finally:
            stop_job(c, job_dir, grace=2)
        print(f"\nwatching one generator job, {args.seconds:g} s windows, medians of {args.pairs}:")
        for mode, rows in results.items():
            host_ms = statistics.median(r[0] for r in rows)
            ctl_ms = statistics.median(r[1] for r in rows)
            print(
                f"  {mode:>5}: the host {host_ms:6.1f} ms of CPU a second ({host_ms / 10:.1f} % of a core), controller {ctl_ms:.1f}"
            )
        return 0
    finally:
        close_all(conns)
        lab_down(cfg)


if __name__ == "__main__":
    sys.exit(main())
