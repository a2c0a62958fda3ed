"""The kit's services on one host, through the host's service manager (never matched by process name).

A host runs its kit services either under the kit's own supervisord (its config at
``kit_supervisord_conf``, as ``fab status`` decides it) or as systemd units
``<kit_unit_prefix><program>.service`` (both the kit's contract, in the host's variables).  :func:`resolve_service_pids` asks it for each program's main PID
(the component costs sample those; the chaos faults signal them); :func:`service_action` asks it to
restart a program.  The supervisorctl path is read from the ``kit_service`` role's defaults
under the inventory's values: one place for each fact.
"""

from __future__ import annotations

import functools
import logging
import shlex
from typing import Any

import yaml

from kit.inventory import Host, Inventory
from kit.paths import role_defaults

from ._components import service_programs
from ._hostops import CMD_TIMEOUT

__all__ = ["resolve_service_pids", "service_action", "host_programs", "KIT_SERVICE_DEFAULTS"]

log = logging.getLogger(__name__)

#: the kit_service role's knobs (supervisorctl path) live in its defaults
KIT_SERVICE_DEFAULTS = role_defaults("kit_service")
#: seconds a graceful restart may take (the role's stopwaitsecs plus start-up)
RESTART_TIMEOUT = 90.0


@functools.cache
def _kit_service_defaults() -> dict[str, Any]:
    try:
        return yaml.safe_load(KIT_SERVICE_DEFAULTS.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        log.warning("reading %s: %s", KIT_SERVICE_DEFAULTS, exc)
        return {}


def _service_var(h: Host, name: str, fallback: str) -> str:
    """A kit_service role variable as the role sees it: the inventory's value over the role default."""
    return str(h.vars.get(name) or _kit_service_defaults().get(name) or fallback)


def host_programs(inv: Inventory, host: str) -> list[tuple[str, str]]:
    """``(component, program)`` of the kit services *host* runs, in the role's order."""
    h = inv.hosts[host]
    return service_programs(inv.roles_of(host), int(h.vars.get("wsproxy_instances_per_host") or 1))


#: asks the host's service manager, as ``fab status`` decides it: the kit's supervisord when its
#: config is there, else systemd; prints ``manager=...`` and one ``<program>=<output>`` line each
_MANAGER = r"""
f={conf}
if [ -f "$f" ]; then
  echo manager=supervisor
  for p in {programs}; do echo "$p=$({ctl} -c "$f" {sv_cmd} "$p" 2>&1 | tr '\n' ' ')"; done
elif command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
  echo manager=systemd
  for p in {programs}; do echo "$p=$({sd_cmd} {prefix}$p.service 2>&1 | tr '\n' ' ')"; done
else
  echo manager=none
fi
"""

_COMMANDS = {
    "pid": ("pid", "systemctl show -p MainPID --value"),
    "restart": ("restart", "systemctl restart"),
}


def _ask(c: Any, programs: list[str], what: str, timeout: float) -> tuple[str, dict[str, str], Any]:
    h = c.inventory_host
    sv_cmd, sd_cmd = _COMMANDS[what]
    res = c.run(
        _MANAGER.format(
            conf=shlex.quote(h.supervisord_conf),
            programs=" ".join(shlex.quote(p) for p in programs),
            ctl=shlex.quote(_service_var(h, "kit_service_supervisorctl_bin", "/usr/bin/supervisorctl")),
            prefix=shlex.quote(str(h.vars["kit_unit_prefix"])),
            sv_cmd=sv_cmd,
            sd_cmd=sd_cmd,
        ),
        hide=True,
        warn=True,
        timeout=timeout,
    )
    said = dict(line.split("=", 1) for line in res.stdout.splitlines() if "=" in line)
    return said.get("manager", "").strip(), said, res


def resolve_service_pids(
    c: Any, inv: Inventory, only: list[str] | None = None
) -> tuple[dict[str, tuple[str, int | None]], list[str]]:
    """program -> (component, main PID or None) of the kit services on *c*'s host (or just the
    programs *only*), and one problem line per program without a PID."""
    h = c.inventory_host
    programs = [(comp, p) for comp, p in host_programs(inv, h.name) if only is None or p in only]
    if not programs:
        return {}, []
    manager, said, res = _ask(c, [p for _, p in programs], "pid", CMD_TIMEOUT)
    pids: dict[str, tuple[str, int | None]] = {}
    problems = []
    for component, program in programs:
        raw = said.get(program, "").strip()
        pid = int(raw) if raw.isdigit() and int(raw) > 0 else None
        pids[program] = (component, pid)
        if pid is None:
            why = (
                f"{manager} says {raw!r}"
                if manager in ("supervisor", "systemd")
                else f"no kit supervisord.conf and no systemd (exit {res.exited})"
            )
            problems.append(f"{h.name}: no PID for {program}: {why}")
    return pids, problems


def service_action(c: Any, program: str, action: str = "restart") -> str:
    """Ask the host's service manager to *action* (``restart``) one program; return what it said.

    Raises RuntimeError naming the manager's answer when it failed.
    """
    manager, said, res = _ask(c, [program], action, RESTART_TIMEOUT)
    text = said.get(program, "").strip()
    if manager == "supervisor" and ("ERROR" in text or "no such" in text.lower()):
        raise RuntimeError(f"supervisorctl {action} {program}: {text}")
    if manager == "systemd" and text:
        raise RuntimeError(f"systemctl {action} {program}: {text}")
    if manager not in ("supervisor", "systemd"):
        raise RuntimeError(
            f"no kit supervisord.conf and no systemd on {c.inventory_host.name}: cannot {action} {program}"
        )
    return f"{manager}: {text or 'ok'}"
