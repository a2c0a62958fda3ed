"""``fab capacity``: the highest offered load that meets every SLO, found by stepping then bisecting.

The offered load is a number of sessions (clients), each running its queries, started at a pace
(``--ramp`` sessions per second, default all within :data:`DEFAULT_RAMP_S` seconds).  Each step
is one normal run (``kit.run.execute``) with the SLOs as its thresholds, so every step leaves its
own ``results/<run-id>/`` and tarball.

The search (:func:`next_load`, pure):

1. step up from ``--start`` (``--step 50`` adds, ``--step x2`` multiplies) while every SLO holds,
   up to ``--max``;
2. at the first step that breaks an SLO, bisect between the highest passing and the lowest failing
   load until they are at most ``--resolution`` apart;
3. the **knee** is the highest load that met every SLO; the bottleneck component of the lowest
   failing step (``summary["bottleneck"]``) is named with it.

A step whose generator was overloaded (``summary["generator"]["generator_overloaded"]``) measured
the kit, not the system under test: it is not counted as a failure, and the search stops and
says so.  A partial run (exit 3) stops the search too, and so does an interrupted one (Ctrl-C or SIGTERM
during a step: the search ends with that step's exit status, 130 or 143, and what it found so far is
written).  :func:`search` drives a *runner* (any callable ``(load, index) -> (exit status, summary)``), so
the policy is tested with a fake one.

Each step takes every option of the *base* run (``fab capacity`` takes ``fab run``'s options but those the
search sets itself: :func:`step_changes`), so a step runs the workload, TLS, tags or plan file given.  The exit
status of a search means what ``fab run``'s does: 0 a knee was found, 1 no load met the SLOs, 3 the search
stopped on an overloaded generator or a partial run, 130/143 interrupted (2 and 4 as every task's);
:func:`capacity_document` is the one JSON document of ``fab capacity --json``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ._plan import PlanError, Threshold, parse_threshold
from ._summary import evaluate_thresholds, metric_value

__all__ = [
    "Step",
    "StepRule",
    "parse_step",
    "next_load",
    "search",
    "CapacityResult",
    "format_result",
    "write_capacity_html",
    "execute_capacity",
    "capacity_document",
    "step_changes",
    "DEFAULT_RAMP_S",
]

log = logging.getLogger(__name__)

#: without --ramp, each step starts its sessions over this many seconds
DEFAULT_RAMP_S = 5.0


@dataclasses.dataclass(frozen=True)
class StepRule:
    """How the load grows while every SLO holds: ``+n`` or ``x f``."""

    add: int = 0
    factor: float = 1.0

    def grow(self, load: int) -> int:
        return max(load + 1, load + self.add if self.add else int(round(load * self.factor)))


def parse_step(text: str) -> StepRule:
    """``50`` / ``+50`` adds 50 sessions a step; ``x2`` / ``*1.5`` multiplies."""
    t = (text or "").strip()
    m = re.fullmatch(r"[x*]\s*([0-9]+(?:\.[0-9]+)?)", t)
    if m:
        f = float(m[1])
        if f <= 1:
            raise PlanError(f"--step {text!r}: a factor must be above 1, e.g. 'x2'")
        return StepRule(factor=f)
    m = re.fullmatch(r"\+?\s*([0-9]+)", t)
    if m and int(m[1]) > 0:
        return StepRule(add=int(m[1]))
    raise PlanError(f"--step {text!r}: write a number of sessions to add ('50') or a factor ('x2')")


@dataclasses.dataclass
class Step:
    """One run of the search."""

    load: int
    rc: int
    passed: bool  # every SLO held
    overloaded: bool  # the generator fell behind: not a verdict on the system under test
    partial: bool
    slos: list[dict[str, Any]]
    summary: Mapping[str, Any] = dataclasses.field(repr=False, default_factory=dict)
    run_id: str | None = None

    @property
    def broken(self) -> list[str]:
        return [s["threshold"] for s in self.slos if not s["passed"]]

    @property
    def interrupted(self) -> bool:
        """Ctrl-C or SIGTERM ended the step's run (exit 128 + the signal): no verdict on the load."""
        return self.rc > 128


