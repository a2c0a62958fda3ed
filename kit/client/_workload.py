"""A run's workload: what each session asks of the simulator and does itself, and what it ran.

The workload is a property of the run, not of the deployment (DESIGN.md): each ``POST /run``
carries the session's pace, time to first token, jitter and length (:data:`WIRE_FIELDS`, bounded
by the simulator's :data:`kit.wire.WORKLOAD_BOUNDS`), and the session itself applies its
queries, think time and query timeout.  A run has one class (the options) or a weighted mix read
from a workload file (``--workload FILE``)::

    seed: 7                  # optional: the same seed draws the same classes
    classes:
      short:                 # 80 % of the sessions: short answers, 10 s of reading between queries
        weight: 80
        tokens: 20
        think_time_s: 10
      long:
        weight: 20
        tokens: 400
        token_delay_ms: 30

A class's keys (:data:`CLASS_KEYS`) override the run's options for its sessions; a key left out
keeps the option's value, and a wire field nobody set takes the simulator's deployed default.
Each session draws its class by weight from its own seeded generator (:func:`draw`), keyed by
the seed and the session's index, so the draw does not depend on how sessions are split over
processes.

:class:`WorkloadRecord` (one per process) hands each session its :class:`SessionConfig`, counts
sessions per class and keeps the first effective workload the simulator echoed per class (its
``/run`` answer's ``workload``: the deployed defaults included).  Its :meth:`~WorkloadRecord.state`
goes into ``histograms.json``; :func:`merge_workload` adds processes' states and
:func:`workload_summary` is ``summary.json``'s ``workload``.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ._session import SessionConfig

__all__ = [
    "draw_seed",
    "CLASS_KEYS",
    "WIRE_FIELDS",
    "WorkloadError",
    "WorkloadClass",
    "Workload",
    "WorkloadRecord",
    "parse_workload",
    "load_workload",
    "check_option",
    "duration_problems",
    "draw",
    "merge_workload",
    "workload_summary",
]

#: class key -> (SessionConfig field, whole number?, minimum, maximum or None, unit); the first four
#: are sent in each /run body (their bounds are the simulator's), the last three the session applies
CLASS_KEYS: dict[str, tuple[str, bool, float, float | None, str]] = {
    "tokens": ("max_tokens", True, 1, None, "tokens in each answer"),
    "token_delay_ms": ("token_delay_ms", False, 0, None, "ms between tokens"),
    "ttft_ms": ("ttft_ms", False, 0, None, "ms to the first token"),
    "token_jitter_ms": ("token_jitter_ms", False, 0, None, "ms of jitter per token"),
    "think_time_s": ("think_time", False, 0, None, "s between a session's queries"),
    "query_timeout_s": ("query_timeout", False, 0.001, None, "s a query may take"),
    "queries": ("queries", True, 0, None, "queries per session"),
}
#: class key -> /run body field, for the keys the simulator applies
WIRE_FIELDS = {
    "tokens": "max_tokens",
    "token_delay_ms": "token_delay_ms",
    "ttft_ms": "ttft_ms",
    "token_jitter_ms": "token_jitter_ms",
}
_TOP_KEYS = ("seed", "classes")
#: the largest workload file read (a few classes take a few hundred bytes)
MAX_FILE_BYTES = 1024 * 1024
#: the largest value of a key without a bound of its own, and of a weight (a week of seconds is 6e5;
#: 1e9 catches typos and keeps every value one a float holds exactly)
_MAX_VALUE = 1e9


class WorkloadError(ValueError):
    """A workload file or option is wrong; the message has one line per problem."""


def _wire_bounds(key: str) -> tuple[float, float]:
    from kit.wire import WORKLOAD_BOUNDS  # the wire contract's bounds: one definition

    lo, hi, _ = WORKLOAD_BOUNDS[WIRE_FIELDS[key]]
    return lo, hi


def check_option(key: str, value: Any, where: str) -> str | None:
    """The problem with *value* for class key *key* (one line starting with *where*), or None."""
    _, whole, lo, hi, unit = CLASS_KEYS[key]
    if key in WIRE_FIELDS:
        lo, hi = _wire_bounds(key)
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not number or (isinstance(value, float) and (not math.isfinite(value) or whole and not value.is_integer())):
        return f"{where}: {_shown(value)} is not {'a whole number' if whole else 'a number'} ({unit})"
    if value < lo or (hi is not None and value > hi) or abs(value) > _MAX_VALUE:  # ints compare exactly
        rng = f"from {lo:g} to {hi:g}" if hi is not None else f"from {lo:g} to {_MAX_VALUE:.0f}"
        return f"{where}: {_shown(value)} is out of range: give {rng} ({unit})"
    return None


def _shown(value: Any) -> str:
    """*value* for a message: numbers as written (a huge whole number shortened), anything else repr'd."""
    if isinstance(value, float):
        return f"{value:g}"
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else repr(value)
    return text if len(text) <= 24 else f"{text[:8]}...({len(text)} chars)"


