"""``fab compare``: the key figures of several runs side by side, each against the first run.

For every figure the table shows each run's value and its difference to the first run, and
says whether the difference is beyond noise:

- Percentiles (latency, TTFT, delivery latency) get a **percentile bootstrap**: the 95 %
  confidence interval of the difference of the percentile between the two runs, from
  :data:`RESAMPLES` resamples of each run's values, seeded (:data:`SEED`), so the verdict is
  reproducible.  Latency and TTFT resample the raw per-query values of ``queries.csv``
  (``latency_ms``, ``ttft_ms``; queries with status ok); delivery latency is per token and
  kept only as the mergeable histogram, so it resamples the histogram (values to three
  significant digits).  One resample's percentile is drawn from its exact distribution: the
  k-th smallest of n values drawn with replacement is the empirical quantile at the k-th
  smallest of n uniforms, which is Beta(k, n-k+1) distributed; so a resample costs O(1) after
  one sort and a million-query run costs what a small one does.  "beyond noise" means the
  interval excludes 0.
- Counts and rates (success, queries, tokens, tps, lost, errors, reconnects, CPU per token) are
  one number per run: a single run carries no estimate of its own variance, so their difference
  is shown but **not testable** ("n/a"); repeat the runs to judge them.

``--fail-if`` rules turn a regression into exit status 1: a signed value compares the
change to the first run (``p99>+10%`` relative, ``p99>+20ms`` absolute), an unsigned value the
run's own figure (``lost>0``, ``success<99.9%``, ``p99>2s``).  A malformed rule raises
:class:`CompareError` (exit 2).  :func:`compare_runs` is pure over loaded runs;
:func:`write_compare_html` writes the page with overlaid charts (``kit._charts``), one series per
run: runs that share a run id are labelled apart (:func:`run_labels`: ``run-a (1)``, ``run-a (2)``).

Runs carry tags (summary.json's ``tags``, key -> value, given by ``fab run --tag``): ``--tag key=value``
(:func:`parse_tag_filter`) selects the runs carrying every one given (:func:`select_runs`: those under
``results/`` when no run is named, oldest first so the oldest is the baseline; ``fab analyze --tag`` takes
the newest), and ``--label KEY`` names each run's column by its value of that tag.  Each run's tags are shown
with the table, as ``tags.<key>`` rows of the settings side by side, and in :func:`compare_document`, the
one JSON document of ``fab compare --json``.
"""

from __future__ import annotations

import dataclasses
import html
import json
import math
import random
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from kit._charts import RunData, assets_html, charts_html, compare_chart_specs, load_run
from kit.metrics import Histogram, bucket_value
from kit.report import component_totals

__all__ = [
    "CompareError",
    "Figure",
    "FIGURES",
    "FailRule",
    "parse_fail_if",
    "bootstrap_diff_ci",
    "compare_runs",
    "format_table",
    "evaluate_fail_if",
    "write_compare_html",
    "load_runs",
    "RESAMPLES",
    "SEED",
    "CONFIDENCE",
    "side_by_side",
    "run_labels",
    "parse_tag_filter",
    "run_tags",
    "tags_text",
    "select_runs",
    "compare_document",
    "run_compare",
]

#: bootstrap resamples per run and figure (bounded: the cost is O(RESAMPLES) per figure after one sort)
RESAMPLES = 2000
SEED = 20261130
CONFIDENCE = 0.95
COMPONENTS = ("client", "sim", "wsproxy", "haproxy", "redis")


class CompareError(ValueError):
    """A run cannot be read or a ``--fail-if`` rule is malformed; the message says how to fix it."""


# -- figures -----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Figure:
    """One row of the table: *get* reads it from a summary; *raw* names what the bootstrap resamples."""

    key: str
    label: str
    unit: str  # ms | % | /s | count | us/token
    get: Callable[[Mapping[str, Any]], float | None]
    better: str = "lower"  # lower | higher
    raw: tuple[str, str] | None = None  # ("queries", column) or ("histogram", name), with the percentile in key
    percentile: float | None = None
    optional: bool = False  # a figure only some runs have (an idle window): no row when none of the runs has it


def _path(*keys: str) -> Callable[[Mapping[str, Any]], float | None]:
    def get(s: Mapping[str, Any]) -> float | None:
        v: Any = s
        for k in keys:
            v = v.get(k) if isinstance(v, Mapping) else None
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    return get


