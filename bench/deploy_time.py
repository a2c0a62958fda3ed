#!/usr/bin/env python3
"""How long site.yml takes to deploy the e2e test's 6-host lab, and which tasks the time goes to.

    .venv/bin/python bench/deploy_time.py                               # this tree, once
    .venv/bin/python bench/deploy_time.py --checkout /tmp/wt-old --checkout . --repeat 2

For each run it brings up the lab tests/lab/test_fab_run_lab.py deploys (6 hosts, monitoring on), from a
fresh start: ``lab-up``, ``ansible-playbook playbooks/site.yml`` of the checkout with a per-task timer
(bench/ansible_plugins/tasktime.py), then teardown.yml and ``lab-down``.  Several checkouts run
interleaved (A B A B), each with its own playbooks, roles and wheelhouse; this tree's .venv runs them all.
It prints each deploy's wall time and, per checkout, the task files and tasks that took longest in its
last run.  Ansible's cost is mostly per module run and host (~0.3 s of CPU each on these cores: the
controller's worker, ssh, the remote Python), so the number of module runs per host is what to watch.

Measured on the 2-core dev VM, 2026-12-05 16:34 (machine otherwise idle; both wheelhouses built beforehand),
``--checkout /tmp/wt-f700e78 --checkout .``, one run each: f700e78 (before) 226.9 s, 05ba498 142.3 s
(package_facts -> one dpkg-query; the venv in one play for all its hosts; pip --no-compile; one step for
the wheelhouse's unpack and one for kit_root's directories).  By task file, before -> after: kit_venv 52.0
-> 32.4 s, kit_packages 37.1 -> 5.8, kit_service's kit_root 15.9 -> 6.3.  In CI (three shards side by
side) the e2e fixture's deploy went from 426 s to 281 s, and `bash .ci/run` from 908 to 789 s.

Needs root (network namespaces).  Traffic stays on the lab's namespaces; every step has a timeout.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import scale_run  # noqa: E402
import yaml  # noqa: E402

from kit.lab import LabConfig, lab_down, lab_up  # noqa: E402
from kit.lab._layout import default_layout  # noqa: E402

PLUGINS = REPO / "bench" / "ansible_plugins"
STEP_TIMEOUT = 1800


def _playbook(checkout: Path, inv: Path, book: str, log: Path, timer: Path | None = None) -> tuple[int, float]:
    """scale_run's playbook run from *checkout*, with the per-task timer writing to *timer* when given; (status, s)."""
    env = dict(os.environ)
    if timer is not None:
        env.update(ANSIBLE_CALLBACK_PLUGINS=str(PLUGINS), ANSIBLE_CALLBACKS_ENABLED="tasktime", TASKTIME_OUT=str(timer))
    t = time.monotonic()
    rc = scale_run.playbook(inv, book, log, checkout=checkout, env=env, timeout=STEP_TIMEOUT)
    return rc, time.monotonic() - t


def deploy_once(checkout: Path, work: Path) -> dict:
    """One fresh lab, one timed site.yml, torn down; the timer's rows."""
    inv_dir = work / "inventory"
    inv_dir.mkdir(parents=True)
    (inv_dir / "group_vars").symlink_to(checkout / "inventory" / "group_vars")
    cfg = LabConfig(root=work / "lab", prefix="lkd", subnet="10.213.10.0/24", inventory_path=inv_dir / "lab.yml")
    try:
        lab_up(6, {**default_layout(6), "monitoring": 1}, cfg=cfg)
        inv = yaml.safe_load(cfg.inventory_path.read_text())
        inv["all"]["vars"]["kit_secrets_dir"] = str(work / "secrets")
        cfg.inventory_path.write_text(yaml.safe_dump(inv, sort_keys=False))
        rc, wall = _playbook(checkout, cfg.inventory_path, "site.yml", work / "site.log", work / "tasks.json")
        if rc != 0:
            raise SystemExit(f"site.yml of {checkout} failed (exit {rc}): see {work / 'site.log'}")
        timed = json.loads((work / "tasks.json").read_text())
        timed["wall"] = wall
        return timed
    finally:
        if cfg.inventory_path.exists():
            _playbook(checkout, cfg.inventory_path, "teardown.yml", work / "teardown.log")
        lab_down(cfg)


def _file_of(row: str) -> str:
    path = row.split(" | ")[0].split(":")[0]
    return path.split("/playbooks/")[-1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkout", action="append", type=Path, help="a checkout to deploy (repeatable; default .)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per checkout, interleaved (default 1)")
    ap.add_argument("--top", type=int, default=12, help="tasks and task files to list (default 12)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("deploy_time.py: needs root (the lab's network namespaces); run it as root", file=sys.stderr)
        return 2
    checkouts = [c.resolve() for c in (args.checkout or [REPO])]
    for c in checkouts:
        if not (c / "playbooks" / "site.yml").is_file():
            print(f"deploy_time.py: {c} has no playbooks/site.yml: give a checkout of the kit", file=sys.stderr)
            return 2
    walls: dict[Path, list[float]] = collections.defaultdict(list)
    last: dict[Path, dict] = {}
    for i in range(args.repeat):
        for c in checkouts:
            work = Path(tempfile.mkdtemp(prefix="deploy-time-"))
            try:
                timed = deploy_once(c, work)
            finally:
                shutil.rmtree(work, ignore_errors=True)
            walls[c].append(timed["wall"])
            last[c] = timed
            print(f"run {i + 1} {c}: site.yml {timed['wall']:.1f} s, {len(timed['rows'])} tasks", flush=True)
    for c in checkouts:
        rows = last[c]["rows"]
        w = sorted(walls[c])
        print(f"\n{c}: median {w[len(w) // 2]:.1f} s over {len(w)} run(s); its last run's longest:")
        by_file: dict[str, float] = collections.defaultdict(float)
        for name, s in rows:
            by_file[_file_of(name)] += s
        for f, s in sorted(by_file.items(), key=lambda kv: -kv[1])[: args.top]:
            print(f"  {s:6.1f} s  {f}")
        print("  --")
        for name, s in sorted(rows, key=lambda r: -r[1])[: args.top]:
            print(f"  {s:6.1f} s  {_file_of(name)}: {name.split(' | ', 1)[-1][:90]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
