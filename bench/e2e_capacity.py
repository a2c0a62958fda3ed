#!/usr/bin/env python3
"""End-to-end capacity of this machine: ``fab run`` steps on the local stack, CPU per component from /proc.

    .venv/bin/python bench/e2e_capacity.py --deploy                  # site.yml first, then the steps
    .venv/bin/python bench/e2e_capacity.py --steps 250 500 1000 1500 2000 3000 --queries 5

The whole chain for real: the stack ``./loadkit run`` deploys (inventory/local.yml:
Redis, HAProxy, 2 wsproxy instances, the simulator with 2 workers, under the kit's
supervisord), loaded by ``fab run`` (kit.run.execute, the code behind it) at the default
pace (tokens 50 ms apart per session, 43 per answer, HTTP create/run/close per
session and query).  For each step it prints tokens/s delivered (whole run and
the busiest 5 s), delivery latency p50/p99, success, whether a generator was
overloaded, and CPU per delivered token of each component.

CPU is read twice, independently: (1) by this script from /proc/<pid>/stat of every
supervisord program (PIDs from ``supervisorctl pid``, plus their descendants) before
and after the step, and for the client from each generator process's own getrusage
(its run record's ``cpu_s``); (2) by the run itself (summary.json ``components``,
sampled every second by kit.hostmon).  The table shows (1); the last column is the
run's own total, so the two can be compared.

It ends with the highest step that had 100 % success and delivery p99 < 50 ms.
Bounded: each step has --max-duration.  Needs root (the deployed stack).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kit.run import RunOptions, execute, parse_threshold  # noqa: E402

INVENTORY = REPO / "inventory" / "local.yml"
KIT_ROOT = Path("/opt/wsproxy-loadkit/localhost")
SUPERVISORCTL = ["/usr/bin/supervisorctl", "-c", str(KIT_ROOT / "supervisor" / "supervisord.conf")]
PROGRAMS = {"redis": "redis", "haproxy": "haproxy", "sim": "sim", "wsproxy-0": "wsproxy", "wsproxy-1": "wsproxy"}
TICK = os.sysconf("SC_CLK_TCK")
COMPONENTS = ("client", "sim", "wsproxy", "haproxy", "redis")


def _pid(program: str) -> int | None:
    out = subprocess.run([*SUPERVISORCTL, "pid", program], capture_output=True, text=True).stdout.strip()
    return int(out) if out.isdigit() and out != "0" else None


def _tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(d))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def _cpu(pid: int) -> float:
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(f[11]) + int(f[12])) / TICK


def service_cpu() -> dict[int, tuple[str, float]]:
    """pid -> (component, cumulative CPU seconds) of every supervised program's process tree."""
    out = {}
    for program, comp in PROGRAMS.items():
        root = _pid(program)
        if root is None:
            continue
        for p in _tree(root):
            out[p] = (comp, _cpu(p))
    return out


def client_cpu(run_dir: Path) -> float:
    total = 0.0
    for h in run_dir.glob("generators/*/out/histograms.json"):  # merged: its runs list every process once
        for r in json.loads(h.read_text()).get("runs", []):
            total += float(r.get("cpu_s") or 0.0)
    return total


def peak_tps(run_dir: Path, window: int = 5) -> float:
    """Tokens/s of the busiest *window* seconds of the merged per-second timeline."""
    path = run_dir / "timeline.csv"
    if not path.exists():
        return 0.0
    import csv

    rows = list(csv.DictReader(open(path)))
    toks = [int(float(r.get("tokens") or 0)) for r in rows]
    if not toks:
        return 0.0
    return max(sum(toks[i : i + window]) for i in range(max(1, len(toks) - window + 1))) / window


