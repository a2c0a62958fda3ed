"""The balancer's decisions during a run, read from HAProxy's own log (pure but for reading files).

HAProxy logs every change of a backend server's state, with the check's reason and the sessions the
server held, and when a backend has no server left (the haproxy role logs in ``iso`` format, so
each line starts with its UTC time)::

    2026-12-04T07:29:42.879687+00:00 Server wsproxy/lk-h5-wsproxy-0 is DOWN, reason: Layer7 timeout,
        check duration: 5002ms. 3 active and 0 backup servers left. 1889 sessions active, 0 requeued, ...
    2026-12-04T07:29:42.879747+00:00 backend wsproxy has no server available!

:func:`server_events` turns the lines of every balancer's log that fall inside the run into
``summary["server_events"]`` (times relative to the agreed start, like the chaos events), and
:func:`balancer_verdict` into the one line a report puts first when the balancer took servers out:
"HAProxy marked 4 of 4 wsproxy servers DOWN at 41-52 s (Layer7 timeout), holding 9,800 sessions:
closed (haproxy_shutdown_sessions_on_down)".  Whether the sessions of a server marked DOWN were
closed is read from the configuration deployed on each balancer (:func:`deployed_shutdown_sessions`);
where it cannot be read, from the haproxy role's ``haproxy_shutdown_sessions_on_down``: the
inventory's value, else the role's default, read from the role's defaults file (its one definition).
"""

from __future__ import annotations

import datetime
import functools
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from kit.inventory import Inventory
from kit.paths import role_defaults

__all__ = [
    "parse_haproxy_log",
    "server_events",
    "balancer_verdict",
    "shutdown_sessions_on_down",
    "backend_sizes",
    "haproxy_var",
    "haproxy_flag",
    "haproxy_config_path",
    "deployed_shutdown_sessions",
]

HAPROXY_DEFAULTS = role_defaults("haproxy")

_SERVER = re.compile(
    r"^(?P<ts>\d{4}-\d\d-\d\dT[\d:.]+(?:[+-]\d\d:\d\d|Z)) Server (?P<backend>[^/\s]+)/(?P<server>\S+) is "
    r"(?P<what>DOWN|UP|going DOWN for maintenance|UP \(leaving forced maintenance\)|going DOWN|stopped)"
    r"(?:, reason: (?P<reason>[^,]+(?:, info: \"[^\"]*\")?))?"
    r"(?:, check duration: (?P<check_ms>\d+)ms)?"
    r"(?:.*?(?P<left>\d+) active and \d+ backup servers (?:left|online))?"
    r"(?:.*?(?P<sessions>\d+) sessions active)?"
)
_NO_SERVER = re.compile(
    r"^(?P<ts>\d{4}-\d\d-\d\dT[\d:.]+(?:[+-]\d\d:\d\d|Z)) backend (?P<backend>\S+) has no server "
    r"available!"
)


def _epoch(ts: str) -> float | None:
    try:
        return datetime.datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _state(what: str) -> str:
    if "maintenance" in what:
        return "MAINT" if "DOWN" in what else "UP"
    return "DOWN" if "DOWN" in what or what == "stopped" else "UP"


def parse_haproxy_log(lines: Iterable[str]) -> list[dict[str, Any]]:
    """Every server state change and "no server available" in *lines*, in order: ``{at, backend, server,
    state, reason, check_ms, servers_left, sessions}`` (``server`` None and ``state`` ``NO_SERVER`` for the
    latter).  Lines of other formats (HAProxy's stderr copies, traffic logs) are skipped."""
    out: list[dict[str, Any]] = []
    for line in lines:
        m = _SERVER.match(line)
        if m:
            at = _epoch(m["ts"])
            if at is None:
                continue
            out.append(
                {
                    "at": at,
                    "backend": m["backend"],
                    "server": m["server"],
                    "state": _state(m["what"]),
                    "reason": (m["reason"] or "").strip(),
                    "check_ms": int(m["check_ms"]) if m["check_ms"] else None,
                    "servers_left": int(m["left"]) if m["left"] else None,
                    "sessions": int(m["sessions"]) if m["sessions"] else None,
                }
            )
            continue
        m = _NO_SERVER.match(line)
        if m and (at := _epoch(m["ts"])) is not None:
            out.append(
                {
                    "at": at,
                    "backend": m["backend"],
                    "server": None,
                    "state": "NO_SERVER",
                    "reason": "",
                    "check_ms": None,
                    "servers_left": 0,
                    "sessions": None,
                }
            )
    return out


