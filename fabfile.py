"""Fabric tasks of wsproxy-loadkit: thin option parsing; the work is in ``kit.run`` and ``kit.lab``.

    fab lab-up --hosts 6 [--layout redis=1,haproxy=1,wsproxy=2,sim=1,generators=2]
    fab deploy --inventory inventory/lab.yml
    fab run --inventory inventory/lab.yml --clients 500 --queries 3 --threshold 'p99<2s'
    fab status | logs | down | analyze <run-id> | lab-down

The host list is always the Ansible inventory (``--inventory``, default
``inventory/local.yml``); Fabric's own ``-i`` stays its SSH identity flag.
Exit status (every task, through :func:`_cli`): 0 pass, 1 a threshold failed, 2 bad options or a
failed preflight (one line), 3 a partial run, 4 an internal error (one line naming it and the file
holding the traceback), 130 interrupted by Ctrl-C (143 SIGTERM), after stopping every remote job
the run started.  Options are parsed here, not typed by their defaults, so a bad value is exit 2
(invoke's own parse errors, an unknown option or task, stay its exit 1).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import sys
from pathlib import Path

from fabric import task
from invoke import Exit

from kit.paths import REPO

DEFAULT_INVENTORY = "inventory/local.yml"
INV_HELP = "Ansible inventory to use (default inventory/local.yml)"


def _inv(path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else (Path.cwd() / p if (Path.cwd() / p).exists() else REPO / p)


#: exit status of bad options or a failed preflight, and of an unexpected exception (README "fab tasks")
EXIT_USAGE = 2
EXIT_INTERNAL = 4


def _num(kind, name: str, raw, minimum=None, default=None):
    """An option's number (kit.config.parse_number, the client's parser too); *default* when not given."""
    if raw is None or raw == "":
        return default
    from kit.config import ConfigError, parse_number

    try:
        return parse_number(kind, f"--{name}", raw, minimum=minimum)
    except ConfigError as exc:
        raise Exit(str(exc), code=EXIT_USAGE) from None


def _errors():
    """The kit's errors that mean bad options or an unusable set-up (exit 2), never a bug."""
    from kit.compare import CompareError
    from kit.config import ConfigError
    from kit.inventory import InventoryError
    from kit.lab import LabError, LayoutError
    from kit.run import PlanError, RunError

    return (CompareError, ConfigError, InventoryError, LabError, LayoutError, PlanError, RunError, FileNotFoundError)


def _internal_error(name: str, exc: BaseException) -> str:
    """The traceback of *exc* into a file; one line naming the error, where it was raised, and that file."""
    import tempfile
    import traceback

    with tempfile.NamedTemporaryFile("w", prefix=f"loadkit-{name}-error-", suffix=".log", delete=False) as fh:
        fh.write(f"fab {' '.join(sys.argv[1:])}\n")
        traceback.print_exception(exc, file=fh)
    frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    where = f" at {Path(frame.filename).name}:{frame.lineno}" if frame else ""
    first = (str(exc).splitlines() or [""])[0]
    return (
        f"{name}: internal error: {type(exc).__name__}{': ' + first if first else ''}{where} (traceback in {fh.name})"
    )


def _cli(fn):
    """Every task's error mapping, one line on stderr each: a known error (bad options, unusable
    inventory, failed preflight) exits 2; Ctrl-C 130 (SIGTERM 143, trapped by ``fab run``); any other
    exception is an internal error, exit 4, its traceback written to a file.  ``Exit`` passes as is."""
    name = fn.__name__.replace("_", "-")

    @functools.wraps(fn)
    def task_body(c, *args, **kwargs):
        try:
            return fn(c, *args, **kwargs)
        except Exit:
            raise
        except _errors() as exc:
            raise Exit(f"{name}: {exc}", code=EXIT_USAGE) from None
        except KeyboardInterrupt as exc:  # kit.run's Interrupted carries the signal
            import signal

            signum = getattr(exc, "signum", signal.SIGINT)
            raise Exit(f"{name}: interrupted by {signal.Signals(signum).name}", code=128 + signum) from None
        except Exception as exc:
            raise Exit(_internal_error(name, exc), code=EXIT_INTERNAL) from None

    return task_body