@dataclasses.dataclass(frozen=True, kw_only=True)
class WorkloadClass:
    """One kind of session: its weight and the settings it overrides (None keeps the run's)."""

    name: str
    weight: float = 1.0
    settings: Mapping[str, float | int] = dataclasses.field(default_factory=dict)

    def apply(self, base: SessionConfig) -> SessionConfig:
        """*base* with this class's settings and name."""
        over: dict[str, Any] = {
            CLASS_KEYS[k][0]: (int(v) if CLASS_KEYS[k][1] else float(v)) for k, v in self.settings.items()
        }
        return dataclasses.replace(base, workload_class=self.name, **over)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Workload:
    """The run's classes (one, ``default``, when there is no file) and the draw's seed."""

    classes: tuple[WorkloadClass, ...] = (WorkloadClass(name="default"),)
    seed: int | None = None
    #: the workload file, or None (the options alone)
    source: str | None = None


def parse_workload(data: Any, source: str = "workload") -> Workload:
    """The workload described by *data* (a parsed YAML document); WorkloadError listing every problem."""
    errors: list[str] = []
    if not isinstance(data, dict):
        raise WorkloadError(f"{source}: the file must be a mapping with 'classes' (and optionally 'seed')")
    for k in data:
        if k not in _TOP_KEYS:
            errors.append(f"{source}: unknown key {k!r}: use {', '.join(_TOP_KEYS)}")
    seed = data.get("seed")
    if seed is not None and (type(seed) is not int or seed < 0):
        errors.append(f"{source}: seed {_shown(seed)} is not a whole number >= 0")
    elif seed is not None and seed >= 2**64:
        errors.append(f"{source}: seed {_shown(seed)} is above 2**64-1: give a smaller one")
    raw = data.get("classes")
    classes: list[WorkloadClass] = []
    if not isinstance(raw, dict) or not raw:
        errors.append(f"{source}: 'classes' must map each class name to its settings (at least one class)")
        raw = {}
    for name, body in raw.items():
        where = f"{source}: class {_shown(name)}"
        if not isinstance(name, str) or not name.replace("-", "").replace("_", "").isalnum():
            errors.append(f"{where}: a class name is letters, digits, '-' and '_'")
        if not isinstance(body, dict):
            errors.append(f"{where}: give its settings as a mapping (weight: 1, tokens: 20, ...)")
            continue
        settings: dict[str, Any] = {}
        for k, v in body.items():
            if k == "weight":
                continue
            if k not in CLASS_KEYS:
                errors.append(f"{where}: unknown key {k!r}: use weight, {', '.join(CLASS_KEYS)}")
                continue
            problem = check_option(k, v, f"{where}: {k}")
            if problem:
                errors.append(problem)
            else:
                settings[k] = v
        weight = body.get("weight")
        if weight is None:
            errors.append(f"{where}: weight is missing: give a number > 0 (classes are drawn in proportion)")
        elif (
            isinstance(weight, bool)
            or not isinstance(weight, (int, float))
            or not weight > 0
            or isinstance(weight, float)
            and not math.isfinite(weight)
        ):
            errors.append(f"{where}: weight {_shown(weight)} is not a number > 0")
        elif weight > _MAX_VALUE:
            errors.append(
                f"{where}: weight {_shown(weight)} is above {_MAX_VALUE:.0f}: weights are proportions, e.g. 80 and 20"
            )
        else:
            classes.append(WorkloadClass(name=str(name), weight=float(weight), settings=settings))
    if errors:
        raise WorkloadError("\n".join(errors))
    return Workload(classes=tuple(classes), seed=seed, source=source)


