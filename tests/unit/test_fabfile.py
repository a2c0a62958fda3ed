"""fabfile.py's one error mapping (``_cli``): which exception gives which exit status, one line each.

The codes are README's "fab tasks": 2 bad options or failed preflight, 4 an internal error (its
traceback in a file, not on the terminal), 130 Ctrl-C, 143 SIGTERM; ``Exit`` passes untouched.
A bad option value through the real ``fab`` command line is exit 2 as well.
"""

from __future__ import annotations

import importlib.util
import signal
import subprocess
from pathlib import Path

import pytest
from invoke import Exit

from kit.run import Interrupted, RunError

REPO = Path(__file__).resolve().parents[2]
FAB = REPO / ".venv" / "bin" / "fab"


@pytest.fixture(scope="module")
def fabfile():
    spec = importlib.util.spec_from_file_location("fabfile_under_test", REPO / "fabfile.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _exit_of(fabfile, exc: BaseException) -> Exit:
    def some_task(c, value=None):
        raise exc

    with pytest.raises(Exit) as info:
        fabfile._cli(some_task)(None, value="x")
    return info.value


def test_a_known_error_is_exit_2_with_one_line_naming_the_task(fabfile):
    e = _exit_of(fabfile, RunError("preflight failed:\n  unhealthy: redis"))
    assert e.code == 2 and e.message.startswith("some-task: preflight failed")


def test_an_unexpected_exception_is_exit_4_one_line_and_the_traceback_in_a_file(fabfile):
    def deep():
        raise ZeroDivisionError("division by zero")

    def some_task(c):
        deep()

    with pytest.raises(Exit) as info:
        fabfile._cli(some_task)(None)
    e = info.value
    assert e.code == fabfile.EXIT_INTERNAL == 4
    assert "\n" not in e.message
    assert e.message.startswith("some-task: internal error: ZeroDivisionError: division by zero at test_fabfile.py:")
    log = Path(e.message.rsplit("traceback in ", 1)[1].rstrip(")"))
    try:
        text = log.read_text()
        assert "Traceback (most recent call last)" in text and "in deep" in text and "ZeroDivisionError" in text
    finally:
        log.unlink()


@pytest.mark.parametrize(
    "exc, code, name",
    [
        (KeyboardInterrupt(), 130, "SIGINT"),
        (Interrupted(signal.SIGINT), 130, "SIGINT"),
        (Interrupted(signal.SIGTERM), 143, "SIGTERM"),
    ],
)
def test_an_interrupt_is_128_plus_the_signal(fabfile, exc, code, name):
    e = _exit_of(fabfile, exc)
    assert e.code == code and e.message == f"some-task: interrupted by {name}"


def test_exit_passes_through_untouched_and_a_normal_return_is_kept(fabfile):
    original = Exit("--clients 'x' is not a whole number", code=2)
    assert _exit_of(fabfile, original) is original
    assert fabfile._cli(lambda c, v=1: v * 3)(None, v=2) == 6


def test_every_task_goes_through_the_one_error_mapping(fabfile):
    from invoke import Task

    tasks = {n: t for n, t in vars(fabfile).items() if isinstance(t, Task)}
    assert len(tasks) >= 10
    for name, t in tasks.items():
        assert getattr(t.body, "__wrapped__", None) is not None, f"{name} is not decorated with _cli"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "--clients", "abc"], "--clients 'abc' is not a whole number"),
        (["run", "--max-duration", "soon"], "--max-duration 'soon' is not a number"),
        (["run", "--reconnect-rate", "-1"], "--reconnect-rate -1 is below 0"),
        (["capacity", "--start", "abc", "--slo", "p99<1s"], "--start 'abc' is not a whole number"),
        (
            ["run", "--clients", "4", "--think-time", "-1", "--inventory", "/nonexistent/inv.yml"],
            "--think-time -1 is below 0",
        ),
        (
            ["run", "--clients", "4", "--think-time", "700", "--inventory", "/nonexistent/inv.yml"],
            "run: --think-time 700 ",
        ),
    ],
)
def test_a_bad_option_value_on_the_command_line_exits_2_with_one_line(argv, message, tmp_path):
    res = subprocess.run([str(FAB), *argv], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2, res.stderr
    assert res.stderr.startswith(message) and res.stderr.count("\n") == 1, res.stderr
    assert "Traceback" not in res.stderr and res.stdout == ""


# -- the kit's fab (kit.fab): positional parameters that may be left out, parse errors as exit 2 ---------


@pytest.fixture(scope="module")
def contexts(fabfile):
    """invoke's parser contexts of the kit's tasks, by name, as kit.fab's program makes them (from a copy of the
    tasks: making contexts takes the help strings out of a task, invoke's Task.arg_opts pops them)."""
    import copy

    from invoke import Collection
    from invoke.parser import Parser

    from kit.fab import program

    tasks = copy.deepcopy(Collection.from_module(fabfile))
    return Parser(initial=program.initial_context, contexts=tasks.to_contexts()).contexts


def test_every_positional_parameter_has_a_default_so_help_after_the_task_is_its_help(fabfile):
    """invoke takes a positional parameter without a default (or defaulting to None) as required and eats the
    next word for it, --help included: fab analyze --help was a run named --help."""
    import inspect

    from invoke import Task

    positional = {}
    for name, t in vars(fabfile).items():
        if isinstance(t, Task):
            params = inspect.signature(t.body).parameters
            for p in t.positional:
                assert params[p].default not in (None, inspect.Parameter.empty), f"{name}: {p}"
                positional[t.name] = p
    assert positional == {"analyze": "run", "compare": "runs", "plan": "clients"}


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["compare", "a,b", "--fail-if", "p99>+1%"], ["compare", "--runs=a,b", "--fail-if", "p99>+1%"]),
        (["compare", "--html", "page.html", "a,b"], ["compare", "--html", "page.html", "--runs=a,b"]),
        (["compare", "--html=page.html", "a,b"], ["compare", "--html=page.html", "--runs=a,b"]),
        (["compare", "--tag", "build=1", "--json"], ["compare", "--tag", "build=1", "--json"]),
        (["compare", "--runs", "a,b", "status"], ["compare", "--runs", "a,b", "status"]),  # given: a task follows
        (["analyze", "--help"], ["analyze", "--help"]),
        (["analyze", "r1", "--help"], ["analyze", "--run=r1", "--help"]),
        (["analyze", "r1", "status"], ["analyze", "--run=r1", "status"]),
        (["plan", "500", "--think-time", "2"], ["plan", "--clients=500", "--think-time", "2"]),
        (["run", "--clients", "5", "stray"], ["run", "--clients", "5", "stray"]),  # run has no positional
        (["run", "--json", "stray"], ["run", "--json", "stray"]),  # a flag takes no value
        (["analyze", "--", "r1"], ["analyze", "--", "r1"]),
    ],
)
def test_a_bare_word_fills_the_tasks_positional_parameter_as_its_flag(contexts, argv, expected):
    from kit.fab import positionals_as_flags, program

    assert positionals_as_flags(argv, contexts, program.initial_context.flags) == expected