class _StderrHandler(logging.StreamHandler):
    """Logs to whatever ``sys.stderr`` is now (the live view redirects it above its table)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _logging(verbose: bool) -> None:
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler])
    logging.getLogger("paramiko").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)


@task(
    name="lab-up",
    auto_shortflags=False,
    help={
        "hosts": "number of namespace hosts (default 6)",
        "layout": "groups per host count, e.g. redis=1,haproxy=1,wsproxy=2,sim=1,generators=2[,monitoring=1]",
        "source_addresses": "addresses per generator host (default 1): its connections leave from each in turn",
    },
)
@_cli
def lab_up(c, hosts=None, layout="", source_addresses=None):
    """Build the lab: network-namespace hosts with their own sshd; writes inventory/lab.yml."""
    from kit.lab import LabConfig, default_layout, parse_layout
    from kit.lab import lab_up as up

    _logging(False)
    hosts = _num(int, "hosts", hosts, 1, default=6)
    lay = parse_layout(layout) if layout else default_layout(hosts)
    state = up(hosts, lay, LabConfig(source_addresses=_num(int, "source-addresses", source_addresses, 1, default=1)))
    for h in state["hosts"]:
        print(f"{h['name']:<8} {h['address']:<14} {', '.join(h['groups'])}")
    print(f"inventory: {state['inventory']}")


@task(
    name="plan",
    auto_shortflags=False,
    help={
        "inventory": INV_HELP,
        "clients": "concurrent sessions to plan for",
        "from_run": "a previous run (id under results/ or folder): its CPU per token per component sizes the CPU too",
        "think_time": "seconds between a session's queries (with --from-run: the run's)",
        "tokens": "tokens per answer (default the simulator's 43, or the run's)",
        "token_delay": "ms between tokens (default 50, or the run's)",
        "ttft": "ms to the first token (default 0, or the run's)",
    },
)
@_cli
def plan(
    c, clients, inventory=DEFAULT_INVENTORY, from_run="", think_time=None, tokens=None, token_delay=None, ttft=None
):
    """How many hosts per group a run of N sessions needs, against what the inventory has (exit 1: too few)."""
    from kit.run import plan as run_plan

    _logging(False)
    run_dir = None
    if from_run:
        run_dir = Path(from_run) if Path(from_run).is_dir() else REPO / "results" / from_run
        if not (run_dir / "summary.json").is_file():
            raise Exit(
                f"--from-run {from_run}: no summary.json there: give a run id under results/ or a run folder",
                code=EXIT_USAGE,
            )
    rc = run_plan(
        _inv(inventory),
        _num(int, "clients", clients, 1),
        out=print,
        from_run=run_dir,
        think_time=_num(float, "think-time", think_time, 0),
        tokens=_num(int, "tokens", tokens, 1),
        token_delay_ms=_num(float, "token-delay", token_delay, 0),
        ttft_ms=_num(float, "ttft", ttft, 0),
    )
    if rc:
        raise Exit(code=rc)


@task(name="lab-down", auto_shortflags=False)
@_cli
def lab_down(c):
    """Remove every namespace, link and process the lab made (by the state it recorded)."""
    from kit.lab import lab_down as down

    _logging(False)
    removed = down()
    print(f"removed {len(removed)} item(s)" if removed else "no lab to remove")


@task(
    auto_shortflags=False,
    help={
        "inventory": INV_HELP,
        "playbook": "playbook under playbooks/ (default site.yml)",
        "check": "ansible-playbook --check --diff",
    },
)
@_cli
def deploy(c, inventory=DEFAULT_INVENTORY, playbook="site.yml", check=False):
    """Deploy the stack: ansible-playbook -i <inventory> playbooks/site.yml."""
    from kit.run import deploy as run_deploy

    rc = run_deploy(_inv(inventory), playbook, ["--check", "--diff"] if check else [])
    if rc:
        raise Exit(code=rc)


@task(auto_shortflags=False, help={"inventory": INV_HELP})
@_cli
def down(c, inventory=DEFAULT_INVENTORY):
    """Tear the stack down: ansible-playbook -i <inventory> playbooks/teardown.yml."""
    from kit.run import deploy as run_deploy

    rc = run_deploy(_inv(inventory), "teardown.yml")
    if rc:
        raise Exit(code=rc)


@task(auto_shortflags=False, help={"inventory": INV_HELP})
@_cli
def status(c, inventory=DEFAULT_INVENTORY):
    """Health of every service on every host (redis PING, haproxy stats, /health, supervisor)."""
    from kit.run import status as run_status

    _logging(False)
    rc = run_status(_inv(inventory))
    if rc:
        raise Exit(code=rc)


@task(auto_shortflags=False, help={"inventory": INV_HELP, "dest": "folder to copy the logs into (default logs/<time>)"})
@_cli
def logs(c, inventory=DEFAULT_INVENTORY, dest=""):
    """Fetch every host's service logs into one folder per host."""
    import time

    from kit.run import logs as run_logs

    _logging(False)
    target = Path(dest) if dest else REPO / "results" / f"logs-{time.strftime('%Y%m%d-%H%M%S')}"
    rc = run_logs(_inv(inventory), target)
    if rc:
        raise Exit(code=rc)


