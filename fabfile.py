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
the run started.  Options are parsed here, not typed by their defaults, so a bad value is exit 2; a
command line invoke cannot parse (an unknown option or task) is exit 2 as well, through the kit's ``fab``
(:mod:`kit.fab`, which also lets a task's positional parameter be left out: each has a default here).
``fab run``, ``analyze``, ``compare`` and ``capacity`` take ``--json``: one JSON document on stdout, every
other line on stderr (:func:`_json_mode`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from fabric import task
from invoke import Exit

from kit import fab as _fab
from kit.paths import REPO

DEFAULT_INVENTORY = "inventory/local.yml"
INV_HELP = "Ansible inventory to use (default inventory/local.yml)"
#: the help of --json on analyze, compare and capacity: its document's top-level keys
_JSON_HELP = "print one JSON document on stdout ({keys}); every other line goes to stderr"


def _inv(path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else (Path.cwd() / p if (Path.cwd() / p).exists() else REPO / p)


#: the default of a positional parameter the task checks itself: invoke takes one defaulting to None as required
#: and would take the next word for it, --help included (kit.fab hands a bare word to it instead)
_NOT_GIVEN = ""

#: exit status of bad options or a failed preflight, and of an unexpected exception (README "fab tasks")
EXIT_USAGE = _fab.EXIT_USAGE  # the kit's fab exits with it for a command line it cannot parse
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


@contextlib.contextmanager
def _json_mode(on: bool) -> Iterator[Callable[[dict], None]]:
    """``--json``: every line the task prints goes to stderr (a stray print included) while it works, and the
    last document given to the yielded callback is printed alone on the real stdout at the end, so a script
    can parse stdout whole.  An exception (exit 2, 4, an interrupt before a result) prints no document."""
    stdout, docs = sys.stdout, []
    with contextlib.redirect_stdout(sys.stderr) if on else contextlib.nullcontext():
        yield docs.append
    if on and docs:
        import json

        stdout.write(json.dumps(docs[-1], indent=2, default=str) + "\n")
        stdout.flush()


def _hint_if_fabrics_own_fab() -> None:
    """One line on stderr when Fabric's own ``fab`` loaded these tasks instead of the kit's (:mod:`kit.fab`,
    installed over it by ``pip install -e .``): a virtual environment set up before kit.fab existed.  Fabric's
    exits 1 on an unknown option and cannot leave a run name out (``fab compare A,B`` is refused), so say
    how to get the kit's rather than let those look like the kit's behaviour."""
    program = getattr(sys.modules.get("__main__"), "program", None)
    if program is not None and type(program).__module__ == "fabric.main":
        print(
            "fab: this is Fabric's own fab, not the kit's (kit.fab): run ./loadkit setup "
            "(or .venv/bin/pip install --no-deps -e .) for its exit statuses and run names",
            file=sys.stderr,
        )


_hint_if_fabrics_own_fab()


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
    positional=["clients"],
    help={
        "inventory": INV_HELP,
        "clients": "concurrent sessions to plan for (also as a bare word: fab plan 500)",
        "from_run": "a previous run (id under results/ or folder): its CPU per token per component sizes the CPU "
        "too, and per idle session when the run had an idle window (--queries 2 --think-time >= ramp + 30 s)",
        "think_time": "seconds between a session's queries (with --from-run: the run's)",
        "tokens": "tokens per answer (default the simulator's 43, or the run's)",
        "token_delay": "ms between tokens (default 50, or the run's)",
        "ttft": "ms to the first token (default 0, or the run's)",
    },
)
@_cli
def plan(
    c,
    clients=_NOT_GIVEN,
    inventory=DEFAULT_INVENTORY,
    from_run="",
    think_time=None,
    tokens=None,
    token_delay=None,
    ttft=None,
):
    """How many hosts per group a run of N sessions needs, against what the inventory has (exit 1: too few)."""
    from kit.run import plan as run_plan

    _logging(False)
    if clients == _NOT_GIVEN:
        raise Exit("plan: --clients: give the sessions to plan for: fab plan 500 or --clients 500", code=EXIT_USAGE)
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


@task(
    name="analyze",
    auto_shortflags=False,
    positional=["run"],
    iterable=["tag"],
    help={
        "run": "run id under results/, a run folder or a .tar.gz (also as a bare word: fab analyze RUN)",
        "tag": "key=value, repeatable: without a run, the newest run under results/ carrying every one given",
        "json": _JSON_HELP.format(
            keys="exit_status, run_id, results_dir, tags, status, status_reason, analysis, summary"
        ),
    },
)
@_cli
def analyze(c, run=_NOT_GIVEN, tag=None, json=False):
    """Print a run's report and per-query analysis (percentiles, histogram, errors)."""
    from kit.compare import parse_tag_filter
    from kit.run import analyze as run_analyze

    tags = parse_tag_filter(tag or [])
    with _json_mode(json) as on_result:
        rc = run_analyze(run or None, tags=tags, results=REPO / "results", on_result=on_result if json else None)
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


class _Own(NamedTuple):
    """A task option that is not a RunOptions field (how the task prints, a capacity search's bounds)."""

    help: str
    default: Any = None
    repeatable: bool = False


#: fab run's own options (how it prints), not the run's
_RUN_OWN = {
    "quiet": _Own("no live view", False),
    "json": _Own(
        "print the final summary as JSON on stdout (exit status, outcome, paths, summary); "
        "every other line goes to stderr",
        False,
    ),
}


def _field_help(f: dataclasses.Field, shown_default: Any = dataclasses.MISSING) -> str:
    """A RunOptions field's help with its default: the generator's for a load option fab leaves to it, else
    the run's own (a path's is in its help); *shown_default* when a task has a default of its own."""
    from kit import options

    load = {d.name for d in options.declared()}
    if shown_default is not dataclasses.MISSING:  # the task sets it: no generator default or variable applies
        shown = shown_default if isinstance(shown_default, str) else options.shown(shown_default)
        return f"{f.metadata['help']} (default {shown})"
    if f.name in load and f.default is None and not f.metadata.get("fab_required"):
        return options.option_help(f, default_value=options.default(f.name), generator=True)
    shown = f.default if f.default is not dataclasses.MISSING and not isinstance(f.default, Path) else None
    return options.option_help(f, default_value=shown, generator=f.name in load)


def _options_task(body, *, name: str, fields: Mapping[str, dataclasses.Field], own: Mapping[str, _Own], shown=None):
    """The task *name* of *body* (``body(c, <own options>, **options)``): one option per RunOptions field of
    *fields* (task parameter name -> field), its help (with its default, or *shown*'s for the task) and its
    kind (a flag for a bool, repeatable for a list, else a value parsed and checked by :func:`_run_value`)
    from the declaration, so no option is typed twice; then the task's *own* options."""
    import inspect

    shown = shown or {}
    helps, iterable = {}, []
    params = [inspect.Parameter("c", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    for pname, f in fields.items():
        is_list = f.default_factory is list
        iterable += [pname] if is_list else []
        default = False if f.default is False else None
        params.append(inspect.Parameter(pname, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default))
        helps[pname] = _field_help(f, shown.get(f.name, dataclasses.MISSING))
    for pname, o in own.items():
        iterable += [pname] if o.repeatable else []
        params.append(inspect.Parameter(pname, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=o.default))
        helps[pname] = o.help
    body.__signature__ = inspect.Signature(params)
    return task(name=name, auto_shortflags=False, iterable=iterable, help=helps)(_cli(body))


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


def _run_options(given: Mapping[str, Any], defaults: Mapping[str, Any] | None = None, **fixed: Any):
    """kit.run.RunOptions of a task's options (*given*: parameter name -> raw value, those not given None),
    each parsed as its field wants it; *defaults* (field name -> value) fill what was not given, and *fixed*
    is set whatever was.  When RunOptions records which options were given (a plan file's values yield to
    those only), the names given are passed on: a default filled in here is not one of them."""
    from kit.run import RunOptions

    fields = _run_fields()
    values = {fields[k].name: _run_value(fields[k], v) for k, v in given.items() if v not in (None, "", [], False)}
    named = frozenset(values)
    values = {"inventory": _inv(DEFAULT_INVENTORY), **(defaults or {}), **values, **fixed}
    if "given" in {f.name for f in dataclasses.fields(RunOptions)}:
        values["given"] = named
    return RunOptions(**values)


def run(c, quiet=False, json=False, **given):
    """Run the benchmark across the generator hosts and pack results/<run-id>.tar.gz."""
    from kit.run import execute, live_view

    _logging(False)
    opts = _run_options(given, live=not quiet)
    with _json_mode(json) as on_result:  # the live view on stderr with --json (stdout is the document's)
        view = live_view(sys.stdout)
        rc = execute(opts, out=view.out, view=view, on_result=on_result)
    if rc:
        raise Exit(code=rc)


run = _options_task(run, name="run", fields=_run_fields(), own=_RUN_OWN)


@task(
    name="compare",
    auto_shortflags=False,
    positional=["runs"],
    iterable=["fail_if", "tag"],
    help={
        "runs": "comma-separated run ids under results/, run folders or .tar.gz; the first is the baseline "
        "(also as a bare word: fab compare A,B)",
        "fail_if": "regression rule, repeatable: 'p99>+10%' (change to the baseline), 'tps<-5%', 'lost>0'; exit 1",
        "html": "where to write the comparison page (default results/compare-<a>-vs-<b>.html)",
        "tag": "key=value, repeatable: the runs carrying every one given (without runs: those under results/, "
        "oldest first, the oldest the baseline)",
        "label": "a tag's key: name each run's column by its value of that tag (else by its run id)",
        "json": _JSON_HELP.format(
            keys="exit_status, outcome, failed_rules, baseline, runs, figures, fail_if, settings, method, html_file"
        ),
    },
)
@_cli
def compare(c, runs=_NOT_GIVEN, fail_if=None, html="", tag=None, label="", json=False):
    """Key figures of runs side by side with the change to the first and a bootstrap noise test."""
    import re

    from kit.compare import run_compare

    refs = [r for r in re.split(r"[,\s]+", runs) if r]
    with _json_mode(json) as on_result:
        rc = run_compare(
            refs,
            fail_if or [],
            Path(html) if html else None,
            results=REPO / "results",
            tags=tag or [],
            label=label or None,
            on_result=on_result,
        )
    if rc:
        raise Exit(code=rc)


#: RunOptions fields a capacity search sets on every step itself (kit.run._capacity), so fab capacity takes
#: no flag for them: the load is the search's (--start, --step, --max), the run ids its --name's, the SLOs
#: its thresholds (--slo), and each step is a closed-model run of that many sessions
_CAPACITY_SETS = frozenset(
    {"clients", "run_id", "thresholds", "no_default_thresholds", "arrival_rate", "duration", "stages", "arrivals"}
)
#: a step's own defaults where fab run's differ: a step is short, many of them make a search
_CAPACITY_STEP_DEFAULTS = {"queries": 3, "max_duration": 300.0}
#: fab capacity's own options: the search's
_CAPACITY_OWN = {
    "slo": _Own(
        "service-level objective, repeatable: 'delivery_p99<50ms', 'success>=99.9%', 'p99<2s' (as --threshold)",
        repeatable=True,
    ),
    "start": _Own("sessions of the first step (default 10)"),
    "step": _Own("growth while every SLO holds: '50' adds 50 sessions, 'x2' doubles (default x2)"),
    "max": _Own("most sessions to try (default 10000)"),
    "resolution": _Own("stop bisecting when passing and failing loads are this close (default 1 session)"),
    "name": _Own("name of the search: results/<name>.json, .html and <name>-s<i>-c<load> runs"),
    "json": _Own(
        _JSON_HELP.format(
            keys="exit_status, outcome, name, reason, slos, knee, first_failing, steps, json_file, html_file"
        ),
        False,
    ),
}


def capacity(c, slo=None, start=None, step=None, max=None, resolution=None, name=None, json=False, **given):
    """Find the highest load that meets every SLO: step up, then bisect; name the bottleneck.

    Each step is a fab run: every fab run option but those the search sets (--clients, --run-id, --threshold,
    --arrival-rate, --duration) applies to every step; without --ramp a step starts its sessions within 5 s.
    """
    from kit.run import execute_capacity

    _logging(False)
    base = _run_options(given, _CAPACITY_STEP_DEFAULTS, clients=1, live=False)
    with _json_mode(json) as on_result:
        rc, _ = execute_capacity(
            base,
            slo or [],
            start=_num(int, "start", start, 1, default=10),
            step=str(step or "x2"),
            maximum=_num(int, "max", max, 1, default=10000),
            resolution=_num(int, "resolution", resolution, 1, default=1),
            name=name or None,
            on_result=on_result,
        )
    if rc:
        raise Exit(code=rc)


capacity = _options_task(
    capacity,
    name="capacity",
    fields={k: f for k, f in _run_fields().items() if f.name not in _CAPACITY_SETS},
    own=_CAPACITY_OWN,
    shown={**_CAPACITY_STEP_DEFAULTS, "ramp": "each step's sessions within 5 s"},
)