def _component_sum(component: str, field: str) -> Callable[[Mapping[str, Any]], float | None]:
    """A component's *field* of summary.json's ``components``, added over its hosts."""

    def get(s: Mapping[str, Any]) -> float | None:
        total = component_totals(s, field).get(component)
        return None if total is None else round(total, 2)

    return get


def _pct(key: str, label: str, hist: str, p: float, raw: tuple[str, str]) -> Figure:
    return Figure(key, label, "ms", _path(hist, f"p{p:g}"), "lower", raw, p)


FIGURES: tuple[Figure, ...] = (
    Figure("success", "session success", "%", _path("success_rate"), "higher"),
    Figure("queries", "queries", "count", _path("total_queries"), "higher"),
    Figure("tokens", "tokens", "count", _path("total_tokens"), "higher"),
    Figure("tps", "tokens/s", "/s", _path("tps"), "higher"),
    Figure("qps", "queries/s", "/s", _path("qps"), "higher"),
    _pct("p50", "latency p50", "latency_ms", 50, ("queries", "latency_ms")),
    _pct("p95", "latency p95", "latency_ms", 95, ("queries", "latency_ms")),
    _pct("p99", "latency p99", "latency_ms", 99, ("queries", "latency_ms")),
    _pct("ttft_p50", "TTFT p50", "ttft_ms", 50, ("queries", "ttft_ms")),
    _pct("ttft_p99", "TTFT p99", "ttft_ms", 99, ("queries", "ttft_ms")),
    _pct("delivery_p50", "delivery p50", "delivery_latency_ms", 50, ("histogram", "delivery")),
    _pct("delivery_p99", "delivery p99", "delivery_latency_ms", 99, ("histogram", "delivery")),
    Figure("lost", "lost tokens", "count", _path("lost_tokens")),
    Figure("errors", "errors", "count", _path("total_errors")),
    Figure("reconnects", "reconnect attempts", "count", _path("total_reconnect_attempts")),
    *(Figure(f"cpu_{c}", f"CPU {c}", "us/token", _component_sum(c, "us_per_token")) for c in COMPONENTS),
    *(
        Figure(f"idle_{c}", f"idle CPU {c}", "us/s/session", _component_sum(c, "idle_us_per_session_s"), optional=True)
        for c in COMPONENTS
    ),
)
BY_KEY = {f.key: f for f in FIGURES}
#: the columns of queries.csv the bootstrap resamples
QUERY_RAW = tuple(dict.fromkeys(f.raw[1] for f in FIGURES if f.raw and f.raw[0] == "queries"))
#: time units a rule may use, to ms
_TIME = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


# -- the bootstrap -------------------------------------------------------------------------------------


def _quantile_sampler(
    values: Sequence[float] | None = None, hist: Histogram | None = None
) -> tuple[int, Callable[[float], float]] | None:
    """(n, u -> the value at empirical quantile u) of raw values (sorted here) or of a histogram (in ms)."""
    if values is not None:
        xs = sorted(values)
        n = len(xs)
        if not n:
            return None
        return n, lambda u: xs[min(n - 1, max(0, math.ceil(u * n) - 1))]
    if hist is None or not hist.count:
        return None
    idx = sorted(hist.counts)
    cum, seen = [], 0
    for i in idx:
        seen += hist.counts[i]
        cum.append(seen)
    vals = [bucket_value(i) / 1000.0 for i in idx]
    n = hist.count

    def at(u: float) -> float:
        rank = min(n, max(1, math.ceil(u * n)))
        lo, hi = 0, len(cum) - 1
        while lo < hi:
            mid = (lo + hi) // 2
            if cum[mid] >= rank:
                hi = mid
            else:
                lo = mid + 1
        return vals[lo]

    return n, at


def _resampled_percentiles(
    n: int, at: Callable[[float], float], p: float, rng: random.Random, resamples: int
) -> list[float]:
    """The p-th percentile of *resamples* bootstrap resamples (nearest rank), via Beta(k, n-k+1)."""
    k = min(n, max(1, math.ceil(p / 100.0 * n)))
    return [at(rng.betavariate(k, n - k + 1)) for _ in range(resamples)]


