"""Hosts, groups and connection parameters read from the Ansible inventory (the only host list).

:func:`load_inventory` runs ``ansible-inventory -i <inv> --playbook-dir playbooks --list``
(Ansible's supported interface; its Python API is not), so it sees what the playbooks see: the
inventory's variables and the kit's fixed facts (``playbooks/group_vars/all/contract.yml``).  The
kit's tunable settings are the ``kit_common`` role's defaults, which ``ansible-inventory`` does not
show: they are laid under each host's variables here, as Ansible lays role defaults under the
inventory, so a value the inventory sets anywhere (``all: vars:`` included) wins on both sides.  It
returns an :class:`Inventory`: hosts with their merged variables (host vars over group_vars), groups, and
per host what Fabric needs to reach it (address, user, port, key, known-hosts
file, or ``ansible_connection: local``).  Simple ``{{ var }}`` templates in
variables (e.g. the contract's paths under ``{{ kit_root }}``, and ``kit_root`` itself)
are rendered with the host's own variables.

Errors raise :class:`InventoryError` naming the file, the host or the group and
what to do; callers print it and exit 2.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jinja2

from kit import contract
from kit.paths import PLAYBOOKS

__all__ = ["Host", "Inventory", "InventoryError", "load_inventory", "parse_inventory_json", "ROLE_GROUPS"]

log = logging.getLogger(__name__)

#: the inventory groups, one per role (the contract's kit_groups)
ROLE_GROUPS: tuple[str, ...] = contract.groups()
INVENTORY_TIMEOUT = 60.0


class InventoryError(ValueError):
    """The inventory cannot be read or lacks what a task needs; the message says which and how to fix it."""


@dataclasses.dataclass(frozen=True)
class Host:
    """One inventory host and its merged variables."""

    name: str
    vars: dict[str, Any] = dataclasses.field(repr=False, compare=False)

    def __post_init__(self) -> None:
        # a host built by hand (tests) gets the contract's values it lacks, rendered for it, as
        # parse_inventory_json gives every host
        if not contract.contract().keys() <= self.vars.keys():
            object.__setattr__(self, "vars", _with_contract(self.name, self.vars, {}))

    @property
    def local(self) -> bool:
        return self.vars.get("ansible_connection") == "local"

    @property
    def address(self) -> str:
        return str(self.vars.get("ansible_host") or self.name)

    @property
    def service_address(self) -> str:
        """Where this host's services listen: the contract's ``kit_address`` (``ansible_host``, or
        loopback for a local host)."""
        return str(self.vars["kit_address"]).strip()

    @property
    def user(self) -> str | None:
        return self.vars.get("ansible_user")

    @property
    def port(self) -> int:
        return int(self.vars.get("ansible_port") or 22)

    @property
    def key_file(self) -> str | None:
        return self.vars.get("ansible_ssh_private_key_file") or self.vars.get("ansible_private_key_file")

    def _ssh_options(self) -> dict[str, str]:
        opts: dict[str, str] = {}
        args = " ".join(str(self.vars.get(k) or "") for k in ("ansible_ssh_common_args", "ansible_ssh_extra_args"))
        words = shlex.split(args)
        for i, w in enumerate(words):
            if w == "-o" and i + 1 < len(words):
                key, _, value = words[i + 1].partition("=")
                opts[key.lower()] = value
            elif w.startswith("-o") and len(w) > 2:
                key, _, value = w[2:].partition("=")
                opts[key.lower()] = value
        return opts

    @property
    def known_hosts(self) -> str | None:
        return self._ssh_options().get("userknownhostsfile")

    @property
    def strict_host_keys(self) -> bool:
        return self._ssh_options().get("stricthostkeychecking", "").lower() in ("yes", "true")

    @property
    def kit_root(self) -> str:
        return str(self.vars["kit_root"])

    @property
    def kit_python(self) -> str:
        """The kit's venv interpreter on this host (built by the Ansible ``kit_venv`` role)."""
        return f"{self.vars['kit_venv_dir']}/bin/python"

    @property
    def supervisord_conf(self) -> str:
        """The kit-owned supervisord's config on this host (used where the host has no systemd)."""
        return str(self.vars["kit_supervisord_conf"])

    @property
    def log_dir(self) -> str:
        """Where this host's kit services log (``<program>.log``)."""
        return str(self.vars["kit_log_dir"])

    @property
    def tuning_report(self) -> str:
        """The tuning role's report of this host: what it allows, the sessions one process holds."""
        return str(self.vars["kit_tuning_report"])

    @property
    def client_wrapper(self) -> str:
        """The deployed ``kit-client`` wrapper of a generator host (the generators role installs it)."""
        return str(self.vars["kit_client_wrapper"])

    @property
    def wsproxy_artifact_path(self) -> str:
        """Where a user's wsproxy build is copied and run from on a wsproxy host (``wsproxy_artifact``)."""
        return str(self.vars["kit_wsproxy_artifact_path"])

    def wsproxy_programs(self) -> list[tuple[str, int]]:
        """``(program, port)`` of each wsproxy instance this host runs when it is in the wsproxy group."""
        base = int(self.vars["wsproxy_base_port"])
        return [(contract.wsproxy_program(i), base + i) for i in range(int(self.vars["wsproxy_instances_per_host"]))]