def next_load(
    steps: Sequence[Step], *, start: int, rule: StepRule, maximum: int, resolution: int
) -> tuple[int | None, str]:
    """The next load to run, or None and why the search is over (pure)."""
    if not steps:
        return start, "start"
    last = steps[-1]
    if last.interrupted:
        return None, f"interrupted during the run at {last.load} sessions"
    if last.overloaded:
        return None, (
            f"the generator was overloaded at {last.load} sessions: that step measured the kit, not the "
            "system under test; add generator hosts or processes and search again"
        )
    if last.partial:
        return None, f"the run at {last.load} sessions was partial (a generator failed): see its report"
    passing = [s.load for s in steps if s.passed]
    failing = [s.load for s in steps if not s.passed]
    if not failing:
        if last.load >= maximum:
            return None, f"every SLO held up to --max {maximum} sessions"
        return min(rule.grow(last.load), maximum), "step"
    hi = min(failing)
    lo = max((p for p in passing if p < hi), default=None)
    if lo is None:
        if hi <= 1:
            return None, "even 1 session breaks an SLO"
        lo = 0
    if hi - lo <= resolution:
        if lo == 0:
            return None, f"even {hi} sessions (the lowest tried) break an SLO: lower --start"
        return None, f"knee bracketed: {lo} passes, {hi} fails (--resolution {resolution})"
    return (lo + hi) // 2, "bisect"


@dataclasses.dataclass
class CapacityResult:
    steps: list[Step]
    reason: str
    knee: Step | None  # the highest passing step below the lowest failing one
    first_failing: Step | None
    slos: list[Threshold]

    def to_dict(self) -> dict[str, Any]:
        def step(s: Step | None) -> dict[str, Any] | None:
            if s is None:
                return None
            return {
                "load": s.load,
                "rc": s.rc,
                "passed": s.passed,
                "overloaded": s.overloaded,
                "partial": s.partial,
                "interrupted": s.interrupted,
                "run_id": s.run_id,
                "slos": s.slos,
                "bottleneck": s.summary.get("bottleneck"),
                "tps": s.summary.get("tps"),
                "qps": s.summary.get("qps"),
            }

        return {
            "reason": self.reason,
            "slos": [t.text for t in self.slos],
            "knee": step(self.knee),
            "first_failing": step(self.first_failing),
            "steps": [step(s) for s in self.steps],
        }


def judge(load: int, rc: int, summary: Mapping[str, Any], slos: Sequence[Threshold], run_id: str | None = None) -> Step:
    checks = evaluate_thresholds(summary, slos)
    overloaded = bool((summary.get("generator") or {}).get("generator_overloaded"))
    partial = rc == 3 or bool(summary.get("partial"))
    return Step(
        load, rc, all(c["passed"] for c in checks) and not partial, overloaded, partial, checks, summary, run_id
    )