@task(auto_shortflags=False, help={"run": "run id under results/, a run folder or a .tar.gz"})
@_cli
def analyze(c, run):
    """Print a run's report and per-query analysis (percentiles, histogram, errors)."""
    from kit.run import analyze as run_analyze

    rc = run_analyze(run)
    if rc:
        raise Exit(code=rc)


def _run_fields() -> dict[str, dataclasses.Field]:
    """fab run's options, each a field of kit.run.RunOptions with a flag (its load options are declared in
    kit/options.py, the run's own in RunOptions): task parameter name -> field."""

    from kit.run import RunOptions

    return {
        f.metadata["option"][2:].replace("-", "_"): f
        for f in dataclasses.fields(RunOptions)
        if f.metadata.get("option")
    }


#: fab run's own options (how it prints), not the run's
_RUN_OUTPUT_HELP = {
    "quiet": "no live view",
    "json": "print the final summary as JSON on stdout (exit status, outcome, paths, summary); "
    "every other line goes to stderr",
}


def _run_task(body):
    """The ``run`` task of *body* (``body(c, quiet, json, **options)``): one option per declared field, its
    help (with its default) and its kind (a flag for a bool, repeatable for a list, else a value parsed and
    checked by :func:`_run_value`) from the declaration."""
    import inspect

    from kit import options

    fields = _run_fields()
    load = {f.name for f in options.declared()}
    helps, iterable = dict(_RUN_OUTPUT_HELP), []
    params = [inspect.Parameter("c", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    for name, f in [*fields.items(), ("quiet", None), ("json", None)]:
        is_list = f is not None and f.default_factory is list
        is_bool = f is None or f.default is False
        iterable += [name] if is_list else []
        params.append(
            inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=False if is_bool else None)
        )
        if f is not None and f.name in load and f.default is None and not f.metadata.get("fab_required"):
            helps[name] = options.option_help(f, default_value=options.default(f.name), generator=True)
        elif f is not None:  # the run's own default (a path's is in its help)
            shown = f.default if f.default is not dataclasses.MISSING and not isinstance(f.default, Path) else None
            helps[name] = options.option_help(f, default_value=shown, generator=f.name in load)
    body.__signature__ = inspect.Signature(params)
    return task(name="run", auto_shortflags=False, iterable=iterable, help=helps)(_cli(body))


def _run_value(f, raw):
    """A fab run option's value as its RunOptions field wants it; a bad number is exit 2, one line."""
    kind = str(f.type)
    if kind.startswith("Path"):
        return _inv(raw) if f.name == "inventory" else Path(raw)
    if kind == "list[Threshold]":
        from kit.run import parse_threshold

        return [parse_threshold(t) for t in raw]
    if kind.startswith(("int", "float")):
        from kit.config import ConfigError
        from kit.options import parse_option

        try:
            return parse_option(f, raw)
        except ConfigError as exc:
            raise Exit(str(exc), code=EXIT_USAGE) from None
    return raw


def run(c, quiet=False, json=False, **given):
    """Run the benchmark across the generator hosts and pack results/<run-id>.tar.gz."""
    import contextlib
    import json as jsonlib

    from kit.run import RunOptions, execute, live_view

    _logging(False)
    fields = _run_fields()
    values = {fields[k].name: _run_value(fields[k], v) for k, v in given.items() if v not in (None, "", [], False)}
    values.setdefault("inventory", _inv(DEFAULT_INVENTORY))
    opts = RunOptions(live=not quiet, **values)
    # --json: stdout carries the one JSON document; every human line (and any stray print) goes to stderr
    stdout = sys.stdout
    view = live_view(sys.stderr if json else sys.stdout)
    results: list[dict] = []
    with contextlib.redirect_stdout(sys.stderr) if json else contextlib.nullcontext():
        rc = execute(opts, out=view.out, view=view, on_result=results.append)
    if json and results:
        stdout.write(jsonlib.dumps(results[-1], indent=2, default=str) + "\n")
        stdout.flush()
    if rc:
        raise Exit(code=rc)


run = _run_task(run)


@task(
    name="compare",
    auto_shortflags=False,
    iterable=["fail_if"],
    help={
        "runs": "comma-separated run ids under results/, run folders or .tar.gz; the first is the baseline",
        "fail_if": "regression rule, repeatable: 'p99>+10%' (change to the baseline), 'tps<-5%', 'lost>0'; exit 1",
        "html": "where to write the comparison page (default results/compare-<a>-vs-<b>.html)",
    },
)
@_cli
def compare(c, runs, fail_if=None, html=""):
    """Key figures of runs side by side with the change to the first and a bootstrap noise test."""
    import re

    from kit.compare import run_compare

    refs = [r for r in re.split(r"[,\s]+", runs) if r]
    rc = run_compare(refs, fail_if or [], Path(html) if html else None, results=REPO / "results")
    if rc:
        raise Exit(code=rc)


@task(
    name="capacity",
    auto_shortflags=False,
    iterable=["slo"],
    help={
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
    },
)
@_cli
def capacity(
    c,
    inventory=DEFAULT_INVENTORY,
    slo=None,
    start=None,
    step="x2",
    max=None,
    resolution=None,
    queries=None,
    ramp=None,
    think_time=None,
    max_duration=None,
    name=None,
    skip_health=False,
):
    """Find the highest load that meets every SLO: step up, then bisect; name the bottleneck."""
    from kit.run import RunOptions, execute_capacity

    _logging(False)
    base = RunOptions(
        inventory=_inv(inventory),
        clients=1,
        queries=_num(int, "queries", queries, 0, default=3),
        think_time=_num(float, "think-time", think_time),
        max_duration=_num(float, "max-duration", max_duration, default=300.0),
        skip_health=skip_health,
        live=False,
    )
    rc, _ = execute_capacity(
        base,
        slo or [],
        start=_num(int, "start", start, 1, default=10),
        step=str(step),
        maximum=_num(int, "max", max, 1, default=10000),
        resolution=_num(int, "resolution", resolution, 1, default=1),
        ramp=_num(float, "ramp", ramp),
        name=name or None,
    )
    if rc:
        raise Exit(code=rc)