def bootstrap_diff_ci(
    a: Any, b: Any, p: float, *, resamples: int = RESAMPLES, seed: int = SEED, confidence: float = CONFIDENCE
) -> tuple[float, float] | None:
    """CI of (percentile p of *b*) - (percentile p of *a*); each is a list of raw values or a Histogram (us).

    None when either side has no values.
    """
    sa = _quantile_sampler(hist=a) if isinstance(a, Histogram) else _quantile_sampler(values=a)
    sb = _quantile_sampler(hist=b) if isinstance(b, Histogram) else _quantile_sampler(values=b)
    if sa is None or sb is None:
        return None
    rng = random.Random(seed)
    ra = _resampled_percentiles(*sa, p, rng, resamples)
    rb = _resampled_percentiles(*sb, p, rng, resamples)
    diffs = sorted(y - x for x, y in zip(ra, rb))
    tail = (1.0 - confidence) / 2.0
    lo = diffs[max(0, math.floor(tail * resamples))]
    hi = diffs[min(resamples - 1, math.ceil((1.0 - tail) * resamples) - 1)]
    return round(lo, 3), round(hi, 3)


def _raw(run: RunData, raw: tuple[str, str]) -> Any:
    kind, name = raw
    if kind == "histogram":
        d = run.histograms.get(name)
        return Histogram.from_dict(d) if d else None
    return _raw_queries(run, (name,))[name]


def _raw_queries(run: RunData, names: Sequence[str]) -> dict[str, list[float] | None]:
    """Per column of *names*: the values of the run's ok queries, sorted (None when there is none), in one pass
    over ``queries.csv`` (300,000 rows at 100,000 sessions)."""
    out: dict[str, list[float]] = {name: [] for name in names}
    for q in run.queries:
        if q.get("status", "ok") != "ok":
            continue
        for name, values in out.items():
            try:
                values.append(float(q[name]))  # type: ignore[arg-type]
            except (KeyError, TypeError, ValueError):
                continue
    # sorted once here: each figure's bootstrap sorts its values again, in linear time when already sorted
    return {name: sorted(values) or None for name, values in out.items()}


# -- tags ----------------------------------------------------------------------------------------------


def parse_tag_filter(items: Sequence[str]) -> dict[str, str]:
    """``--tag key=value`` words of ``fab compare`` / ``fab analyze`` as a mapping: a run is selected when it
    carries every one.  CompareError, one line, for a word without ``key=``: a bare key would select runs
    whatever their value of it, rarely what was meant, so it is refused rather than guessed."""
    tags: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise CompareError(f"--tag {item!r}: write key=value (e.g. --tag build=1.4.2)")
        tags[key.strip()] = value.strip()
    return tags


def run_tags(summary: Mapping[str, Any]) -> dict[str, str]:
    """A run's tags: summary.json's ``tags`` (else its run record's, as run.json holds them); {} for a run
    recorded before runs had tags."""
    tags = summary.get("tags")
    if not isinstance(tags, Mapping):
        tags = (summary.get("run") or {}).get("tags")
    return {str(k): str(v) for k, v in tags.items()} if isinstance(tags, Mapping) else {}


def tags_text(tags: Mapping[str, str]) -> str:
    """``build=abc, env=lab`` (``-`` for none): how a run's tags are shown."""
    return ", ".join(f"{k}={v}" for k, v in sorted(tags.items())) or "-"


def _has_tags(summary: Mapping[str, Any], wanted: Mapping[str, str]) -> bool:
    return wanted.items() <= run_tags(summary).items()


def _started(summary: Mapping[str, Any], folder: Path) -> float:
    """When a run started (epoch seconds): its ``started_at``, else its run record's agreed start, else when its
    folder was last written (a run without either is not a run the kit wrote whole)."""
    for v in (summary.get("started_at"), (summary.get("run") or {}).get("start_at")):
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)
    return folder.stat().st_mtime


def select_runs(wanted: Mapping[str, str], results: Path) -> list[Path]:
    """The run folders directly under *results* carrying every tag of *wanted*, oldest first (by when each
    started): the first is a comparison's baseline, the last the newest.  A folder without a readable
    summary.json is not a run and is passed over; a tarball whose folder was removed is not unpacked to read
    its tags (that would cost a minute on a full results/): name it instead."""
    found = []
    for d in sorted(results.iterdir()) if results.is_dir() else ():
        try:
            summary = json.loads((d / "summary.json").read_text()) if d.is_dir() else None
        except (OSError, ValueError):
            continue
        if isinstance(summary, dict) and _has_tags(summary, wanted):
            found.append((_started(summary, d), d.name, d))
    return [d for _, _, d in sorted(found)]