@dataclasses.dataclass(frozen=True)
class Inventory:
    path: Path
    hosts: dict[str, Host]
    groups: dict[str, list[str]]

    def group(self, name: str) -> list[Host]:
        return [self.hosts[h] for h in self.groups.get(name, [])]

    def require_groups(self, *names: str) -> None:
        missing = [g for g in names if not self.groups.get(g)]
        if missing:
            raise InventoryError(
                f"{self.path}: group(s) {', '.join(missing)} have no hosts: add at least one host to each "
                f"(see inventory/example-multihost.yml)"
            )

    def roles_of(self, host: str) -> list[str]:
        """The kit groups *host* is in (the optional ``monitoring`` included)."""
        return [g for g in ROLE_GROUPS + contract.optional_groups() if host in self.groups.get(g, [])]

    @property
    def monitoring(self) -> Host | None:
        """The monitoring host (Prometheus), when the inventory has one."""
        hosts = self.group("monitoring")
        return hosts[0] if hosts else None

    def describe(self) -> dict[str, Any]:
        """A secrets-free summary of hosts and groups for run records."""
        return {
            "path": str(self.path),
            "groups": {g: list(h) for g, h in self.groups.items()},
            "hosts": {
                n: {"address": h.address, "local": h.local, "roles": self.roles_of(n)} for n, h in self.hosts.items()
            },
        }


def _ansible_inventory_exe() -> str:
    here = Path(sys.executable).parent / "ansible-inventory"
    if here.exists():
        return str(here)
    found = shutil.which("ansible-inventory")
    if found is None:
        raise InventoryError("ansible-inventory not found: run ./loadkit setup (it installs ansible-core in .venv)")
    return found


def _render(value: Any, context: dict[str, Any], env: jinja2.Environment) -> Any:
    if isinstance(value, str) and "{{" in value:
        try:
            return env.from_string(value).render(context)
        except jinja2.TemplateError:
            return value  # left for Ansible (filters or lookups we do not emulate)
    if isinstance(value, list):
        return [_render(v, context, env) for v in value]
    if isinstance(value, dict):
        return {k: _render(v, context, env) for k, v in value.items()}
    return value


def _with_contract(name: str, host_vars: dict[str, Any], groups: dict[str, list[str]]) -> dict[str, Any]:
    """*host_vars* over the contract: over the settings' defaults (kit_common's role defaults, which
    `ansible-inventory` leaves out) and the fixed facts (which `--playbook-dir playbooks` merges in
    already; JSON fed by tests lacks them); simple templates rendered with the host's own variables."""
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    raw = {**contract.contract(), **host_vars}
    ctx = {**raw, "inventory_hostname": name, "inventory_hostname_short": name.split(".")[0], "groups": groups}
    for _ in range(3):  # variables referring to variables
        ctx.update({k: _render(v, ctx, env) for k, v in raw.items()})
    return {k: ctx[k] for k in raw}


def parse_inventory_json(data: dict[str, Any], path: Path) -> Inventory:
    """Build an Inventory from ``ansible-inventory --list`` JSON (pure; tests feed it directly)."""
    hostvars = data.get("_meta", {}).get("hostvars", {})
    groups: dict[str, list[str]] = {}

    def hosts_of(group: str, seen: set[str]) -> list[str]:
        if group in seen:
            return []
        seen.add(group)
        node = data.get(group, {})
        found = list(node.get("hosts", []))
        for child in node.get("children", []):
            found += [h for h in hosts_of(child, seen) if h not in found]
        return found

    for group in data:
        if group != "_meta":
            groups[group] = hosts_of(group, set())
    names = sorted(set(hostvars) | {h for hs in groups.values() for h in hs})
    hosts = {name: Host(name, _with_contract(name, hostvars.get(name, {}), groups)) for name in names}
    return Inventory(path, hosts, {g: h for g, h in groups.items() if g not in ("all",)})


def load_inventory(path: str | Path) -> Inventory:
    """Read *path* through ``ansible-inventory --list``.  Raises InventoryError."""
    path = Path(path)
    if not path.exists():
        raise InventoryError(
            f"inventory {path} does not exist: pass --inventory inventory/local.yml, "
            "or build the lab with `fab lab-up` (it writes inventory/lab.yml)"
        )
    try:
        res = subprocess.run(
            [_ansible_inventory_exe(), "-i", str(path), "--playbook-dir", str(PLAYBOOKS), "--list"],
            capture_output=True,
            text=True,
            timeout=INVENTORY_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        raise InventoryError(f"ansible-inventory -i {path} did not answer in {INVENTORY_TIMEOUT:.0f} s") from None
    if res.returncode != 0:
        raise InventoryError(f"ansible-inventory -i {path} failed: {res.stderr.strip()[-800:]}")
    if "Unable to parse" in res.stderr or "No inventory was parsed" in res.stderr:
        raise InventoryError(f"ansible-inventory could not parse {path}: {res.stderr.strip()[-800:]}")
    try:
        data = json.loads(res.stdout)
    except ValueError as exc:
        raise InventoryError(f"ansible-inventory -i {path} printed no JSON ({exc})") from None
    inv = parse_inventory_json(data, path)
    if not inv.hosts:
        raise InventoryError(f"inventory {path} lists no hosts: add hosts under the groups {', '.join(ROLE_GROUPS)}")
    return inv
