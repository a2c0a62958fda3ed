"""The simulator's routes, written once: Quart registers them and the direct path matches them.

:data:`ROUTES` is the table: method, werkzeug rule, the view's name, whether the view reads the
body, the answer's content type and whether :class:`._asgi.DirectRoutes` may answer it without
Quart's request context.  Every view has one signature, the rule's arguments in order and then
the body: ``await view(*args, body) -> (status, bytes)`` (:data:`._asgi.View` with its arguments
bound), so the same function serves both ways.

:func:`direct_router` turns the table's direct routes into the ``route(method, path)`` that
:class:`._asgi.DirectRoutes` takes, written as the comparisons one would write by hand (so matching
costs what the hand-written matcher did).  It takes what werkzeug would route to the same view with
the same arguments and nothing else (an argument is one non-empty segment, werkzeug's default
converter; fixed rules win over rules with arguments, as in werkzeug); anything else (other
methods, extra, empty or doubled segments, a trailing slash) returns None and goes to Quart.
tests/unit/test_sim_direct.py checks that against werkzeug's own matcher.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from kit import contract
from kit._prom import CONTENT_TYPE as PROM_CONTENT_TYPE

__all__ = ["Route", "ROUTES", "JSON", "direct_router"]

#: the content type of every JSON answer (and of every direct route's)
JSON = "application/json"

_ARG = re.compile(r"<([A-Za-z_][A-Za-z0-9_]*)>")


@dataclass(frozen=True, slots=True)
class Route:
    """One route: *method* and werkzeug *rule* to the view named *endpoint*."""

    method: str
    rule: str
    endpoint: str
    #: the view is given the request's body (else ``b""``: Quart never reads it)
    body: bool = True
    content_type: str = JSON
    #: answered by the direct path too (a JSON view whose arguments are plain segments)
    direct: bool = False
    #: the rule's arguments, in order (derived from *rule*)
    args: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "args", tuple(_ARG.findall(self.rule)))


#: every route of the simulator (the wire contract in DESIGN.md; kit/sim/_app.py has the views)
ROUTES: tuple[Route, ...] = (
    Route("POST", "/session/create", "session_create", direct=True),
    Route("POST", "/session/<session_id>/run", "session_run", direct=True),
    Route("POST", "/session/<session_id>/close", "session_close", body=False, direct=True),
    Route("GET", contract.health_path(), "health", body=False),
    Route("GET", contract.deep_health_path(), "deep_health", body=False),
    Route("GET", "/stats", "stats", body=False),
    Route("GET", "/stats/all", "stats_all", body=False),
    Route("GET", "/metrics", "metrics", body=False, content_type=PROM_CONTENT_TYPE),
)


def _segments(rule: str) -> list[str | None]:
    """The rule's path split on "/", None where an argument stands; ValueError for what the direct path
    cannot match as werkzeug does (a converter, an argument inside a segment)."""
    out: list[str | None] = []
    for seg in rule.split("/"):
        if _ARG.fullmatch(seg):
            out.append(None)
        elif "<" in seg or ">" in seg:
            raise ValueError(f"rule {rule!r}: the direct path matches only whole-segment arguments (<name>)")
        else:
            out.append(seg)
    return out


def _check_unambiguous(routes: list[Route]) -> None:
    """ValueError when one request could match two of *routes* (the same method and number of segments,
    and no segment fixed in both with different text): the order werkzeug would choose is not copied."""
    for i, a in enumerate(routes):
        sa = _segments(a.rule)
        for b in routes[i + 1 :]:
            sb = _segments(b.rule)
            if a.method != b.method or len(sa) != len(sb):
                continue
            if bool(a.args) != bool(b.args):
                continue  # a fixed rule beside one with arguments: the fixed one wins, as in werkzeug
            if all(x is None or y is None or x == y for x, y in zip(sa, sb, strict=True)):
                raise ValueError(f"routes {a.endpoint} and {b.endpoint} may match the same {a.method} request")


def direct_router(routes: Iterable[Route], views: Mapping[str, Callable[..., Any]]) -> Callable[[str, str], Any]:
    """``route(method, path)`` -> the view of the direct route matching, its arguments bound, or None.

    *views* maps each route's endpoint to its view.  The matcher is Python written from the table
    (``route.source`` shows it): per method, a comparison with each fixed rule, then one
    ``str.split`` and, per rule with arguments, its segment count and fixed segments compared (the
    last first: it tells the session routes apart) and its arguments non-empty.  That is the code one
    would write by hand and costs the same; walking the table at each request instead (dicts keyed by
    the fixed segments) cost 200-300 ns more per request.  Raises ValueError for a direct route that is
    not JSON, or two direct routes the same request would match.
    """
    direct = [r for r in routes if r.direct]
    _check_unambiguous(direct)
    names: dict[str, Any] = {"partial": partial}
    by_method: dict[str, list[tuple[str, Route]]] = {}
    for i, r in enumerate(direct):
        if r.content_type != JSON:
            raise ValueError(f"route {r.endpoint}: the direct path answers JSON only")
        names[f"view{i}"] = views[r.endpoint]
        by_method.setdefault(r.method, []).append((f"view{i}", r))
    lines = ["def route(method, path):"]
    for method, named in by_method.items():
        lines.append(f"    if method == {method!r}:")
        lines += [f"        if path == {r.rule!r}:\n            return {v}" for v, r in named if not r.args]
        dynamic = [(v, r, _segments(r.rule)) for v, r in named if r.args]
        if dynamic:
            lines += ["        parts = path.split('/')", "        n = len(parts)"]
        for v, _r, segs in dynamic:
            test = [f"n == {len(segs)}"]
            test += [f"parts[{i}] == {seg!r}" for i, seg in reversed(list(enumerate(segs))) if seg is not None]
            test += [f"parts[{i}]" for i, seg in enumerate(segs) if seg is None]
            args = ", ".join(f"parts[{i}]" for i, seg in enumerate(segs) if seg is None)
            lines.append(f"        if {' and '.join(test)}:\n            return partial({v}, {args})")
    lines.append("    return None")
    source = "\n".join(lines) + "\n"
    exec(compile(source, "<kit.sim direct routes>", "exec"), names)  # noqa: S102 - our own table, repr-quoted
    route = names["route"]
    route.source = source
    return route
