"""``fab``: Fabric's command line with the kit's exit status for a bad command line, and run names that may be
left out.

The kit's tasks (``fabfile.py``) promise one exit status per kind of outcome (README "fab tasks"): 2 for bad
options.  Fabric's own program (``fabric.main.Fab``, an invoke ``Program``) prints invoke's ``ParseError`` and
exits 1 on a command line it cannot parse (an unknown option or task, a flag without its value), which is the
status of a failed threshold: a script could not tell a typo from a regression.  :class:`KitFab` is that
program with two steps of its parse changed and nothing else:

- a parse error becomes one line naming what was wrong (the unknown option with the nearest known one, or
  the unknown task) and the task's usage, and exit status 2 (:func:`parse_error_line`);
- a task's positional parameters may be left out when the task gives them a default (``fab compare A,B``
  and ``fab compare --tag build=abc``; ``fab analyze RUN`` and ``fab analyze --tag k=v``).  invoke requires
  every positional argument, and takes the next word for a missing one, ``--help`` included; so the kit's
  tasks give theirs a default (invoke then never waits for them) and a bare word after such a task is
  handed to it as ``--name=word`` (:func:`positionals_as_flags`).  ``fab analyze --help`` then prints the
  task's help, as ``fab run --help`` does.

It is the ``fab`` of the kit's virtual environment: pyproject.toml's ``[project.scripts]`` installs it over
Fabric's script of the same name (``pip install --no-deps -e .``, which ``./loadkit setup`` runs after
installing requirements.lock, so the kit's is the one left).  Subclassing keeps every other behaviour of
Fabric's (core options, ``--list``, ``--help``, SSH configuration) as it is; only the parse of the task part
of the command line is wrapped.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import fabric
from fabric import Config, Executor
from fabric.main import Fab
from invoke import Exit, ParseError

__all__ = ["KitFab", "program", "main", "positionals_as_flags", "parse_error_line", "usage", "EXIT_USAGE"]

#: the exit status of a command line the tasks cannot take (README "fab tasks": bad options)
EXIT_USAGE = 2


def _flag_of(arg: Any) -> str:
    """The flag invoke gives an argument: ``--name`` (``-n`` for a one-letter name)."""
    name = arg.names[0]
    return f"-{name}" if len(name) == 1 else f"--{name}"


def _lookup(flags: Any, token: str) -> Any:
    """The argument of *token* among *flags* (an invoke Lexicon: aliases resolve), or None."""
    try:
        return flags[token]
    except KeyError:
        return None


def positionals_as_flags(tokens: Sequence[str], contexts: Mapping[str, Any], initial_flags: Any) -> list[str]:
    """*tokens* (the command line after the core options) with each bare word that fills a task's positional
    parameter written as that parameter's flag (``compare A,B`` -> ``compare --runs=A,B``), in the order the
    task declares them.  A flag's value, a word once the task's positionals are filled (a task name then),
    and everything after ``--`` are left as they are.  Pure: *contexts* are invoke's parser contexts by task
    name, *initial_flags* its core flags (``--help`` may follow a task)."""
    out: list[str] = []
    ctx: Any = None
    slots: list[Any] = []
    expect_value = False
    for i, token in enumerate(tokens):
        if token == "--":
            return out + list(tokens[i:])
        if expect_value:
            out.append(token)
            expect_value = False
            continue
        if token.startswith("-") and len(token) > 1:
            flag, eq, _ = token.partition("=")
            arg = (_lookup(ctx.flags, flag) if ctx is not None else None) or _lookup(initial_flags, flag)
            expect_value = bool(arg is not None and arg.takes_value and not arg.optional and not eq)
            slots = [s for s in slots if s is not arg]  # given by its flag: no bare word fills it
            out.append(token)
        elif slots:
            out.append(f"{_flag_of(slots.pop(0))}={token}")
        else:
            if token in contexts:
                ctx = contexts[token]
                slots = list(ctx.positional_args)
            out.append(token)
    return out


def usage(binary: str, task: str, ctx: Any) -> str:
    """The task's usage: its positional parameters by name, then its options (``--help`` lists them)."""
    words = "".join(f"[{arg.names[0].upper()}] " for arg in ctx.positional_args)
    return f"usage: {binary} {task} {words}[--options] ({binary} {task} --help lists them)"