# -- the comparison ------------------------------------------------------------------------------------


def _label(run: RunData) -> str:
    return str((run.summary.get("run") or {}).get("run_id") or run.summary.get("run_id") or run.path.name)


def run_labels(runs: Sequence[RunData], label_tag: str | None = None) -> list[str]:
    """One distinct label per run: its value of the tag *label_tag* when given and it has one, else its run id;
    numbered ``id (1)``, ``id (2)`` ... where several runs share one (a run against a copy of itself, one run
    id in two results directories, two runs of one build)."""
    ids = [(run_tags(r.summary).get(label_tag) if label_tag else None) or _label(r) for r in runs]
    seen: dict[str, int] = {}
    out = []
    for rid in ids:
        if ids.count(rid) > 1:
            seen[rid] = seen.get(rid, 0) + 1
            rid = f"{rid} ({seen[rid]})"
        out.append(rid)
    taken = set()
    for i, lab in enumerate(out):  # "a (1)" may itself be another run's id
        while lab in taken:
            lab += "'"
        taken.add(lab)
        out[i] = lab
    return out


def compare_runs(
    runs: Sequence[RunData], *, resamples: int = RESAMPLES, seed: int = SEED, label_tag: str | None = None
) -> dict[str, Any]:
    """Rows of figures over *runs* (the first is the baseline) with differences and noise verdicts; columns
    named by :func:`run_labels` (*label_tag*)."""
    if len(runs) < 2:
        raise CompareError("compare needs at least two runs: the first is the baseline")
    labels = run_labels(runs, label_tag)
    rows = []
    raw_cache: dict[tuple[int, tuple[str, str]], Any] = {}
    for f in FIGURES:
        values = [f.get(r.summary) for r in runs]
        if f.optional and all(v is None for v in values):
            continue
        base = values[0]
        cells = []
        for i, v in enumerate(values[1:], start=1):
            cell: dict[str, Any] = {"value": v, "diff": None, "rel": None, "ci": None, "verdict": "n/a"}
            if v is not None and base is not None:
                cell["diff"] = round(v - base, 6)
                cell["rel"] = None if base == 0 else round((v - base) / abs(base), 6)
            if f.raw is not None and f.percentile is not None:
                for j in (0, i):
                    if (j, f.raw) in raw_cache:
                        continue
                    if f.raw[0] == "queries":  # every query column the figures resample, in one pass
                        raw_cache.update({(j, ("queries", k)): v for k, v in _raw_queries(runs[j], QUERY_RAW).items()})
                    else:
                        raw_cache[(j, f.raw)] = _raw(runs[j], f.raw)
                ci = bootstrap_diff_ci(
                    raw_cache[(0, f.raw)], raw_cache[(i, f.raw)], f.percentile, resamples=resamples, seed=seed
                )
                cell["ci"] = ci
                if ci is None:
                    cell["verdict"] = "no data"
                elif ci[0] > 0 or ci[1] < 0:
                    worse = (ci[0] > 0) == (f.better == "lower")
                    cell["verdict"] = "worse" if worse else "better"
                else:
                    cell["verdict"] = "noise"
            cells.append(cell)
        rows.append(
            {"key": f.key, "label": f.label, "unit": f.unit, "base": base, "runs": cells, "testable": f.raw is not None}
        )
    return {
        "labels": labels,
        "tags": [run_tags(r.summary) for r in runs],
        "rows": rows,
        "side_by_side": side_by_side(runs),
        "method": (
            f"percentile bootstrap, {resamples} resamples per run, seed {seed}, "
            f"{CONFIDENCE:.0%} CI of the difference; latency and TTFT from queries.csv, delivery "
            "from the histogram; counts and rates: one value per run, not testable"
        ),
    }


def _flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = json.dumps(v) if isinstance(v, (list, tuple, Mapping)) else v
    return out


#: run-record keys that differ between any two runs by nature: not "differences" worth highlighting
_VOLATILE = ("run_id", "results_dir", "argv")


