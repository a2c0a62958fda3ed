#!/usr/bin/env python3
"""Scale run: ``fab run --clients 10000`` on a lab on this machine, next to the seed's stress result.

    .venv/bin/python bench/scale_run.py                        # 11 roles on 10 hosts, 10000 x 3
    .venv/bin/python bench/scale_run.py --clients 2000 --queries 2 --keep

Builds a lab (default: redis, 2 haproxy, 3 wsproxy, 2 sim, 3 generators on 10 namespace hosts;
on this machine one HAProxy holds ~9,900 sessions, so 10,000 need two), deploys it with
playbooks/site.yml over SSH, runs the load through kit.run (the code behind ``fab run``), prints
a table, and tears everything down (teardown.yml, lab-down) unless --keep.  Needs root.
The lab lives under .lab/bench/ (prefix lkb, 10.213.2.0/24) so it never touches a user's lab.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kit.lab import LabConfig, lab_down, lab_up, parse_layout  # noqa: E402
from kit.report import host_metrics  # noqa: E402
from kit.run._plan import parse_threshold  # noqa: E402
from kit.run._run import RunOptions, execute  # noqa: E402

SEED = {"clients": 5000, "success": "99.46%", "p50": "15.81 s", "p99": "26.82 s", "tps": "337",
        "lost": "not measured"}


def playbook(inv: Path, book: str, log: Path) -> int:
    with open(log, "w") as fh:
        return subprocess.run([str(REPO / ".venv/bin/ansible-playbook"), "-i", str(inv), str(REPO / "playbooks" / book)],
                              cwd=REPO, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL).returncode


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hosts", type=int, default=10)
    ap.add_argument("--layout", default="redis=1,haproxy=2,wsproxy=3,sim=2,generators=3")
    ap.add_argument("--clients", type=int, default=10000)
    ap.add_argument("--queries", type=int, default=3)
    ap.add_argument("--ramp", type=float, default=250.0, help="sessions started per second over all generators")
    ap.add_argument("--max-duration", type=float, default=1800.0)
    ap.add_argument("--keep", action="store_true", help="leave the lab and the deployment up")
    args = ap.parse_args()
    base = REPO / ".lab" / "bench"
    inv_dir = base / "inventory"
    inv_dir.mkdir(parents=True, exist_ok=True)
    if not (inv_dir / "group_vars").exists():
        (inv_dir / "group_vars").symlink_to(REPO / "inventory" / "group_vars")
    cfg = LabConfig(root=base / "lab", prefix="lkb", subnet="10.213.2.0/24", inventory_path=inv_dir / "lab.yml")
    t0 = time.time()
    rc = 1
    try:
        state = lab_up(args.hosts, parse_layout(args.layout), cfg=cfg)
        print(f"lab: {args.hosts} hosts {state['groups']} ({time.time() - t0:.0f} s)", flush=True)
        t1 = time.time()
        if playbook(cfg.inventory_path, "site.yml", base / "site.log"):
            print(f"site.yml failed: see {base / 'site.log'}")
            return 1
        print(f"deploy: {time.time() - t1:.0f} s", flush=True)
        run_id = time.strftime("%Y%m%d-%H%M%S") + f"-c{args.clients}-scale"
        rc = execute(RunOptions(inventory=cfg.inventory_path, clients=args.clients, queries=args.queries,
                                ramp=args.ramp, max_duration=args.max_duration, run_id=run_id,
                                thresholds=[parse_threshold("lost==0")]))
        run_dir = REPO / "results" / run_id
        s = json.loads((run_dir / "summary.json").read_text())
        hosts = host_metrics(run_dir)
        gens = s["run"]["inventory"]["groups"]["generators"]
        gen_cpu = ", ".join(f"{h} {hosts[h]['cpu_mean']:.0f}/{hosts[h]['cpu_peak']:.0f}%" for h in gens if h in hosts)
        rows = [
            ("clients", f"{args.clients} x {args.queries}", f"{SEED['clients']} x 3"),
            ("success rate", f"{s['success_rate']:.2f}%", SEED["success"]),
            ("lost tokens", str(s["lost_tokens"]), SEED["lost"]),
            ("latency p50", f"{s['latency_ms']['p50'] / 1000:.2f} s", SEED["p50"]),
            ("latency p99", f"{s['latency_ms']['p99'] / 1000:.2f} s", SEED["p99"]),
            ("TPS", f"{s['tps']:.0f}", SEED["tps"]),
            ("generator CPU mean/peak (host)", gen_cpu, "-"),
            ("generator overloaded", str(s["generator"]["generator_overloaded"]), "-"),
            ("partial", str(s["partial"]), "-"),
        ]
        print(f"\n{'metric':<32} {'this kit (lab, 1 machine, 2 cores)':<40} seed (docker, published)")
        for name, ours, seed in rows:
            print(f"{name:<32} {ours:<40} {seed}")
        print(f"\nresults: {run_dir}.tar.gz")
    finally:
        if not args.keep:
            playbook(cfg.inventory_path, "teardown.yml", base / "teardown.log")
            lab_down(cfg)
    return rc


if __name__ == "__main__":
    sys.exit(main())