def _nearest(word: str, known: Iterable[str]) -> str:
    """`` (did you mean X?)`` for the closest of *known* to a mistyped *word*, else nothing."""
    close = difflib.get_close_matches(word, list(known), n=1, cutoff=0.75)  # 0.6 offers --inventory for --clients
    return f" (did you mean {close[0]}?)" if close else ""


def parse_error_line(exc: ParseError, contexts: Mapping[str, Any], binary: str = "fab") -> str:
    """One line for invoke's parse error *exc*: what was wrong, named as the user wrote it, and how to fix it
    (the nearest option or task, the task's usage).  Pure."""
    message = str(exc)
    ctx = getattr(exc, "context", None)
    task = getattr(ctx, "name", None)
    tasks = [str(name) for name in contexts]
    if task is None or ctx is None:  # before any task: the first word is not one
        unknown = re.fullmatch(r"No idea what '(.*)' is!", message)
        if unknown:
            word = unknown[1]
            return f"{binary}: no task {word!r}{_nearest(word, tasks)}: {binary} --list lists the tasks"
        return f"{binary}: {message} ({binary} --list lists the tasks)"
    how = usage(binary, task, ctx)
    unknown = re.fullmatch(r"No idea what '(.*)' is!", message)
    if unknown and unknown[1].startswith("-"):
        word = unknown[1]
        options = [f for f in ctx.flags if str(f).startswith("--")]
        return f"{task}: no option {word!r}{_nearest(word.partition('=')[0], options)}; {how}"
    if unknown:
        word = unknown[1]
        return f"{task}: {word!r} is neither an option of {task} nor a task{_nearest(word, tasks)}; {how}"
    arg = re.search(r"<Argument: ([^\s>]+)", message)
    if arg and "needed value" in message:
        return f"{task}: --{arg[1]} needs a value; {how}"
    if arg and "doesn't take any value" in message:
        return f"{task}: --{arg[1]} takes no value; {how}"
    return f"{task}: {message}; {how}"


class KitFab(Fab):
    """Fabric's program, with a parse error exit 2 in one line and positional parameters that may be left out."""

    _parser: Any = None
    _parser_of: Any = None

    def _make_parser(self) -> Any:
        """invoke's parser of the loaded tasks, made once per collection: a task gives its options' help away to
        the first parser made from it (invoke's ``Task.arg_opts`` pops its help dict), and this program needs
        the parser's contexts before invoke's parse (:func:`positionals_as_flags`) as well as for it and for
        ``--help``.  Parsing never changes the parser's own contexts (each parse works on copies)."""
        if self._parser is None or self._parser_of is not self.collection:
            self._parser, self._parser_of = super()._make_parser(), self.collection
        return self._parser

    def parse_tasks(self) -> None:
        contexts = self._make_parser().contexts
        self.core.unparsed = positionals_as_flags(self.core.unparsed, contexts, self.initial_context.flags)
        try:
            super().parse_tasks()
        except ParseError as exc:
            raise Exit(parse_error_line(exc, contexts, self.binary), code=EXIT_USAGE) from None

    def parse_cleanup(self) -> None:
        try:
            super().parse_cleanup()
        except ParseError as exc:  # ``fab --help NAME`` of no task
            raise Exit(parse_error_line(exc, self._make_parser().contexts, self.binary), code=EXIT_USAGE) from None


#: the program ``fab`` runs (as fabric.main.program, with the kit's class)
program = KitFab(name="Fabric", version=fabric.__version__, executor_class=Executor, config_class=Config)


def main() -> None:
    """The ``fab`` command (pyproject.toml's ``[project.scripts]``)."""
    program.run()


if __name__ == "__main__":
    main()
