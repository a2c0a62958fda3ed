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