def search(
    runner: Callable[[int, int], tuple[int, Mapping[str, Any], str | None]],
    slos: Sequence[Threshold],
    *,
    start: int,
    rule: StepRule,
    maximum: int,
    resolution: int = 1,
    say: Callable[[str], None] = print,
    max_steps: int = 30,
) -> CapacityResult:
    """Run steps chosen by :func:`next_load` until it stops (or *max_steps*); *runner(load, index)* returns
    (exit status, summary, run id) of one run at *load* sessions."""
    if start < 1 or maximum < start:
        raise PlanError(f"--start {start} / --max {maximum}: give 1 <= start <= max")
    if resolution < 1:
        raise PlanError(f"--resolution {resolution}: give 1 or more sessions")
    if not slos:
        raise PlanError("give at least one --slo, e.g. --slo 'delivery_p99<50ms' --slo 'success>=99.9%'")
    steps: list[Step] = []
    reason = ""
    while True:
        if len(steps) >= max_steps:
            reason = f"stopped after {max_steps} steps"
            break
        load, why = next_load(steps, start=start, rule=rule, maximum=maximum, resolution=resolution)
        if load is None:
            reason = why
            break
        say(f"capacity step {len(steps) + 1} ({why}): {load} sessions")
        rc, summary, run_id = runner(load, len(steps))
        s = judge(load, rc, summary, slos, run_id)
        steps.append(s)
        say("  " + _step_line(s))
    failing = [s for s in steps if not s.passed and not s.overloaded and not s.partial and not s.interrupted]
    first_failing = min(failing, key=lambda s: s.load) if failing else None
    passing = [
        s for s in steps if s.passed and not s.overloaded and (first_failing is None or s.load < first_failing.load)
    ]
    knee = max(passing, key=lambda s: s.load) if passing else None
    return CapacityResult(steps, reason, knee, first_failing, list(slos))


def _fmt_slo(c: Mapping[str, Any]) -> str:
    v = c["actual"]
    if v is None:
        shown = "-"
    elif c["unit"] == "s":
        shown = f"{v * 1000:.3g}ms"
    elif c["unit"] == "fraction":
        shown = f"{v * 100:.4g}%"
    else:
        shown = f"{v:.6g}"
    return f"{c['threshold']} ({shown} {'ok' if c['passed'] else 'BROKEN'})"


def _state(s: Step) -> str:
    if s.interrupted:
        return "interrupted"
    return "overloaded generator" if s.overloaded else ("partial" if s.partial else ("pass" if s.passed else "FAIL"))


def _step_line(s: Step) -> str:
    state = _state(s)
    b = s.summary.get("bottleneck") or {}
    neck = f"; bottleneck {b.get('component')} on {b.get('host')} ({b.get('ratio', 0):.0%})" if b else ""
    tps = s.summary.get("tps")
    return (
        f"{s.load} sessions: {state}; tokens/s {'-' if tps is None else f'{tps:.0f}'}; "
        + ", ".join(_fmt_slo(c) for c in s.slos)
        + neck
        + (f"  [{s.run_id}]" if s.run_id else "")
    )


def format_result(res: CapacityResult) -> str:
    lines = ["capacity steps (by load):"]
    lines += ["  " + _step_line(s) for s in sorted(res.steps, key=lambda s: s.load)]
    if res.knee is not None:
        lines.append(
            f"knee: {res.knee.load} sessions met every SLO ({', '.join(t.text for t in res.slos)}); "
            f"tokens/s {res.knee.summary.get('tps') or 0:.0f}"
        )
    else:
        lines.append("knee: none: no load met every SLO")
    if res.first_failing is not None:
        b = res.first_failing.summary.get("bottleneck") or {}
        lines.append(
            f"first failing: {res.first_failing.load} sessions broke {', '.join(res.first_failing.broken)}"
            + (
                f"; bottleneck {b.get('component')} on {b.get('host')}: busiest second "
                f"{b.get('peak_cores')} of {b.get('usable_cores')} usable cores"
                + (
                    ""
                    if b.get("saturated", True)
                    else " (not saturated: the SLO broke before any component ran out of cores)"
                )
                if b
                else "; no CPU samples"
            )
        )
    lines.append(f"search ended: {res.reason}")
    return "\n".join(lines) + "\n"


def _slo_display(t: Threshold, actual: float | None) -> float | None:
    if actual is None:
        return None
    return actual * 1000 if t.kind == "time" else (actual * 100 if t.kind == "percent" else actual)


