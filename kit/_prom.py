"""The Prometheus text exposition format (version 0.0.4) for the services' ``GET /metrics`` (pure).

A service describes each figure once, as a :class:`Metric` (name, type, help, value or labelled
values); :func:`exposition` writes the text a Prometheus server (or ``prometheus_client``'s parser)
reads.  Counters get the ``_total`` suffix the format's convention asks for; names are prefixed
with the service (``wsproxy_``, ``sim_``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

__all__ = ["Metric", "exposition", "CONTENT_TYPE"]

#: the Content-Type of the text format
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True)
class Metric:
    """One metric family: a single value, or one value per label set in *samples*."""

    name: str
    kind: str  # "counter" or "gauge"
    help: str
    value: float | None = None
    samples: Mapping[tuple[tuple[str, str], ...], float] = field(default_factory=dict)


def _escape_label(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(v: float) -> str:
    if isinstance(v, bool):
        v = int(v)
    if isinstance(v, int):
        return str(v)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v))


def exposition(metrics: Iterable[Metric]) -> str:
    """The text of *metrics*, one family after another (HELP, TYPE, samples)."""
    lines = []
    for m in metrics:
        name = m.name + ("_total" if m.kind == "counter" and not m.name.endswith("_total") else "")
        lines.append(f"# HELP {name} {m.help.replace(chr(92), chr(92) * 2).replace(chr(10), ' ')}")
        lines.append(f"# TYPE {name} {m.kind}")
        if m.value is not None:
            lines.append(f"{name} {_number(m.value)}")
        for labels, v in sorted(m.samples.items()):
            text = ",".join(f'{k}="{_escape_label(str(val))}"' for k, val in labels)
            lines.append(f"{name}{{{text}}} {_number(v)}")
    return "\n".join(lines) + "\n"