def _loader():
    """A safe YAML loader that refuses a key given twice in one mapping (PyYAML keeps the last)."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            if isinstance(node, yaml.MappingNode):
                seen: set = set()
                for key_node, _ in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge":  # "<<: *base": overriding it is the point
                        continue
                    key = self.construct_object(key_node, deep=True)
                    try:
                        dup = key in seen
                    except TypeError:  # an unhashable key: the base class says so
                        break
                    if dup:
                        raise yaml.constructor.ConstructorError(
                            None,
                            None,
                            f"key {_shown(key)} is given twice (the first would be ignored): keep one",
                            key_node.start_mark,
                        )
                    seen.add(key)
            return super().construct_mapping(node, deep=deep)

    return UniqueKeyLoader


def duration_problems(
    workload: Workload,
    tokens: int | None,
    token_delay_ms: float | None,
    ttft_ms: float | None,
    token_jitter_ms: float | None,
) -> list[str]:
    """Why a query of the run (the options) or of one of *workload*'s classes (its keys over the options)
    would last longer than a query may (:func:`kit.wire.query_duration_problem`: the product, not each field)."""
    from kit.wire import query_duration_problem

    base = {"tokens": tokens, "token_delay_ms": token_delay_ms, "ttft_ms": ttft_ms, "token_jitter_ms": token_jitter_ms}
    out = []
    for c in workload.classes:
        eff: dict[str, Any] = {**base, **{k: v for k, v in c.settings.items() if k in base}}
        problem = query_duration_problem(eff["tokens"], eff["token_delay_ms"], eff["ttft_ms"], eff["token_jitter_ms"])
        if problem:
            out.append(
                problem
                if c.name == "default" and workload.source is None
                else f"{workload.source}: class {c.name}: {problem}"
            )
    return out


def load_workload(path: str | Path) -> Workload:
    """Read and check a workload file (YAML, or JSON, which YAML reads too); WorkloadError (one line per
    problem) when it is wrong: unreadable, not a regular file, over :data:`MAX_FILE_BYTES`, not UTF-8,
    not YAML, a key given twice in one mapping, or any problem :func:`parse_workload` finds."""
    import yaml

    p = Path(path)
    fix = "pass a YAML workload file (see kit/client/_workload.py)"
    try:
        if not p.is_file():
            what = "it is a folder" if p.is_dir() else "not a regular file" if p.exists() else "no such file"
            raise WorkloadError(f"--workload {p}: cannot read it ({what}): {fix}")
        with open(p, "rb") as fh:
            raw = fh.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise WorkloadError(f"--workload {p}: cannot read it ({exc.strerror or exc})") from None
    if len(raw) > MAX_FILE_BYTES:
        raise WorkloadError(f"--workload {p}: larger than {MAX_FILE_BYTES // 1024} KiB: {fix}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WorkloadError(f"--workload {p}: not UTF-8 text (byte {exc.start}): {fix}") from None
    try:
        data = yaml.load(text, Loader=_loader())  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
        raise WorkloadError(f"{p}: not valid YAML{at}: {problem}") from None
    except RecursionError:  # deeply nested brackets
        raise WorkloadError(f"{p}: nested too deeply: {fix}") from None
    return parse_workload(data, str(p))


def draw_seed(workload: Workload, given: int | None) -> int:
    """The seed of a run's class draw: the one given (``--workload-seed``), else the file's, else a random
    one, chosen once by whoever starts the run so every process draws alike."""
    if given is not None:
        return given
    return workload.seed if workload.seed is not None else random.randrange(2**31)


def draw(weights: Sequence[float], seed: int, index: int) -> int:
    """The class (index into *weights*) of session *index*: a weighted draw from a generator seeded
    by ``seed`` and the index, so it is the same whichever process runs the session."""
    cum = []
    total = 0.0
    for w in weights:
        total += w
        cum.append(total)
    u = random.Random(f"{seed}:{index}").random() * total
    return min(bisect.bisect_right(cum, u), len(weights) - 1)


class WorkloadRecord:
    """One process's view of the workload: each session's config, and what ran (see module doc)."""

    def __init__(self, workload: Workload, base: SessionConfig, seed: int) -> None:
        self.workload = workload
        self.seed = seed
        self.configs = [c.apply(base) for c in workload.classes]
        self.weights = [c.weight for c in workload.classes]
        self.sessions = {c.name: 0 for c in workload.classes}
        #: class -> the simulator's first echo of the effective workload (``/run``'s answer)
        self.echo: dict[str, dict[str, Any]] = {}

    def config_for(self, index: int) -> SessionConfig:
        """The config of session *index* (its class drawn by weight); counts it."""
        i = 0 if len(self.configs) == 1 else draw(self.weights, self.seed, index)
        cfg = self.configs[i]
        self.sessions[cfg.workload_class] += 1
        return cfg

    def observe(self, cls: str, tokens: int, echo: Any) -> None:
        """Keep the first effective workload the simulator answered for class *cls*."""
        if cls not in self.echo and isinstance(echo, dict):
            self.echo[cls] = {
                "tokens": tokens,
                **{k: echo.get(k) for k in ("token_delay_ms", "ttft_ms", "token_jitter_ms")},
            }

    def state(self) -> dict[str, Any]:
        """This process's part of ``histograms.json`` (merged by :func:`merge_workload`)."""
        classes = {}
        for c, cfg in zip(self.workload.classes, self.configs):
            requested = {k: getattr(cfg, CLASS_KEYS[k][0]) for k in CLASS_KEYS}
            classes[c.name] = {
                "weight": c.weight,
                "overrides": dict(c.settings),
                "requested": requested,
                "sessions": self.sessions[c.name],
                "echo": self.echo.get(c.name),
            }
        return {"source": self.workload.source, "seed": self.seed, "classes": classes}