def server_events(logs_dir: Path, balancers: Sequence[str], start_at: float, end_at: float) -> list[dict[str, Any]]:
    """The state changes every balancer logged between the agreed start and *end_at*, oldest first, each with
    ``balancer`` (its host) and ``at_s`` (seconds since the agreed start).  A balancer whose log was not
    collected has none."""
    out = []
    for host in balancers:
        path = logs_dir / host / "haproxy.log"
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        for ev in parse_haproxy_log(text.splitlines()):
            if start_at <= ev["at"] <= end_at:
                out.append({"at_s": round(ev["at"] - start_at, 3), "balancer": host} | ev)
    return sorted(out, key=lambda e: (e["at"], e["balancer"]))


@functools.cache
def _haproxy_defaults() -> dict[str, Any]:
    try:
        return yaml.safe_load(HAPROXY_DEFAULTS.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}


def haproxy_var(h: Any, name: str) -> Any:
    """A haproxy role variable as the role sees it on host *h*: the inventory's value over the role default."""
    return h.vars.get(name, _haproxy_defaults().get(name))


def haproxy_flag(h: Any, name: str) -> bool:
    """A yes/no haproxy role variable on host *h* (:func:`haproxy_var`) as Ansible's ``| bool`` reads it."""
    return str(haproxy_var(h, name)).strip().lower() in ("true", "yes", "1", "on")


def haproxy_config_path(h: Any) -> str:
    """Where the haproxy role rendered HAProxy's configuration on host *h* (``haproxy_config``)."""
    import jinja2

    return jinja2.Template(str(haproxy_var(h, "haproxy_config"))).render(**h.vars)


def deployed_shutdown_sessions(c: Any, h: Any) -> bool | None:
    """Does the configuration deployed on *h* (connection *c*) close a server's sessions when it is marked
    DOWN?  None when it cannot be read.  The deployed file is the fact: extra vars given to
    ansible-playbook by hand are in it, not in the inventory."""
    import shlex

    res = c.run(
        f"grep -c -- 'on-marked-down shutdown-sessions' {shlex.quote(haproxy_config_path(h))}",
        hide=True,
        warn=True,
        timeout=30,
    )
    return int(res.stdout.strip()) > 0 if res.return_code in (0, 1) and res.stdout.strip().isdigit() else None


def shutdown_sessions_on_down(inv: Inventory) -> dict[str, bool]:
    """Per balancer host: does HAProxy close a server's sessions when it marks it DOWN (the role's knob)?"""
    return {h.name: haproxy_flag(h, "haproxy_shutdown_sessions_on_down") for h in inv.group("haproxy")}


def backend_sizes(inv: Inventory) -> dict[str, int]:
    """Servers per HAProxy backend as the template renders them: every wsproxy instance, every simulator host."""
    return {
        "wsproxy": sum(int(h.vars.get("wsproxy_instances_per_host") or 1) for h in inv.group("wsproxy")),
        "sim": len(inv.group("sim")),
    }


def _span(ts: Sequence[float]) -> str:
    lo, hi = min(ts), max(ts)
    return f"{lo:.0f} s" if round(lo) == round(hi) else f"{lo:.0f}-{hi:.0f} s"


def balancer_verdict(
    events: Sequence[Mapping[str, Any]], sizes: Mapping[str, int], shutdown: Mapping[str, bool]
) -> list[str]:
    """One line per backend whose servers were marked DOWN during the run (none: nothing to say)."""
    lines = []
    for backend in sorted({e["backend"] for e in events if e["state"] == "DOWN"}):
        downs = [e for e in events if e["backend"] == backend and e["state"] == "DOWN"]
        servers = {e["server"] for e in downs}
        reasons = sorted({re.sub(r", info: .*", "", e["reason"]) or "no reason given" for e in downs})
        held = sum(e["sessions"] or 0 for e in downs)
        closed = sum(e["sessions"] or 0 for e in downs if shutdown.get(e["balancer"]))
        size = sizes.get(backend)
        line = (
            f"HAProxy marked {len(servers)}{f' of {size}' if size else ''} {backend} server"
            f"{'' if len(servers) == 1 and not size else 's'} DOWN {len(downs)} time{'s' if len(downs) != 1 else ''} "
            f"at {_span([e['at_s'] for e in downs])} ({', '.join(reasons)})"
        )
        if closed:
            line += f" and closed {closed:,} sessions (haproxy_shutdown_sessions_on_down)"
        elif held:
            line += f"; the {held:,} sessions they held were kept"
        empty = [e for e in events if e["backend"] == backend and e["state"] == "NO_SERVER"]
        if empty:
            line += f"; no server was left {len(empty)} time{'s' if len(empty) != 1 else ''}"
        lines.append(line)
    return lines