@pytest.mark.parametrize(
    "argv, line",
    [
        (
            ["run", "--think-tim", "5"],
            "run: no option '--think-tim' (did you mean --think-time?); "
            "usage: fab run [--options] (fab run --help lists them)",
        ),
        (
            ["compare", "--runs=a,b", "--fail-iff", "x"],
            "compare: no option '--fail-iff' (did you mean --fail-if?); "
            "usage: fab compare [RUNS] [--options] (fab compare --help lists them)",
        ),
        (["statsu"], "fab: no task 'statsu' (did you mean status?): fab --list lists the tasks"),
        (["run", "--clients"], "run: --clients needs a value; usage: fab run [--options] (fab run --help lists them)"),
        (
            ["analyze", "--run=r1", "extra"],
            "analyze: 'extra' is neither an option of analyze nor a task; "
            "usage: fab analyze [RUN] [--options] (fab analyze --help lists them)",
        ),
    ],
)
def test_a_parse_error_is_one_line_naming_the_word_and_the_tasks_usage(contexts, argv, line):
    from invoke import ParseError
    from invoke.parser import Parser

    from kit.fab import parse_error_line, program

    with pytest.raises(ParseError) as info:
        Parser(initial=program.initial_context, contexts=contexts.values()).parse_argv(argv)
    assert parse_error_line(info.value, contexts) == line


# -- fab capacity: fab run's options, built from RunOptions as fab run's are ---------------------------------


def _params(t) -> set[str]:
    import inspect

    return set(inspect.signature(t.body).parameters) - {"c"}


def test_capacity_takes_every_run_option_but_those_the_search_sets_and_its_own(fabfile):
    from types import SimpleNamespace

    from kit.run._capacity import step_changes

    fields = fabfile._run_fields()
    assert _params(fabfile.capacity) == {k for k, f in fields.items() if f.name not in fabfile._CAPACITY_SETS} | set(
        fabfile._CAPACITY_OWN
    )
    assert _params(fabfile.run) == set(fields) | {"quiet", "json"}
    # what a step sets whatever it was given is what fab capacity has no flag for (ramp: a step's pace default)
    assert set(step_changes(SimpleNamespace(), 1, "x", [], None)) - {"ramp", "live"} == fabfile._CAPACITY_SETS
    assert {"inventory", "tokens", "think_time", "tls", "workload", "ramp", "queries"} <= _params(fabfile.capacity)
    assert not {"clients", "run_id", "threshold", "arrival_rate", "duration"} & _params(fabfile.capacity)
    assert fabfile.capacity.help["max_duration"].endswith("(default 300)")
    assert fabfile.capacity.help["ramp"].endswith("(default each step's sessions within 5 s)")


def _sample(f) -> tuple[object, object]:
    """(a command-line value of field *f*'s option, the value RunOptions gets for it)."""
    kind = str(f.type)
    if kind.startswith("bool"):
        return True, True
    if kind.startswith("list"):
        return ["k=v"], ["k=v"]
    if kind.startswith("Path"):
        return "x.yml", Path("x.yml")
    if kind.startswith(("int", "float")):
        return "7", 7
    choices = f.metadata.get("choices")
    return (choices[-1], choices[-1]) if choices else ("x", "x")


