"""Fabric tasks of wsproxy-loadkit: thin option parsing; the work is in ``kit.run`` and ``kit.lab``.

    fab lab-up --hosts 6 [--layout redis=1,haproxy=1,wsproxy=2,sim=1,generators=2]
    fab deploy --inventory inventory/lab.yml
    fab run --inventory inventory/lab.yml --clients 500 --queries 3 --threshold 'p99<2s'
    fab status | logs | down | analyze <run-id> | lab-down

The host list is always the Ansible inventory (``--inventory``, default
``inventory/local.yml``); Fabric's own ``-i`` stays its SSH identity flag.
Bad options exit 2 with one line; failing thresholds exit 1; a partial run 3; a run
interrupted by Ctrl-C 130 (SIGTERM 143), after stopping every remote job it started.
"""

from __future__ import annotations

import logging
from pathlib import Path

from invoke import Exit
from fabric import task

REPO = Path(__file__).resolve().parent
DEFAULT_INVENTORY = "inventory/local.yml"
INV_HELP = "Ansible inventory to use (default inventory/local.yml)"


def _inv(path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else (Path.cwd() / p if (Path.cwd() / p).exists() else REPO / p)


def _num(kind, name: str, raw, minimum=None):
    if raw is None or raw == "":
        return None
    try:
        v = kind(raw)
    except (TypeError, ValueError):
        raise Exit(f"--{name} {raw!r} is not {'a whole number' if kind is int else 'a number'}", code=2) from None
    if minimum is not None and v < minimum:
        raise Exit(f"--{name} {raw}: give at least {minimum}", code=2)
    return v


def _errors():
    from kit.config import ConfigError
    from kit.inventory import InventoryError
    from kit.lab import LabError, LayoutError
    from kit.run._plan import PlanError
    from kit.run._run import RunError
    return (ConfigError, InventoryError, LabError, LayoutError, PlanError, RunError, FileNotFoundError)


def _logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("paramiko").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)


@task(name="lab-up", auto_shortflags=False,
      help={"hosts": "number of namespace hosts (default 6)",
            "layout": "groups per host count, e.g. redis=1,haproxy=1,wsproxy=2,sim=1,generators=2"})
def lab_up(c, hosts=6, layout=""):
    """Build the lab: network-namespace hosts with their own sshd; writes inventory/lab.yml."""
    from kit.lab import default_layout, lab_up as up, parse_layout
    _logging(False)
    try:
        lay = parse_layout(layout) if layout else default_layout(hosts)
        state = up(hosts, lay)
    except _errors() as exc:
        raise Exit(f"lab-up: {exc}", code=2) from None
    for h in state["hosts"]:
        print(f"{h['name']:<8} {h['address']:<14} {', '.join(h['groups'])}")
    print(f"inventory: {state['inventory']}")


@task(name="lab-down", auto_shortflags=False)
def lab_down(c):
    """Remove every namespace, link and process the lab made (by the state it recorded)."""
    from kit.lab import lab_down as down
    _logging(False)
    try:
        removed = down()
    except _errors() as exc:
        raise Exit(f"lab-down: {exc}", code=1) from None
    print(f"removed {len(removed)} item(s)" if removed else "no lab to remove")


@task(auto_shortflags=False, help={"inventory": INV_HELP, "playbook": "playbook under playbooks/ (default site.yml)",
                                   "check": "ansible-playbook --check --diff"})
def deploy(c, inventory=DEFAULT_INVENTORY, playbook="site.yml", check=False):
    """Deploy the stack: ansible-playbook -i <inventory> playbooks/site.yml."""
    from kit.run._tasks import deploy as run_deploy
    try:
        rc = run_deploy(_inv(inventory), playbook, ["--check", "--diff"] if check else [])
    except _errors() as exc:
        raise Exit(f"deploy: {exc}", code=2) from None
    if rc:
        raise Exit(code=rc)


@task(auto_shortflags=False, help={"inventory": INV_HELP})
def down(c, inventory=DEFAULT_INVENTORY):
    """Tear the stack down: ansible-playbook -i <inventory> playbooks/teardown.yml."""
    from kit.run._tasks import deploy as run_deploy
    try:
        rc = run_deploy(_inv(inventory), "teardown.yml")
    except _errors() as exc:
        raise Exit(f"down: {exc}", code=2) from None
    if rc:
        raise Exit(code=rc)