def side_by_side(runs: Sequence[RunData]) -> list[dict[str, Any]]:
    """Workload, build, versions and tags of each run, one row per setting, ``differs`` where runs disagree."""
    from kit.run import build_label

    per_run = []
    for r in runs:
        run = r.summary.get("run") or {}
        flat: dict[str, Any] = {}
        flat.update(_flat(run.get("config") or {}, "config."))
        for key in ("workload",):  # the run's workload when the run records one (summary or run record)
            recorded = r.summary.get(key) or run.get(key)
            if recorded:
                flat.update(_flat(recorded, f"{key}."))
        flat["build.wsproxy"] = build_label(run)
        wsproxy = (run.get("build") or {}).get("wsproxy") or {}
        if wsproxy.get("commands"):
            flat["build.wsproxy.commands"] = " | ".join(wsproxy["commands"])
        versions = run.get("versions") or {}
        flat.update(_flat({k: v for k, v in versions.items() if k != "argv"}, "versions."))
        flat["inventory.hosts"] = ", ".join(sorted((run.get("inventory") or {}).get("hosts") or {}))
        flat.update({f"tags.{k}": v for k, v in run_tags(r.summary).items()})
        per_run.append(flat)
    keys = sorted({k for f in per_run for k in f if not any(k.endswith(v) for v in _VOLATILE)})

    def same(v: Any) -> str:  # unset, empty and null are one "nothing"
        return json.dumps(None if v in (None, "", "[]", "{}", [], {}) else v, sort_keys=True, default=str)

    return [
        {"key": k, "values": [f.get(k) for f in per_run], "differs": len({same(f.get(k)) for f in per_run}) > 1}
        for k in keys
    ]


# -- fail-if rules ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FailRule:
    text: str
    key: str
    op: str
    value: float  # in the figure's unit (ms for times); a fraction for a relative change
    change: bool  # compare the change to the first run (signed value) or the run's value
    relative: bool  # a change in % of the first run's value

    def check(self, base: float | None, value: float | None) -> tuple[bool | None, float | None]:
        """(failed, the compared quantity); failed is None when a value is missing."""
        if value is None:
            return None, None
        if not self.change:
            q = value
        elif base is None:
            return None, None
        elif self.relative:
            if base == 0:
                q = 0.0 if value == 0 else math.copysign(math.inf, value)
            else:
                q = (value - base) / abs(base)
        else:
            q = value - base
        return _OPS[self.op](q, self.value), q


_OPS: dict[str, Callable[[float, float], bool]] = {
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
}
_RULE = re.compile(
    r"^\s*(?P<key>[a-z][a-z0-9_]*)\s*(?P<op><=|>=|==|!=|<|>)\s*(?P<sign>[+-])?"
    r"(?P<num>[0-9]+(?:\.[0-9]+)?)\s*(?P<unit>%|us|ms|s)?\s*$"
)
_RULE_HELP = "write e.g. 'p99>+10%' (change to the first run), 'tps<-5%', 'p99>+20ms', 'lost>0', 'success<99.9%'"


def parse_fail_if(text: str) -> FailRule:
    m = _RULE.match(text or "")
    if not m:
        raise CompareError(f"--fail-if {text!r} is not <figure><op><value>: {_RULE_HELP}")
    key, op, sign, unit = m["key"], m["op"], m["sign"], m["unit"]
    if key not in BY_KEY:
        raise CompareError(f"--fail-if {text!r}: unknown figure {key!r}; use one of {', '.join(BY_KEY)}")
    f = BY_KEY[key]
    num = float(m["num"]) * (-1 if sign == "-" else 1)
    change = sign is not None
    if unit == "%":
        if change:
            return FailRule(text, key, op, num / 100.0, True, True)
        if f.unit != "%":
            raise CompareError(
                f"--fail-if {text!r}: {key} is not a percentage; a change in % needs a sign: '{key}{op}+{m['num']}%'"
            )
        return FailRule(text, key, op, num, False, False)
    if unit in _TIME:
        if f.unit != "ms":
            raise CompareError(f"--fail-if {text!r}: {key} is not a time, drop the unit {unit!r}")
        return FailRule(text, key, op, num * _TIME[unit], change, False)
    if f.unit == "ms":
        raise CompareError(f"--fail-if {text!r}: {key} is a time, give a unit: e.g. '{key}{op}{m['num']}ms'")
    if f.unit == "%":
        raise CompareError(f"--fail-if {text!r}: {key} is a percentage, write e.g. '{key}{op}{m['num']}%'")
    return FailRule(text, key, op, num, change, False)


