"""A benchmark as code: ``fab run --plan FILE`` reads everything a run is from one YAML file.

A plan's keys are ``fab run``'s options with underscores (``clients``, ``queries``, ``think_time``,
``token_delay``, ``abort_on_fail``, ``tls`` ...: :func:`plan_keys`), the repeatable ones by their plural
(``thresholds``, ``chaos``; ``tags`` a mapping), plus:

- ``stages``: a list of ``{duration, target[, arrivals]}`` (k6's stages): ``target`` is concurrent
  sessions in the closed model, sessions started per second in the open one (with ``arrival_rate``,
  the rate the first stage starts from);
- ``arrivals``: ``even`` or ``poisson``; ``seed``: the seed of the arrival schedule;
- ``workload``: a workload file's path (relative to the plan) or its classes written inline.

A value given on the command line overrides the plan's (:meth:`kit.run.RunOptions.resolve` applies the
plan under it).  Every problem of a file is found before the run starts and reported one line each, with
its place in the file (``stages[2].target: must be a number >= 0``): :class:`PlanFileError`, exit 2.
Pure but for reading the file (and writing an inline workload to a temporary file the run copies).
"""

from __future__ import annotations

import atexit
import dataclasses
import difflib
import hashlib
import re
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from kit import options
from kit.config import ConfigError

__all__ = ["PLAN_FILE", "Plan", "PlanFileError", "load_plan", "plan_keys", "parse_tags", "TAG_KEY"]

#: the plan's copy in a run's results folder
PLAN_FILE = "plan.yml"
#: a tag's key (``--tag key=value``): letters, digits, ``_ . -``, as Prometheus labels and k6 tags allow
TAG_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,62}")
#: keys of a stage
STAGE_KEYS = ("duration", "target", "arrivals")
ARRIVALS = ("even", "poisson")
#: RunOptions fields a plan does not set: the plan itself, and a run's name (a plan is run more than once)
NOT_IN_PLAN = ("plan", "run_id")
#: a plan file larger than this is refused before it is parsed (a plan is a page, not a data file)
MAX_PLAN_BYTES = 1 << 20


class PlanFileError(ValueError):
    """A plan file that cannot be run: its problems, one line each, with their place in the file."""

    def __init__(self, path: Path | str, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(f"--plan {path}: {p}" for p in problems))


@dataclasses.dataclass(frozen=True)
class Plan:
    """A checked plan: its file, its text and the RunOptions values it gives (field name -> value)."""

    path: Path
    text: str
    values: dict[str, Any]

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()


def _repeatable(f: dataclasses.Field) -> bool:
    return f.default_factory is list


def plan_keys(fields: Iterator[dataclasses.Field]) -> dict[str, dataclasses.Field]:
    """Plan key -> RunOptions field: an option's flag with underscores (``--think-time``: ``think_time``), a
    repeatable one's field name (``thresholds``, ``tags``, ``chaos``)."""
    out: dict[str, dataclasses.Field] = {}
    for f in fields:
        flag = f.metadata.get("option")
        if not flag or f.name in NOT_IN_PLAN:
            continue
        out[f.name if _repeatable(f) else flag[2:].replace("-", "_")] = f
    return out


def parse_tags(items: list[str]) -> dict[str, str]:
    """``key=value`` words (``--tag``) as a mapping; ConfigError, one line, for a malformed one."""
    tags: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not TAG_KEY.fullmatch(key.strip()):
            raise ConfigError(
                f"--tag {item!r:.60}: write key=value, the key letters, digits, '_', '.' or '-' (e.g. build=1.4.2)"
            )
        tags[key.strip()] = value.strip()
    return tags


