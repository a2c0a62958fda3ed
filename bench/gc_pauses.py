#!/usr/bin/env python3
"""Garbage-collector pauses of one client process, Python's defaults against the kit's (kit/_gc.py).

    .venv/bin/python bench/gc_pauses.py                         # 2,500 sessions, think time 10 s, 2 pairs
    .venv/bin/python bench/gc_pauses.py --sessions 1000 --think-time 0 --pairs 3

Starts devkit.localstack once (Redis + simulator + wsproxy on loopback), then runs one ``python -m kit.client``
process per condition, alternating ``KIT_GC=default`` (Python's 700/10/10 thresholds, nothing frozen) and the
kit's settings, pair by pair, so both see the same machine.  The client runs under a small wrapper that
times every collection through ``gc.callbacks``.  For each run it prints the collections per generation
with their longest pause, the delivery latency p50/p99/p99.9 and max (token ``ts`` to receipt, the
whole chain), the client's loop lag p99 and its CPU per token (getrusage of the child).

Bounded: fixed sessions x 3 queries of 43 tokens at the default 50 ms pace; each run has a deadline.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEADLINE_S = 900

# runs kit.client's main() with every collection timed; writes {generation: [pause_ms, ...]} at exit
WRAPPER = r"""
import atexit, gc, json, os, sys, time
start, pauses = [0.0], {}
def timed(phase, info):
    if phase == "start":
        start[0] = time.perf_counter()
    else:
        pauses.setdefault(str(info["generation"]), []).append((time.perf_counter() - start[0]) * 1000)
gc.callbacks.append(timed)
def dump():
    with open(os.environ["GC_PAUSES_OUT"], "w") as fh:
        json.dump(pauses, fh)
atexit.register(dump)
from kit.client.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


def one_run(stack, tmp: Path, name: str, sessions: int, think: float) -> dict:
    out = tmp / name
    pauses_file = tmp / f"{name}.gc.json"
    env = dict(os.environ, GC_PAUSES_OUT=str(pauses_file), PYTHONPATH=str(ROOT))
    env["KIT_GC"] = "default" if name.startswith("python") else "kit"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            WRAPPER,
            "--api-url",
            stack.api_url,
            "--ws-url",
            stack.ws_url,
            "--clients",
            str(sessions),
            "--queries",
            "3",
            "--ramp",
            "250",
            "--processes",
            "1",
            "--think-time",
            str(think),
            "--output-dir",
            str(out),
            "--quiet",
            "--no-preflight",
        ],
        env=env,
        timeout=DEADLINE_S,
        capture_output=True,
        text=True,
        check=False,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode not in (0, 1):
        raise SystemExit(f"gc_pauses: the client exited {proc.returncode}: {proc.stderr.strip()[-400:]}")
    s = json.loads((out / "summary.json").read_text())
    pauses = json.loads(pauses_file.read_text())
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    d = s["delivery_latency_ms"]
    return {
        "condition": name.split("-")[0],
        "success": s["success_rate"],
        "tokens": s["total_tokens"],
        "gc": {g: (len(v), max(v)) for g, v in sorted(pauses.items())},
        "p50": d["p50"],
        "p99": d["p99"],
        "p99_9": d["p99_9"],
        "max": d["max"],
        "lag_p99": s["generator"]["loop_lag_p99_ms"],
        "us_per_token": cpu * 1e6 / max(1, s["total_tokens"]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", type=int, default=2500)
    ap.add_argument("--think-time", type=float, default=10.0)
    ap.add_argument("--pairs", type=int, default=2)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from devkit.localstack import local_stack

    rows = []
    with tempfile.TemporaryDirectory(prefix="gc-pauses-") as tmp, local_stack(Path(tmp) / "stack") as stack:
        for i in range(args.pairs):
            for name in ("python", "kit"):
                rows.append(one_run(stack, Path(tmp), f"{name}-{i}", args.sessions, args.think_time))
                r = rows[-1]
                gcs = " ".join(f"gen{g}:{n}x<={mx:.1f}ms" for g, (n, mx) in r["gc"].items()) or "none"
                print(
                    f"{r['condition']:>6}  success {r['success']:.2f}%  delivery p50/p99/p99.9/max "
                    f"{r['p50']:.2f}/{r['p99']:.2f}/{r['p99_9']:.2f}/{r['max']:.1f} ms  loop lag p99 "
                    f"{r['lag_p99']:.2f} ms  {r['us_per_token']:.1f} us/token  collections: {gcs}",
                    flush=True,
                )
    for cond in ("python", "kit"):
        mine = sorted(r["p99"] for r in rows if r["condition"] == cond)
        print(f"median delivery p99, {cond}: {mine[len(mine) // 2]:.2f} ms over {len(mine)} run(s)")


if __name__ == "__main__":
    main()