def step(n: int, args: argparse.Namespace) -> dict:
    run_id = time.strftime("%Y%m%d-%H%M%S") + f"-c{n}-e2e"
    before = service_cpu()
    rc = execute(
        RunOptions(
            inventory=INVENTORY,
            clients=n,
            queries=args.queries,
            ramp=args.ramp,
            max_duration=args.max_duration,
            run_id=run_id,
            live=False,
            thresholds=[parse_threshold("delivery_p99<50ms")],
        ),
        out=lambda s: None,
    )
    after = service_cpu()
    run_dir = REPO / "results" / run_id
    s = json.loads((run_dir / "summary.json").read_text())
    cpu = dict.fromkeys(COMPONENTS, 0.0)
    for pid, (comp, c1) in after.items():
        c0 = before.get(pid, (comp, 0.0))[1]
        cpu[comp] += max(0.0, c1 - c0)
    cpu["client"] = client_cpu(run_dir)
    tokens = s["total_tokens"]
    total = sum(cpu.values())
    comps = s.get("components") or []
    return {
        "clients": n,
        "rc": rc,
        "tokens": tokens,
        "tps": s["tps"],
        "peak_tps": peak_tps(run_dir),
        "delivery_p50": (s["delivery_latency_ms"] or {}).get("p50"),
        "delivery_p99": (s["delivery_latency_ms"] or {}).get("p99"),
        "success": s["success_rate"],
        "lost": s["lost_tokens"],
        "overloaded": s["generator"]["generator_overloaded"],
        "us": {k: (v * 1e6 / tokens if tokens else None) for k, v in cpu.items()},
        "cpu_s": cpu,
        "kit_share": (cpu["client"] + cpu["sim"]) / total if total else None,
        "run_cpu_s": sum(c.get("cpu_s", 0.0) for c in comps) if comps else None,
        "bottleneck": s.get("bottleneck"),
        "run_dir": str(run_dir),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, nargs="+", default=[250, 500, 1000, 1500, 2000, 3000])
    ap.add_argument("--queries", type=int, default=5)
    ap.add_argument("--ramp", type=float, default=500.0)
    ap.add_argument("--max-duration", type=float, default=180.0)
    ap.add_argument("--deploy", action="store_true", help="run playbooks/site.yml on inventory/local.yml first")
    ap.add_argument("--json", type=Path, help="also write the rows to this file")
    args = ap.parse_args()
    if args.deploy:
        r = subprocess.run(
            [str(REPO / ".venv/bin/ansible-playbook"), "-i", str(INVENTORY), str(REPO / "playbooks/site.yml")],
            cwd=REPO,
            capture_output=True,
            text=True,
        )
        if r.returncode:
            print(r.stdout[-3000:])
            return 1
    rows = []
    print(
        f"{'clients':>7} {'tok/s':>7} {'peak5s':>7} {'dlv p50':>8} {'dlv p99':>8} {'success':>8} {'lost':>5} "
        f"{'overl':>5} "
        + " ".join(f"{c + ' us':>10}" for c in COMPONENTS)
        + f" {'kit %':>6} {'CPU-s':>6} {'run CPU-s':>9}"
    )
    for n in args.steps:
        r = step(n, args)
        rows.append(r)
        us = " ".join(f"{(r['us'][c] or 0):10.1f}" for c in COMPONENTS)
        print(
            f"{n:7d} {r['tps']:7.0f} {r['peak_tps']:7.0f} {r['delivery_p50'] or 0:8.2f} {r['delivery_p99'] or 0:8.2f} "
            f"{r['success']:7.2f}% {r['lost']:5d} {str(r['overloaded'])[:5]:>5} {us} "
            f"{100 * (r['kit_share'] or 0):5.1f}% {sum(r['cpu_s'].values()):6.1f} "
            f"{r['run_cpu_s'] if r['run_cpu_s'] is not None else float('nan'):9.1f}",
            flush=True,
        )
    good = [r for r in rows if r["success"] == 100.0 and r["delivery_p99"] is not None and r["delivery_p99"] < 50]
    if good:
        best = max(good, key=lambda r: r["peak_tps"])
        print(
            f"\nhighest step with 100% success and delivery p99 < 50 ms: {best['clients']} sessions, "
            f"{best['peak_tps']:.0f} tokens/s (busiest 5 s), {best['tps']:.0f} over the run; "
            f"kit's own share of CPU {100 * (best['kit_share'] or 0):.0f}%"
        )
    else:
        print("\nno step had 100% success with delivery p99 < 50 ms")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