def load_plan(path: Path, fields: Iterator[dataclasses.Field]) -> Plan:
    """Read and check the plan at *path* against RunOptions' *fields*; PlanFileError listing every problem."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_PLAN_BYTES:
            raise PlanFileError(path, [f"larger than {MAX_PLAN_BYTES >> 10} KiB: a plan is a page of options"])
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise PlanFileError(
            path, [f"cannot read it ({why}): give a YAML plan file (README 'Benchmark as code')"]
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        raise PlanFileError(path, [f"{where}not valid YAML ({getattr(exc, 'problem', None) or exc})"]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise PlanFileError(path, ["a plan is a mapping of option names to values (e.g. clients: 100)"])
    checker = _Checker(path.parent, plan_keys(fields))
    values = checker.check(data)
    if checker.problems:
        raise PlanFileError(path, checker.problems)
    return Plan(path=path, text=text, values=values)


class _Checker:
    """Checks a plan's keys one by one, collecting every problem (a user fixes a file in one pass)."""

    def __init__(self, base: Path, keys: dict[str, dataclasses.Field]) -> None:
        self.base, self.keys = base, keys
        self.problems: list[str] = []

    def fail(self, where: str, message: str) -> None:
        self.problems.append(f"{where}: {message}")

    def check(self, data: Mapping[Any, Any]) -> dict[str, Any]:
        values: dict[str, Any] = {}
        known = sorted(self.keys)
        for key, raw in data.items():
            key = str(key)
            f = self.keys.get(key)
            if f is None:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f"did you mean {close[0]}?" if close else f"use one of {', '.join(known)}"
                self.fail(key, f"not an option of a plan: {hint}")
                continue
            value = self.value(key, f, raw)
            if value is not None:
                values[f.name] = value
        return values

    def value(self, key: str, f: dataclasses.Field, raw: Any) -> Any:
        special = getattr(self, f"_{f.name}", None)
        if special is not None:
            return special(key, raw)
        if raw is None:
            return None
        kind = str(f.type)
        if kind.startswith("bool"):
            if not isinstance(raw, bool):
                self.fail(key, f"{raw!r:.40} is not true or false")
                return None
            return raw
        if kind.startswith("Path"):
            if not isinstance(raw, str) or not raw:
                self.fail(key, "give a file's path (relative to the plan's folder)")
                return None
            return self.base / raw
        try:
            return options.parse_option(f, raw, flag=key)
        except ConfigError as exc:
            self.fail(key, _as_plan_message(key, str(exc)))
            return None

    def _items(self, key: str, raw: Any) -> list[Any] | None:
        if raw is None:
            return None
        if not isinstance(raw, list):
            self.fail(key, "give a list (one item per line, each starting with '- ')")
            return None
        return raw

    def _thresholds(self, key: str, raw: Any) -> list[Any] | None:
        from ._plan import PlanError, parse_threshold

        out = []
        for i, item in enumerate(self._items(key, raw) or []):
            try:
                out.append(parse_threshold(str(item)))
            except PlanError as exc:
                self.fail(f"{key}[{i}]", str(exc))
        return out or None

    def _chaos(self, key: str, raw: Any) -> list[str] | None:
        from ._chaos import ChaosError, parse_chaos

        out = []
        for i, item in enumerate(self._items(key, raw) or []):
            try:
                parse_chaos(str(item))
                out.append(str(item))
            except ChaosError as exc:
                self.fail(f"{key}[{i}]", str(exc))
        return out or None

    def _tags(self, key: str, raw: Any) -> list[str] | None:
        if raw is None:
            return None
        if not isinstance(raw, dict):
            self.fail(key, "give a mapping of tag names to values (e.g. tags: {build: 1.4.2, env: lab})")
            return None
        out = []
        for k, v in raw.items():
            if not TAG_KEY.fullmatch(str(k)):
                self.fail(f"{key}.{k}", "a tag's name is letters, digits, '_', '.' or '-', starting with a letter")
            elif isinstance(v, (dict, list)) or v is None:
                self.fail(f"{key}.{k}", "a tag's value is one word or number")
            else:
                out.append(f"{k}={str(v).lower() if isinstance(v, bool) else v}")
        return out or None

    def _stages(self, key: str, raw: Any) -> str | None:
        items = self._items(key, raw)
        if not items:
            if items == []:
                self.fail(key, "give at least one stage: - {duration: 30s, target: 100}")
            return None
        words = []
        for i, st in enumerate(items):
            where = f"{key}[{i}]"
            if not isinstance(st, dict):
                self.fail(where, "a stage is a mapping: {duration: 30s, target: 100}")
                continue
            for extra in sorted(set(map(str, st)) - set(STAGE_KEYS)):
                self.fail(f"{where}.{extra}", f"not a key of a stage: use {', '.join(STAGE_KEYS)}")
            duration = _seconds(st.get("duration"))
            if duration is None or duration <= 0:
                self.fail(f"{where}.duration", "give seconds > 0: 30, 30s or 2m")
            target = st.get("target")
            if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0 <= target < float("inf"):
                self.fail(f"{where}.target", "must be a number >= 0")
                target = None
            arrivals = st.get("arrivals")
            if arrivals is not None and arrivals not in ARRIVALS:
                self.fail(f"{where}.arrivals", f"{arrivals!r:.30} is not {' or '.join(ARRIVALS)}")
                arrivals = None
            if duration is not None and duration > 0 and target is not None:
                words.append(f"{duration:g}:{target:g}" + (f":{arrivals}" if arrivals else ""))
        return ",".join(words) if len(words) == len(items) else None

    def _arrivals(self, key: str, raw: Any) -> str | None:
        if raw is not None and raw not in ARRIVALS:
            self.fail(key, f"{raw!r:.30} is not {' or '.join(ARRIVALS)}")
            return None
        return raw

    def _workload(self, key: str, raw: Any) -> Path | None:
        if raw is None:
            return None
        if isinstance(raw, str) and raw:
            return self.base / raw
        if not isinstance(raw, dict):
            self.fail(key, "give a workload file's path, or its classes inline (README 'Workload')")
            return None
        from kit.client import WorkloadError, load_workload

        # the inline classes become the file every generator is given (the run copies it to its results); it
        # lives as long as this process (fab run), not after it
        with tempfile.NamedTemporaryFile("w", prefix="loadkit-plan-workload-", suffix=".yml", delete=False) as fh:
            yaml.safe_dump(raw, fh, sort_keys=False)
        path = Path(fh.name)
        try:
            load_workload(path)
        except WorkloadError as exc:
            path.unlink(missing_ok=True)
            self.fail(key, str(exc).replace(fh.name, "(inline)"))
            return None
        atexit.register(path.unlink, missing_ok=True)
        return path


def _seconds(raw: Any) -> float | None:
    """A stage's duration: a number of seconds, or ``30s`` / ``2m`` / ``1h``; None if it is neither."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, (int, float)):
        return float(raw) if raw == raw and raw != float("inf") else None
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", str(raw or ""))
    if not m:
        return None
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def _as_plan_message(key: str, message: str) -> str:
    """An option's message (``think_time -1 is below 0: pass e.g. think_time 0``) as a plan's problem."""
    message = message.removeprefix(f"{key} ")
    return re.sub(rf": pass e\.g\. {re.escape(key)} (.*)$", r" (e.g. \1)", message)