def write_capacity_html(path: Path, res: CapacityResult) -> Path:
    """The steps as charts (each SLO's metric and tokens/s against the offered load) and a table."""
    import html as _html

    from kit._charts import assets_html, chart_spec, charts_html

    e = _html.escape
    steps = sorted(res.steps, key=lambda s: s.load)
    xs = [float(s.load) for s in steps]
    specs = []
    for i, t in enumerate(res.slos):
        unit = {"time": "ms", "percent": "%", "count": "", "rate": "/s"}[t.kind]
        vals = [_slo_display(t, metric_value(s.summary, t)) for s in steps]
        limit = _slo_display(t, t.value)
        specs.append(
            chart_spec(
                f"cap-slo-{i}",
                f"SLO {t.text} against offered load",
                xs,
                [{"label": t.metric, "values": vals}, {"label": f"limit {t.text}", "values": [limit] * len(xs)}],
                xlabel="offered load (sessions)",
                ylabel=f"{t.metric} ({unit})" if unit else t.metric,
                ymin0=t.kind != "time",
                note=_knee_note(res),
                points=True,
            )
        )
    specs.append(
        chart_spec(
            "cap-tps",
            "Tokens per second against offered load",
            xs,
            [{"label": "tokens/s", "values": [s.summary.get("tps") for s in steps]}],
            xlabel="offered load (sessions)",
            ylabel="tokens/s",
            note=_knee_note(res),
            points=True,
        )
    )
    rows = "".join(
        f"<tr><td>{s.load}</td><td>{_state(s)}"
        f"</td><td>{e(str(s.summary.get('tps')))}</td><td>{e(', '.join(_fmt_slo(c) for c in s.slos))}</td>"
        f"<td>{e(str((s.summary.get('bottleneck') or {}).get('component', '-')))}</td>"
        f"<td>{e(s.run_id or '')}</td></tr>"
        for s in steps
    )
    text = format_result(res)
    path.write_text(f"""<!doctype html>
<html><head><meta charset="utf-8"><title>wsproxy-loadkit capacity</title>
{assets_html()}
<style>body{{font-family:sans-serif;margin:2em;max-width:80em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:2px 8px}} pre{{background:#f6f6f6;padding:1em;white-space:pre-wrap}}</style></head><body>
<h1>Capacity</h1><pre>{e(text)}</pre>
{charts_html(specs)}
<h2>Steps</h2><table><tr><th>sessions</th><th>verdict</th><th>tokens/s</th><th>SLOs</th><th>bottleneck</th>
<th>run</th></tr>{rows}</table>
</body></html>
""")
    return path


def _knee_note(res: CapacityResult) -> str:
    if res.knee is None:
        return "no load met every SLO"
    return f"knee: {res.knee.load} sessions" + (
        f"; first failing {res.first_failing.load}" if res.first_failing else ""
    )


def step_changes(base: Any, load: int, run_id: str, thresholds: Sequence[Threshold], ramp: float | None) -> dict:
    """What a step sets on *base* (a ``RunOptions``) whatever it was given: *load* closed-model sessions started
    at *ramp* per second (default all within :data:`DEFAULT_RAMP_S`), its run id, the SLOs as its only
    thresholds, no live view.  When *base* records the options given (a plan file yields to those), these
    are marked given too, so a plan's clients or arrival rate cannot replace the step's."""
    changes: dict[str, Any] = {
        "clients": load,
        "run_id": run_id,
        "thresholds": list(thresholds),
        "no_default_thresholds": True,  # the SLOs alone judge a step, not fab run's defaults
        "ramp": ramp if ramp is not None else max(1.0, load / DEFAULT_RAMP_S),
        "arrival_rate": None,
        "duration": None,
        "stages": None,  # a step is one level of load: a plan's stages are not a step's
        "arrivals": None,
        "live": False,
    }
    if getattr(base, "given", None) is not None:
        changes["given"] = frozenset(base.given) | changes.keys()
    return changes