@task(auto_shortflags=False, help={"inventory": INV_HELP})
def status(c, inventory=DEFAULT_INVENTORY):
    """Health of every service on every host (redis PING, haproxy stats, /health, supervisor)."""
    from kit.run._tasks import status as run_status
    _logging(False)
    try:
        rc = run_status(_inv(inventory))
    except _errors() as exc:
        raise Exit(f"status: {exc}", code=2) from None
    if rc:
        raise Exit(code=rc)


@task(auto_shortflags=False, help={"inventory": INV_HELP, "dest": "folder to copy the logs into (default logs/<time>)"})
def logs(c, inventory=DEFAULT_INVENTORY, dest=""):
    """Fetch every host's service logs into one folder per host."""
    import time
    from kit.run._tasks import logs as run_logs
    _logging(False)
    target = Path(dest) if dest else REPO / "results" / f"logs-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        rc = run_logs(_inv(inventory), target)
    except _errors() as exc:
        raise Exit(f"logs: {exc}", code=2) from None
    if rc:
        raise Exit(code=rc)


@task(auto_shortflags=False, help={"run": "run id under results/, a run folder or a .tar.gz"})
def analyze(c, run):
    """Print a run's report and per-query analysis (percentiles, histogram, errors)."""
    from kit.run._tasks import analyze as run_analyze
    try:
        rc = run_analyze(run)
    except _errors() as exc:
        raise Exit(f"analyze: {exc}", code=2) from None
    if rc:
        raise Exit(code=rc)


@task(name="run", auto_shortflags=False, iterable=["threshold", "chaos"], help={
    "inventory": INV_HELP,
    "clients": "total sessions over all generator hosts",
    "queries": "queries per session (default 10, or the preset's)",
    "ramp": "sessions started per second over all generators (default: all at once, or the preset's)",
    "arrival_rate": "open model: sessions arriving per second (with --duration)",
    "duration": "open model: seconds of arrivals",
    "think_time": "seconds a session waits between its queries (default 0)",
    "query_timeout": "seconds a query may take to its done message before it counts as failed (default 60)",
    "threshold": "pass/fail rule, repeatable: 'p99<2s', 'p50<=500ms', 'success>=99.9%', 'lost==0'",
    "preset": "smoke | standard | load | stress | soak (the seed's scenarios)",
    "max_duration": "hard bound on the run in seconds (default 600); a generator past it + 30 s is stopped",
    "run_id": "name of the run (default <date>-<time>-c<clients>)",
    "quiet": "no live view",
    "skip_health": "do not check service health before the run",
    "chaos": "fault during the run, repeatable: ACTION:TARGET@AT[+FOR][=ARG], e.g. kill:wsproxy@20s, "
             "restart:redis@30s, pause:wsproxy[1]@15s+5s, partition:wsproxy@40s+3s, delay:wsproxy@10s+20s=50ms, "
             "kill:wsproxy[all]@20s",
})
def run(c, inventory=DEFAULT_INVENTORY, clients=None, queries=None, ramp=None, arrival_rate=None, duration=None,
        threshold=None, preset=None, max_duration=600.0, run_id=None, quiet=False, skip_health=False,
        think_time=None, query_timeout=None, chaos=None):
    """Run the benchmark across the generator hosts and pack results/<run-id>.tar.gz."""
    from kit.run._plan import parse_threshold
    from kit.run._run import Interrupted, RunOptions, execute
    _logging(False)
    try:
        opts = RunOptions(
            inventory=_inv(inventory), clients=_num(int, "clients", clients, 1), queries=_num(int, "queries", queries, 0),
            ramp=_num(float, "ramp", ramp), arrival_rate=_num(float, "arrival-rate", arrival_rate),
            duration=_num(float, "duration", duration), preset=preset,
            thresholds=[parse_threshold(t) for t in (threshold or [])],
            max_duration=_num(float, "max-duration", max_duration), run_id=run_id or None, live=not quiet,
            skip_health=skip_health, think_time=_num(float, "think-time", think_time),
            query_timeout=_num(float, "query-timeout", query_timeout), chaos=list(chaos or []))
        rc = execute(opts)
    except _errors() as exc:
        raise Exit(f"run: {exc}", code=2) from None
    except Interrupted as exc:  # before any remote job started (preflight): nothing to stop
        raise Exit(f"run: interrupted by {exc}", code=128 + exc.signum) from None
    if rc:
        raise Exit(code=rc)