def evaluate_fail_if(result: Mapping[str, Any], rules: Sequence[FailRule]) -> list[dict[str, Any]]:
    """One verdict per (rule, compared run): ``failed`` True / False / None (figure missing)."""
    by_key = {r["key"]: r for r in result["rows"]}
    out = []
    for rule in rules:
        # an optional figure no run had has no row: each run's verdict is "figure missing"
        row = by_key.get(rule.key) or {
            "base": None,
            "runs": [{"value": None, "verdict": "no data"} for _ in result["labels"][1:]],
        }
        for label, cell in zip(result["labels"][1:], row["runs"]):
            failed, q = rule.check(row["base"], cell["value"])
            out.append(
                {
                    "rule": rule.text,
                    "run": label,
                    "failed": failed,
                    "compared": q,
                    "relative": rule.relative,
                    "verdict": cell["verdict"],
                }
            )
    return out


# -- output -------------------------------------------------------------------------------------------


def _fmt(v: float | None, unit: str = "") -> str:
    if v is None:
        return "-"
    if unit == "count" and float(v).is_integer():
        return f"{int(v)}"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 1:
        return f"{v:.2f}".rstrip("0").rstrip(".")
    return f"{v:.3g}"


def _diff_cell(row: Mapping[str, Any], cell: Mapping[str, Any]) -> str:
    if cell["diff"] is None:
        return "-"
    d = cell["diff"]
    sign = "+" if d > 0 else ""
    s = f"{sign}{_fmt(d, row['unit'])}"
    if cell["rel"] is not None:
        s += f" ({cell['rel']:+.1%})"
    return s


def _verdict_cell(cell: Mapping[str, Any]) -> str:
    if cell["ci"] is None:
        return cell["verdict"]
    lo, hi = cell["ci"]
    return f"{cell['verdict']} [{_fmt(lo)}, {_fmt(hi)}]"


def format_table(result: Mapping[str, Any]) -> str:
    """The comparison as plain text: figure, unit, the baseline, then per run value, change, verdict."""
    labels = result["labels"]
    head = ["figure", "unit", labels[0]]
    for lab in labels[1:]:
        head += [lab, "change", "beyond noise? (95% CI)"]
    lines = [head]
    for row in result["rows"]:
        if row["base"] is None and all(c["value"] is None for c in row["runs"]):
            continue
        line = [row["label"], row["unit"], _fmt(row["base"], row["unit"])]
        for cell in row["runs"]:
            line += [_fmt(cell["value"], row["unit"]), _diff_cell(row, cell), _verdict_cell(cell)]
        lines.append(line)
    widths = [max(len(r[i]) for r in lines) for i in range(len(head))]
    text = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in lines]
    text.insert(1, "  ".join("-" * w for w in widths))
    if any(result.get("tags") or ()):
        text.append("")
        text.append("Tags:")
        text += [f"  {lab}: {tags_text(tags)}" for lab, tags in zip(labels, result["tags"])]
    diffs = [r for r in result["side_by_side"] if r["differs"]]
    if diffs:
        text.append("")
        text.append("Settings that differ:")
        for r in diffs:
            text.append(f"  {r['key']}: " + " | ".join(f"{lab}={_short(v)}" for lab, v in zip(labels, r["values"])))
    text.append("")
    text.append(f"Noise test: {result['method']}.")
    return "\n".join(text) + "\n"


def _short(v: Any, n: int = 60) -> str:
    s = "-" if v is None else str(v)
    return s if len(s) <= n else s[: n - 3] + "..."