def _plan_ramp(base: Any) -> float | None:
    """The ramp of *base*'s plan file (``--plan``), when it has one: a step paces its sessions by it unless
    ``--ramp`` was given, as the plan's author wrote it for every step (a step sets its ramp itself, so the
    plan's would yield to it).  PlanError (exit 2) for a plan that cannot be read, before any step."""
    if getattr(base, "plan", None) is None:
        return None
    from ._planfile import PlanFileError, load_plan

    try:
        ramp = load_plan(base.plan, iter(dataclasses.fields(base))).values.get("ramp")
    except PlanFileError as exc:
        raise PlanError(str(exc)) from None
    return float(ramp) if isinstance(ramp, (int, float)) and not isinstance(ramp, bool) else None


_OUTCOMES = {0: "knee_found", 1: "no_load_met_slos", 3: "stopped"}


def capacity_document(rc: int, res: CapacityResult, name: str, json_file: Path, html_file: Path) -> dict[str, Any]:
    """``fab capacity --json``'s one document: the exit status and outcome (``knee_found``,
    ``no_load_met_slos``, ``stopped``, ``interrupted``), the search's name, then its result
    (:meth:`CapacityResult.to_dict`: reason, SLOs, knee, first failing step, every step) and the files written."""
    return {
        "exit_status": rc,
        "outcome": _OUTCOMES.get(rc, "interrupted"),
        "name": name,
        **res.to_dict(),
        "json_file": str(json_file),
        "html_file": str(html_file),
    }


def _exit_status(res: CapacityResult) -> int:
    """0 a knee, 1 no load met the SLOs, 3 stopped on an overloaded generator or a partial run, the step's own
    status when it was interrupted."""
    last = res.steps[-1] if res.steps else None
    if last is not None and last.interrupted:
        return last.rc
    if last is not None and (last.overloaded or last.partial):
        return 3
    return 0 if res.knee is not None else 1


def execute_capacity(
    base: Any,
    slos: Sequence[str],
    *,
    start: int,
    step: str,
    maximum: int,
    resolution: int = 1,
    ramp: float | None = None,
    name: str | None = None,
    say: Callable[[str], None] = print,
    on_result: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[int, CapacityResult]:
    """``fab capacity``: one ``execute`` per step with *base* (a ``RunOptions``) for everything but what
    :func:`step_changes` sets; *ramp* (default *base*'s ``ramp``, else its plan file's) paces each step's
    sessions.

    Returns (exit status, result): 0 when a knee was found, 1 when no load met the SLOs, 3 when
    the search stopped on an overloaded generator or a partial run, 130/143 when a step was interrupted.
    Writes ``results/<name>.json`` and ``results/<name>.html``; *on_result* gets :func:`capacity_document`.
    """
    import time

    from ._run import execute

    thresholds = [parse_threshold(s) for s in slos]
    rule = parse_step(step)
    name = name or time.strftime("capacity-%Y%m%d-%H%M%S")
    pace = next((r for r in (ramp, getattr(base, "ramp", None)) if r is not None), None)
    pace = pace if pace is not None else _plan_ramp(base)

    def runner(load: int, index: int) -> tuple[int, Mapping[str, Any], str | None]:
        run_id = f"{name}-s{index + 1}-c{load}"
        opts = dataclasses.replace(base, **step_changes(base, load, run_id, thresholds, pace))
        rc = execute(opts, out=lambda line: log.debug("%s", line))  # each step's own report is in its folder
        try:
            summary = json.loads((base.results_dir / run_id / "summary.json").read_text())
        except (OSError, ValueError):
            summary = {}
        return rc, summary, run_id

    res = search(runner, thresholds, start=start, rule=rule, maximum=maximum, resolution=resolution, say=say)
    base.results_dir.mkdir(parents=True, exist_ok=True)
    json_file = base.results_dir / f"{name}.json"
    json_file.write_text(json.dumps(res.to_dict(), indent=2, default=str) + "\n")
    page = write_capacity_html(base.results_dir / f"{name}.html", res)
    say(format_result(res) + f"capacity.html: {page}")
    rc = _exit_status(res)
    if on_result is not None:
        on_result(capacity_document(rc, res, name, json_file, page))
    return rc, res