@pytest.fixture
def captured_capacity(fabfile, monkeypatch, tmp_path):
    """fab capacity's body with kit.run.execute_capacity replaced: the base RunOptions and arguments it got."""
    import kit.run

    seen: dict = {}

    def fake(base, slos, **kw):
        seen.update(base=base, slos=slos, **kw)
        return 0, None

    monkeypatch.setattr(kit.run, "execute_capacity", fake)
    return seen


def test_every_capacity_option_reaches_the_base_run_of_each_step(fabfile, captured_capacity):
    """Built generically: a RunOptions field added later (a plan file, tags) is a capacity option as it is a
    fab run option, its value parsed as fab run parses it."""
    import dataclasses

    fields = {k: f for k, f in fabfile._run_fields().items() if f.name not in fabfile._CAPACITY_SETS}
    for pname, f in fields.items():
        raw, want = _sample(f)
        fabfile.capacity.body(None, slo=["p99<1s"], **{pname: raw})
        base = captured_capacity["base"]
        got = getattr(base, f.name)
        if f.name == "inventory":
            want = fabfile._inv("x.yml")
        assert got == want, pname
        if "given" in {x.name for x in dataclasses.fields(base)}:
            assert base.given == {f.name}, pname  # what the command line named, no default filled in
    base = captured_capacity["base"]
    assert captured_capacity["slos"] == ["p99<1s"] and captured_capacity["start"] == 10
    assert captured_capacity["step"] == "x2" and captured_capacity["maximum"] == 10000


def test_capacity_steps_default_to_their_own_queries_and_bound_and_take_given_ones(fabfile, captured_capacity):
    fabfile.capacity.body(None, slo=["p99<1s"])
    base = captured_capacity["base"]
    assert (base.queries, base.max_duration, base.live) == (3, 300.0, False)
    assert base.inventory == fabfile._inv(fabfile.DEFAULT_INVENTORY)
    fabfile.capacity.body(None, slo=["p99<1s"], queries="5", max_duration="60", start="20", step="50", max="400")
    base = captured_capacity["base"]
    assert (base.queries, base.max_duration) == (5, 60.0)
    assert (captured_capacity["start"], captured_capacity["step"], captured_capacity["maximum"]) == (20, "50", 400)


def test_capacity_json_prints_one_document_on_stdout_and_the_steps_on_stderr(fabfile, monkeypatch, tmp_path, capsys):
    """The --json path end to end but for the runs: kit.run.execute stands in for each step's run."""
    import dataclasses
    import json

    import kit.run._run

    def fake_execute(opts, **_kw):
        d = opts.results_dir / opts.run_id
        d.mkdir(parents=True)
        tps = 10.0 * opts.clients
        (d / "summary.json").write_text(json.dumps({"tps": tps, "success_rate": 100.0, "total_sessions": 1}))
        return 0 if tps <= 400 else 1

    real = fabfile._run_options
    monkeypatch.setattr(
        fabfile, "_run_options", lambda *a, **k: dataclasses.replace(real(*a, **k), results_dir=tmp_path)
    )
    monkeypatch.setattr(kit.run._run, "execute", fake_execute)
    fabfile.capacity.body(None, slo=["tps<=400"], start="10", resolution="5", name="cap", json=True)
    out, err = capsys.readouterr()
    doc = json.loads(out)  # the whole of stdout is one document
    assert out == json.dumps(doc, indent=2, default=str) + "\n"
    assert doc["exit_status"] == 0 and doc["outcome"] == "knee_found" and 35 <= doc["knee"]["load"] <= 40
    assert doc["json_file"] == str(tmp_path / "cap.json")
    assert "capacity step 1 (start): 10 sessions" in err and "knee:" in err
    # no load meets the SLO: exit 1, and the document still printed
    with pytest.raises(Exit) as info:
        fabfile.capacity.body(None, slo=["tps<=5"], start="10", name="cap2", json=True)
    out, _ = capsys.readouterr()
    assert info.value.code == 1 and json.loads(out)["outcome"] == "no_load_met_slos"


# -- fab run ------------------------------------------------------------------------------------------------


def test_fab_run_adds_no_requirement_of_its_own_to_arrival_rate(fabfile, monkeypatch):
    """--arrival-rate without --clients: whether that is enough is RunOptions.resolve's call, not fabfile's."""
    import kit.run

    seen = []
    monkeypatch.setattr(kit.run, "execute", lambda opts, **kw: seen.append(opts) or 0)
    fabfile.run.body(None, quiet=True, arrival_rate="5", duration="10")
    assert seen[0].arrival_rate == 5.0 and seen[0].duration == 10.0 and seen[0].clients is None


def test_fab_run_json_and_quiet_are_its_own_and_every_run_option_is_one_flag(fabfile):
    assert fabfile.run.help["quiet"] == "no live view" and fabfile.run.help["json"].startswith("print the final")
    assert set(fabfile.run.iterable) == {k for k, f in fabfile._run_fields().items() if f.default_factory is list}