def write_compare_html(
    path: Path, result: Mapping[str, Any], runs: Sequence[RunData], fail_checks: Sequence[Mapping[str, Any]] = ()
) -> Path:
    """One offline page: the table, fail-if verdicts, settings side by side (differences marked), charts."""
    e = html.escape
    labels = result["labels"]
    head = (
        "<tr><th>figure</th><th>unit</th>"
        + f"<th>{e(labels[0])}</th>"
        + "".join(f"<th>{e(lab)}</th><th>change</th><th>beyond noise? (95% CI)</th>" for lab in labels[1:])
        + "</tr>"
    )
    body = []
    for row in result["rows"]:
        if row["base"] is None and all(c["value"] is None for c in row["runs"]):
            continue
        cells = f"<th>{e(row['label'])}</th><td>{e(row['unit'])}</td><td>{e(_fmt(row['base'], row['unit']))}</td>"
        for cell in row["runs"]:
            cls = {"worse": "worse", "better": "better"}.get(cell["verdict"], "")
            cells += (
                f"<td>{e(_fmt(cell['value'], row['unit']))}</td><td>{e(_diff_cell(row, cell))}</td>"
                f'<td class="{cls}">{e(_verdict_cell(cell))}</td>'
            )
        body.append(f"<tr>{cells}</tr>")
    settings = "".join(
        f'<tr class="{"differs" if r["differs"] else ""}"><th>{e(r["key"])}</th>'
        + "".join(f"<td>{e(_short(v, 120))}</td>" for v in r["values"])
        + "</tr>"
        for r in result["side_by_side"]
    )
    checks = "".join(
        f'<li class="{"" if c["failed"] is False else "worse"}">{e(c["rule"])} on {e(c["run"])}: '
        f"{'FAIL' if c['failed'] else ('no value: counts as failed' if c['failed'] is None else 'pass')}</li>"
        for c in fail_checks
    )
    specs = compare_chart_specs([(lab, r) for lab, r in zip(labels, runs)])
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>wsproxy-loadkit compare {e(" vs ".join(labels))}</title>
{assets_html()}
<style>body{{font-family:sans-serif;margin:2em;max-width:80em}} table{{border-collapse:collapse;margin-bottom:1em}}
td,th{{border:1px solid #ccc;padding:2px 8px;text-align:right}} th{{text-align:left}}
table.settings td{{text-align:left}} .worse{{color:#b00;font-weight:bold}} .better{{color:#070;font-weight:bold}} tr.differs{{background:#fff3c4}}</style>
</head><body>
<h1>Compare: {e(" vs ".join(labels))}</h1>
<p>Baseline: <b>{e(labels[0])}</b>. Noise test: {e(result["method"])}.</p>
<p>Runs: {"; ".join(f"<b>{e(lab)}</b> {e(str(r.path))} (tags: {e(tags_text(run_tags(r.summary)))})" for lab, r in zip(labels, runs))}.</p>
<table>{head}{"".join(body)}</table>
{"<h2>--fail-if</h2><ul>" + checks + "</ul>" if checks else ""}
<h2>Workload, build, versions and tags</h2>
<p>Rows that differ between the runs are highlighted.</p>
<table class="settings"><tr><th>setting</th>{"".join(f"<th>{e(lab)}</th>" for lab in labels)}</tr>{settings}</table>
<h2>Charts (run-relative time; one series per run)</h2>
{charts_html(specs)}
</body></html>
"""
    path.write_text(page)
    return path


def load_runs(refs: Sequence[str], results: Path | None = None) -> list[RunData]:
    """Each reference (run id under *results*, a folder or a .tar.gz) as loaded run data."""
    from kit.paths import RESULTS
    from kit.run import find_run

    runs = []
    for ref in refs:
        try:
            d = find_run(ref, results or RESULTS)
        except FileNotFoundError as exc:
            raise CompareError(str(exc)) from None
        if not (d / "summary.json").exists():
            raise CompareError(f"{d} has no summary.json: not a run folder")
        runs.append(load_run(d))
    return runs


def _selected_runs(refs: Sequence[str], wanted: Mapping[str, str], results: Path | None) -> list[RunData]:
    """The runs to compare: those named (*refs*, in order), kept when they carry every tag of *wanted*; with
    none named, the runs under *results* carrying them (:func:`select_runs`, oldest first).  CompareError when
    fewer than two are left, naming the tags and what carried them."""
    from kit.paths import RESULTS

    where = results or RESULTS
    if not refs and not wanted:
        raise CompareError("give the runs to compare (A,B: run ids, folders or tarballs) or --tag key=value")
    runs = load_runs(refs, results) if refs else [load_run(d) for d in select_runs(wanted, where)]
    if wanted:
        runs = [r for r in runs if _has_tags(r.summary, wanted)]
        if len(runs) < 2:
            carried = ", ".join(_label(r) for r in runs) or "none"
            among = "of the runs named" if refs else f"under {where}/"
            raise CompareError(
                f"--tag {tags_text(wanted)}: {len(runs)} run(s) {among} carry it ({carried}): compare needs two; "
                "tag another run (fab run --tag) or name the runs"
            )
    return runs


def _check_label(label_tag: str | None, runs: Sequence[RunData]) -> None:
    """CompareError when no run carries the tag *label_tag*: every column would be named by its run id."""
    if label_tag and not any(label_tag in run_tags(r.summary) for r in runs):
        keys = sorted({k for r in runs for k in run_tags(r.summary)})
        raise CompareError(
            f"--label {label_tag}: no run carries the tag {label_tag!r}; give one of their tags' keys "
            f"({', '.join(keys) or 'the runs have none'})"
        )


def compare_document(
    result: Mapping[str, Any],
    runs: Sequence[RunData],
    checks: Sequence[Mapping[str, Any]],
    html_out: Path,
    exit_status: int,
) -> dict[str, Any]:
    """``fab compare --json``'s one document: the exit status and outcome first (what a script branches on),
    the runs with their tags, every figure with each run's value, change and noise verdict, the --fail-if
    checks, the settings side by side and the page written."""
    labels = result["labels"]
    failed = [c for c in checks if c["failed"] is not False]
    return {
        "exit_status": exit_status,
        "outcome": "regression" if failed else "pass",
        "failed_rules": [f"{c['rule']} on {c['run']}" for c in failed],
        "baseline": labels[0],
        "runs": [
            {
                "label": lab,
                "run_id": _label(r),
                "path": str(r.path),
                "tags": run_tags(r.summary),
                "started_at": r.summary.get("started_at"),
                "baseline": i == 0,
            }
            for i, (lab, r) in enumerate(zip(labels, runs))
        ],
        "figures": [
            {
                **{k: v for k, v in row.items() if k != "runs"},
                "runs": [{"run": lab, **c} for lab, c in zip(labels[1:], row["runs"])],
            }
            for row in result["rows"]
        ],
        "fail_if": list(checks),
        "settings": result["side_by_side"],
        "method": result["method"],
        "html_file": str(html_out),
    }


def run_compare(
    refs: Sequence[str],
    fail_if: Sequence[str] = (),
    html_out: Path | None = None,
    *,
    results: Path | None = None,
    say: Callable[[str], None] = print,
    tags: Sequence[str] = (),
    label: str | None = None,
    on_result: Callable[[dict[str, Any]], None] | None = None,
) -> int:
    """``fab compare``: print the table, write the HTML page, check the rules.

    The runs are *refs* (run ids under *results*, folders or tarballs) or, with none, those under *results*
    carrying every ``key=value`` of *tags* (:func:`_selected_runs`); *label* names the columns by a tag.
    Returns 0, or 1 when a ``--fail-if`` rule failed (a figure a rule needs that a run lacks counts
    as failed: a CI gate must not pass on missing data).  Raises :class:`CompareError` (exit 2) on
    a malformed rule or tag, an unreadable run or fewer than two runs, before any work.  *on_result* gets
    :func:`compare_document`.
    """
    rules = [parse_fail_if(r) for r in fail_if]
    runs = _selected_runs(refs, parse_tag_filter(tags), results)
    _check_label(label, runs)
    result = compare_runs(runs, label_tag=label)
    say(format_table(result))
    checks = evaluate_fail_if(result, rules)
    if html_out is None:
        base = results or runs[0].path.parent
        html_out = base / (
            "compare-" + "-vs-".join(re.sub(r"[^A-Za-z0-9_.-]", "_", x) for x in result["labels"]) + ".html"
        )
    write_compare_html(html_out, result, runs, checks)
    failed = 0
    for c in checks:
        if c["failed"] is False:
            state = "pass"
        else:
            failed += 1
            state = "FAIL" if c["failed"] else "FAIL (no value)"
        q = c["compared"]
        shown = "-" if q is None else (f"{q:+.1%}" if c["relative"] else _fmt(q))
        say(f"{state:<16} --fail-if {c['rule']:<16} {c['run']}: {shown} ({c['verdict']})")
    say(f"compare.html: {html_out}")
    rc = 1 if failed else 0
    if on_result is not None:
        on_result(compare_document(result, runs, checks, html_out, rc))
    return rc