@task(name="compare", auto_shortflags=False, iterable=["fail_if"], help={
    "runs": "comma-separated run ids under results/, run folders or .tar.gz; the first is the baseline",
    "fail_if": "regression rule, repeatable: 'p99>+10%' (change to the baseline), 'tps<-5%', 'lost>0'; exit 1",
    "html": "where to write the comparison page (default results/compare-<a>-vs-<b>.html)",
})
def compare(c, runs, fail_if=None, html=""):
    """Key figures of runs side by side with the change to the first and a bootstrap noise test."""
    import re
    from kit.compare import CompareError, run_compare
    refs = [r for r in re.split(r"[,\s]+", runs) if r]
    try:
        rc = run_compare(refs, fail_if or [], Path(html) if html else None, results=REPO / "results")
    except CompareError as exc:
        raise Exit(f"compare: {exc}", code=2) from None
    if rc:
        raise Exit(code=rc)


@task(name="compare", auto_shortflags=False, iterable=["fail_if"], help={
    "runs": "comma-separated run ids under results/, run folders or .tar.gz; the first is the baseline",
    "fail_if": "regression rule, repeatable: 'p99>+10%' (change to the baseline), 'tps<-5%', 'lost>0'; exit 1",
    "html": "where to write the comparison page (default results/compare-<a>-vs-<b>.html)",
})
def compare(c, runs, fail_if=None, html=""):
    """Key figures of runs side by side with the change to the first and a bootstrap noise test."""
    import re
    from kit.compare import CompareError, run_compare
    refs = [r for r in re.split(r"[,\s]+", runs) if r]
    try:
        rc = run_compare(refs, fail_if or [], Path(html) if html else None, results=REPO / "results")
    except CompareError as exc:
        raise Exit(f"compare: {exc}", code=2) from None
    if rc:
        raise Exit(code=rc)


@task(name="capacity", auto_shortflags=False, iterable=["slo"], help={
    "inventory": INV_HELP,
    "slo": "service-level objective, repeatable: 'delivery_p99<50ms', 'success>=99.9%', 'p99<2s' (as --threshold)",
    "start": "sessions of the first step (default 10)",
    "step": "growth while every SLO holds: '50' adds 50 sessions, 'x2' doubles (default x2)",
    "max": "most sessions to try (default 10000)",
    "resolution": "stop bisecting when passing and failing loads are this close (default 1 session)",
    "queries": "queries per session in each step (default 3)",
    "ramp": "sessions started per second in each step (default: all within 5 s)",
    "think_time": "seconds a session waits between its queries",
    "max_duration": "bound on each step's run in seconds (default 300)",
    "name": "name of the search: results/<name>.json, .html and <name>-s<i>-c<load> runs",
    "skip_health": "do not check service health before each step",
})
def capacity(c, inventory=DEFAULT_INVENTORY, slo=None, start=10, step="x2", max=10000, resolution=1, queries=3,
             ramp=None, think_time=None, max_duration=300.0, name=None, skip_health=False):
    """Find the highest load that meets every SLO: step up, then bisect; name the bottleneck."""
    from kit.run._capacity import execute_capacity
    from kit.run._run import RunOptions
    _logging(False)
    try:
        base = RunOptions(inventory=_inv(inventory), clients=1, queries=_num(int, "queries", queries, 0),
                          think_time=_num(float, "think-time", think_time),
                          max_duration=_num(float, "max-duration", max_duration), skip_health=skip_health,
                          live=False)
        rc, _ = execute_capacity(base, slo or [], start=_num(int, "start", start, 1), step=str(step),
                                 maximum=_num(int, "max", max, 1), resolution=_num(int, "resolution", resolution, 1),
                                 ramp=_num(float, "ramp", ramp), name=name or None)
    except _errors() as exc:
        raise Exit(f"capacity: {exc}", code=2) from None
    if rc:
        raise Exit(code=rc)
