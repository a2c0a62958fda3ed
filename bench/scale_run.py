#!/usr/bin/env python3
"""Scale run: ``fab run --clients 10000`` on a lab on this machine, next to the seed's stress result.

    .venv/bin/python bench/scale_run.py                      # the two runs below on one deployed lab
    .venv/bin/python bench/scale_run.py --runs chat --clients 2000 --keep
    .venv/bin/python bench/scale_run.py --runs chat --checkout /tmp/wt-old   # an older commit's services

Builds a lab of network-namespace hosts (default 7: redis+sim, 2 haproxy, 2 wsproxy, 2
generators; on this machine one HAProxy holds ~9,900 sessions, so 10,000 need two), deploys it
with playbooks/site.yml over SSH, runs the load through kit.run (the code behind ``fab run``),
prints a table per run with the per-component CPU, and tears everything down (teardown.yml,
lab-down) unless --keep.  Needs root.  The lab lives under .lab/bench/ (prefix lkb,
10.213.2.0/24) so it never touches a user's lab.  Every lab host shares this machine's 2 cores.

Runs (``--runs``):
- ``chat``: ``--clients 10000 --queries 3 --think-time 40 --ramp 250``: a chat-like load, about
  5 % of the sessions streaming at any moment, ~10,000 tokens/s offered in steady state;
- ``pace``: the same 10,000 at the default 50 ms pace without think time (200,000 tokens/s
  offered, far beyond 2 cores): it cannot pass here; the run must name the bottleneck.

``--sessions N`` sizes the lab for N concurrent sessions instead (``kit.run._sizing``, what ``fab plan``
computes: the sessions one process holds under this machine's open-file cap, generators one process per
core, one HAProxy per ~9,900 sessions, 2 wsproxy instances per host) and a pace this machine carries:
the think time that keeps the offered load near ``--tokens-per-s`` (8,000), 2 queries per session, and
a ramp at the same pace (``--tokens-per-s`` / 43 sessions a second, each starting with its first query;
the think time is the ramp's length, so the second queries follow at that rate as the ramp ends and the
load stays level), and a ``chat`` run only:

    .venv/bin/python bench/scale_run.py --sessions 25000
    .venv/bin/python bench/scale_run.py --sessions 50000 --monitoring
    .venv/bin/python bench/scale_run.py --sessions 50000 --tokens-per-s 4000   # what 2 cores carry at 50,000

At 50,000 sessions the idle sessions alone (their pings through HAProxy, the veth and bridge work) take about
half this machine's 2 cores, so ~8,000 tokens/s saturates it and the generators wait for a core; 4,000 passed
every threshold with no generator overloaded, 6,000 had no generator overloaded but delivery p99 88 ms
(docs/benchmarks.md, 2026-12-05 07:23 and 08:37).
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
from kit.paths import SECRETS  # noqa: E402
from kit.report import bottleneck_line, host_metrics  # noqa: E402
from kit.run import HostFacts, RunOptions, execute, offered_tokens_per_s, parse_threshold, size_fleet  # noqa: E402

SEED = {"clients": 5000, "success": "99.46%", "p50": "15.81 s", "p99": "26.82 s", "tps": "337", "lost": "not measured"}


def playbook(
    inv: Path,
    book: str,
    log: Path,
    *,
    checkout: Path = REPO,
    env: dict[str, str] | None = None,
    timeout: float | None = None,
) -> int:
    """``ansible-playbook -i inv <checkout>/playbooks/<book>`` (this tree's Ansible, the checkout's ansible.cfg and
    kit for the wheelhouse), its output to *log*; its exit status.  Another checkout deploys with this tree's
    secrets (``kit_secrets_dir``), which the run from this tree reads."""
    argv = [str(REPO / ".venv/bin/ansible-playbook"), "-i", str(inv), str(checkout / "playbooks" / book)]
    if checkout != REPO:
        argv += ["-e", f"kit_secrets_dir={SECRETS}"]
    with open(log, "w") as fh:
        return subprocess.run(
            argv,
            cwd=checkout,
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            timeout=timeout,
        ).returncode


RUNS = {"chat": {"think_time": 40.0}, "pace": {"think_time": 0.0}}
#: the workload of a scale run's query: the simulator's default answer (43 tokens, 50 ms apart)
TOKENS, DELAY_MS = 43, 50.0
FD_RESERVE, FDS_PER_SESSION = 200, 2


def scale_plan(sessions: int, tokens_per_s: float) -> tuple[int, str, float, float]:
    """(hosts, layout, think time, ramp) of a lab on this machine for *sessions* (kit.run._sizing, as fab plan)."""
    import os
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    cap = (min(hard, 65536) - FD_RESERVE) // FDS_PER_SESSION
    cores = os.cpu_count() or 1
    facts = HostFacts("lab", cores, cap, (10240, 65535), wsproxy_instances=2)
    groups = {"generators": [facts], "haproxy": [facts], "wsproxy": [facts]}
    need = {n.group: n.needed for n in size_fleet(sessions, groups)}
    layout = {
        "redis": 1,
        "sim": 1,
        "haproxy": need["haproxy"],
        "wsproxy": need["wsproxy"],
        "generators": need["generators"],
        "monitoring": 0,
    }
    hosts = sum(v for k, v in layout.items() if k not in ("sim", "monitoring"))  # both share hosts (slot order)
    # steady state: sessions x tokens per (query time + think) = tokens_per_s
    think = max(0.0, sessions * TOKENS / tokens_per_s - (TOKENS - 1) * DELAY_MS / 1000)
    assert abs(offered_tokens_per_s(sessions, TOKENS, DELAY_MS, 0, think) - tokens_per_s) < 1
    # and the ramp at that pace: each session starts with a query, so sessions/s x tokens = tokens_per_s
    # (at 250 sessions/s, as until 2026-12-05, the ramp offered 10,750 tokens/s, and again the second
    # queries, with an idle gap between: "~8,000" was only the run's average)
    ramp = tokens_per_s / TOKENS
    return hosts, ",".join(f"{k}={v}" for k, v in layout.items() if v), round(think, 1), round(ramp, 1)


def bench_lab() -> tuple[Path, LabConfig]:
    """(folder, config) of the benchmarks' lab: under .lab/bench/, prefix lkb, 10.213.2.0/24, so it never
    touches a user's lab; its inventory shares the repository's group_vars."""
    base = REPO / ".lab" / "bench"
    inv_dir = base / "inventory"
    inv_dir.mkdir(parents=True, exist_ok=True)
    if not (inv_dir / "group_vars").exists():
        (inv_dir / "group_vars").symlink_to(REPO / "inventory" / "group_vars")
    return base, LabConfig(root=base / "lab", prefix="lkb", subnet="10.213.2.0/24", inventory_path=inv_dir / "lab.yml")


def one_run(name: str, inv: Path, args: argparse.Namespace) -> int:
    run_id = time.strftime("%Y%m%d-%H%M%S") + f"-c{args.clients}-{name}"
    think = RUNS[name]["think_time"]
    print(
        f"\n== {name}: fab run --clients {args.clients} --queries {args.queries} --think-time {think:g} "
        f"--ramp {args.ramp:g}",
        flush=True,
    )
    rc = execute(
        RunOptions(
            inventory=inv,
            clients=args.clients,
            queries=args.queries,
            ramp=args.ramp,
            think_time=think or None,
            max_duration=args.max_duration,
            run_id=run_id,
            thresholds=[
                parse_threshold("lost==0"),
                parse_threshold("success>=100%"),
                parse_threshold("delivery_p99<50ms"),
            ],
        ),
        out=lambda line: None,
    )
    run_dir = REPO / "results" / run_id
    s = json.loads((run_dir / "summary.json").read_text())
    if s.get("success_rate") is None:  # no session was measured: the report says why, no table to print
        why = [ln for ln in (run_dir / "report.txt").read_text().splitlines() if ln.startswith("Partial")]
        print("the run measured no session:", *(why or ["see report.txt"]), sep="\n  ")
        print(f"results: {run_dir}.tar.gz  (exit {rc})", flush=True)
        return rc or 1
    hosts = host_metrics(run_dir)
    gens = s["run"]["inventory"]["groups"]["generators"]
    gen_cpu = ", ".join(f"{h} {hosts[h]['cpu_mean']:.0f}/{hosts[h]['cpu_peak']:.0f}%" for h in gens if h in hosts)
    dl = s.get("delivery_latency_ms") or {}
    rows = [
        ("clients", f"{args.clients} x {args.queries}, think {think:g} s", f"{SEED['clients']} x 3"),
        ("success rate", f"{s['success_rate']:.2f}%", SEED["success"]),
        ("lost tokens", str(s["lost_tokens"]), SEED["lost"]),
        ("latency p50", f"{s['latency_ms']['p50'] / 1000:.2f} s", SEED["p50"]),
        ("latency p99", f"{s['latency_ms']['p99'] / 1000:.2f} s", SEED["p99"]),
        ("delivery p50 / p99", f"{dl.get('p50', 0):.1f} / {dl.get('p99', 0):.1f} ms", "-"),
        ("TPS (whole run)", f"{s['tps']:.0f}", SEED["tps"]),
        ("generator overloaded", f"{s['generator']['generator_overloaded']} {s['generator']['reason'][:80]}", "-"),
        ("generator hosts CPU mean/peak", gen_cpu, "-"),
        (  # every lab host reads the one machine's /proc/stat: one host's split is the machine's
            "machine CPU split (mean %)",
            " ".join(f"{k} {v:g}" for k, v in next(iter(hosts.values()), {}).get("cpu_split_mean", {}).items()),
            "-",
        ),
        (
            "monitors CPU (hostmon, all hosts)",
            f"{sum(h.get('monitor_cpu_s') or 0 for h in hosts.values()):.1f} CPU-s",
            "-",
        ),
        ("bottleneck", bottleneck_line(s) or "-", "-"),  # the report's own words
        ("partial", str(s["partial"]), "-"),
    ]
    print(f"{'metric':<32} {'this kit (lab, 1 machine, 2 cores)':<48} seed (docker, published)")
    for metric, ours, seed in rows:
        print(f"{metric:<32} {ours:<48} {seed}")
    print(f"{'component':<10} {'host':<14} {'CPU-s':>8} {'share':>7} {'us/token':>9} {'peak cores':>10}")
    for c in s.get("components") or []:
        print(
            f"{c['component']:<10} {c['host']:<14} {c['cpu_s']:8.1f} {100 * (c['cpu_share'] or 0):6.1f}% "
            f"{c['us_per_token'] or 0:9.1f} {c['peak_cores']:10.2f}"
        )
    print(f"results: {run_dir}.tar.gz  (exit {rc})", flush=True)
    return rc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hosts", type=int, default=7)
    ap.add_argument("--layout", default="redis=1,sim=1,haproxy=2,wsproxy=2,generators=2")
    ap.add_argument("--runs", nargs="+", choices=sorted(RUNS), default=["chat", "pace"])
    ap.add_argument("--clients", type=int, default=10000)
    ap.add_argument("--queries", type=int, default=3)
    ap.add_argument(
        "--ramp", type=float, help="sessions started per second over all generators (250; --sessions: its pace)"
    )
    ap.add_argument("--max-duration", type=float, default=600.0)
    ap.add_argument("--keep", action="store_true", help="leave the lab and the deployment up")
    ap.add_argument("--sessions", type=int, help="size the lab and the pace for this many concurrent sessions")
    ap.add_argument("--tokens-per-s", type=float, default=8000.0, help="offered load of a --sessions run")
    ap.add_argument("--monitoring", action="store_true", help="add a monitoring host (Prometheus)")
    ap.add_argument(
        "--checkout",
        type=Path,
        default=REPO,
        help="deploy the services of this checkout of the kit (its playbooks and kit/; e.g. a git worktree of an "
        "older commit, to compare it with this one run by run); the load still runs from this tree",
    )
    args = ap.parse_args()
    args.checkout = args.checkout.resolve()
    if not (args.checkout / "playbooks" / "site.yml").is_file():
        print(f"scale_run.py: {args.checkout} has no playbooks/site.yml: give a checkout of the kit", file=sys.stderr)
        return 2
    if args.sessions:
        args.hosts, args.layout, think, ramp = scale_plan(args.sessions, args.tokens_per_s)
        args.ramp = args.ramp or ramp
        if args.monitoring:
            args.layout += ",monitoring=1"
        args.clients, args.queries, args.runs = args.sessions, 2, ["chat"]
        RUNS["chat"]["think_time"] = think
        # the ramp, then each session's 2 queries and 1 think time, with room to spare
        args.max_duration = max(
            args.max_duration, args.sessions / args.ramp + 2 * (TOKENS * DELAY_MS / 1000) + think + 120
        )
        print(
            f"scale plan: {args.sessions} sessions on {args.hosts} hosts ({args.layout}), think {think:g} s "
            f"and ramp {args.ramp:g}/s for ~{args.tokens_per_s:,.0f} tokens/s, max duration {args.max_duration:.0f} s",
            flush=True,
        )
    else:
        args.ramp = args.ramp or 250.0
    base, cfg = bench_lab()
    t0 = time.time()
    rc = 0
    try:
        state = lab_up(args.hosts, parse_layout(args.layout), cfg=cfg)
        print(f"lab: {args.hosts} hosts {state['groups']} ({time.time() - t0:.0f} s)", flush=True)
        t1 = time.time()
        if playbook(cfg.inventory_path, "site.yml", base / "site.log", checkout=args.checkout):
            print(f"site.yml failed: see {base / 'site.log'}")
            return 1
        print(f"deploy: {time.time() - t1:.0f} s ({args.checkout})", flush=True)
        codes = [one_run(name, cfg.inventory_path, args) for name in args.runs]
        rc = codes[0]  # the first run decides (the pace run is expected to miss its thresholds)
    finally:
        if not args.keep:
            playbook(cfg.inventory_path, "teardown.yml", base / "teardown.log", checkout=args.checkout)
            lab_down(cfg)
    return rc


if __name__ == "__main__":
    sys.exit(main())