def merge_workload(given: Sequence[Mapping[str, Any] | None]) -> dict[str, Any] | None:
    """Processes' workload states as one: session counts add; the first echo of each class is kept,
    and a class whose processes saw different effective workloads says so (``echo_differs``)."""
    states = [s for s in given if s]
    if not states:
        return None
    out: dict[str, Any] = {"source": states[0].get("source"), "seed": states[0].get("seed"), "classes": {}}
    sources = sorted({str(s.get("source")) for s in states})
    if len(sources) > 1:
        out["sources"] = sources
    for st in states:
        for name, c in st["classes"].items():
            have = out["classes"].get(name)
            if have is None:
                out["classes"][name] = dict(c)
                continue
            have["sessions"] = int(have.get("sessions") or 0) + int(c.get("sessions") or 0)
            if have.get("echo") is None:
                have["echo"] = c.get("echo")
            elif c.get("echo") is not None and c["echo"] != have["echo"]:
                have["echo_differs"] = True
    return out


def workload_summary(state: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """``summary.json``'s ``workload``: per class its weight, share of the sessions drawn, the
    overrides, and the complete effective workload (what the session applied, and what the simulator
    answered it applied: its deployed defaults where nobody set a value)."""
    if not state:
        return None
    total = sum(int(c.get("sessions") or 0) for c in state["classes"].values())
    weights = sum(float(c.get("weight") or 0) for c in state["classes"].values()) or 1.0
    classes = {}
    for name, c in state["classes"].items():
        req = c.get("requested") or {}
        echo = c.get("echo") or {}
        effective = {k: req.get(k) for k in ("think_time_s", "query_timeout_s", "queries")}
        for k in WIRE_FIELDS:
            effective[k] = echo.get(k) if echo else req.get(k)
        classes[name] = {
            "weight": c.get("weight"),
            "share": round(float(c.get("weight") or 0) / weights, 4),
            "sessions": int(c.get("sessions") or 0),
            "sessions_share": round(int(c.get("sessions") or 0) / total, 4) if total else None,
            "overrides": c.get("overrides") or {},
            "requested": req,
            "effective": effective,
            "simulator_answered": bool(echo),
        }
        if c.get("echo_differs"):
            classes[name]["echo_differs"] = True
    out = {"source": state.get("source"), "seed": state.get("seed"), "sessions": total, "classes": classes}
    if state.get("sources"):
        out["sources"] = state["sources"]
    return out
