"""The facts the playbooks and the Python kit share, read from their one definition.

Two files, each written once and loaded by Ansible and by this module alike:

* the fixed facts in ``playbooks/group_vars/all/contract.yml`` (``kit/contract.yml`` links to it):
  groups, paths under ``kit_root``, users, names, the wire contract, bounds.  Ansible loads it for
  every play, above an inventory's ``all: vars:``: nothing in it is meant to be tuned.
* the kit's tunable settings, the ``kit_common`` role's defaults
  (``playbooks/roles/kit_common/defaults/main.yml``; ``kit/defaults.yml`` links to it): ``kit_root``,
  the ports, ``wsproxy_instances_per_host``, ``kit_nofile``, ``kit_service_manager``,
  ``kit_host_python``.  Role defaults are Ansible's lowest precedence, so an inventory overrides
  each at any level; :mod:`kit.inventory` renders them under each host's inventory values the same way.

The wheel installed on hosts carries both files (the links resolved).  This module is their only
reader on the Python side: a port, path, user, reserve, bound or name the kit needs is taken from
here, never written again.  Values that are Ansible templates (``kit_root`` and the paths under it)
are per host: :mod:`kit.inventory` renders them with the host's variables.

Reading is lazy (nothing happens on import) and done once per process.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "CONTRACT_PATH",
    "DEFAULTS_PATH",
    "contract",
    "facts",
    "defaults",
    "ports",
    "groups",
    "optional_groups",
    "bounds",
    "jwt_algorithms",
    "fd_reserve",
    "fds_per_session",
    "pubsub_channel",
    "session_key",
    "run_id",
    "sysctls",
    "secret_files",
    "health_path",
    "deep_health_path",
    "wsproxy_program",
    "is_wsproxy_program",
    "sim_close_channel",
]

CONTRACT_PATH = Path(__file__).resolve().parent / "contract.yml"
DEFAULTS_PATH = Path(__file__).resolve().parent / "defaults.yml"
#: names of kit_common's defaults that only the roles use (secrets lookups, the templates folder, ...)
_ROLE_INTERNAL = "kit_common_"


@functools.cache
def facts() -> dict[str, Any]:
    """The fixed facts: every variable of the contract file, as YAML gives it (templates left as strings)."""
    with open(CONTRACT_PATH, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


@functools.cache
def defaults() -> dict[str, Any]:
    """The kit's tunable settings as the ``kit_common`` role defaults them (an inventory overrides each)."""
    with open(DEFAULTS_PATH, encoding="utf-8") as fh:
        return {k: v for k, v in yaml.safe_load(fh).items() if not k.startswith(_ROLE_INTERNAL)}


@functools.cache
def contract() -> dict[str, Any]:
    """What every host has before its inventory speaks: the settings' defaults and the fixed facts."""
    return {**defaults(), **facts()}


def ports() -> dict[str, int]:
    """The kit's default listening ports by service: redis, sim, wsproxy (the first instance's), haproxy_*, ...
    (an inventory may set others per host: a host's own are in :attr:`kit.inventory.Host.vars`)."""
    c = contract()
    return {
        "redis": c["redis_port"],
        "sim": c["sim_port"],
        "wsproxy": c["wsproxy_base_port"],
        "haproxy_http": c["haproxy_http_port"],
        "haproxy_ws": c["haproxy_ws_port"],
        "haproxy_stats": c["haproxy_stats_port"],
        "prometheus": c["prometheus_port"],
        "node_exporter": c["node_exporter_port"],
        "redis_exporter": c["redis_exporter_port"],
    }


def groups() -> tuple[str, ...]:
    """The inventory groups, one per role, in deployment order."""
    return tuple(contract()["kit_groups"])


def optional_groups() -> tuple[str, ...]:
    """Inventory groups a deployment may leave out (0 or 1 host): ``monitoring``."""
    return tuple(contract()["kit_optional_groups"])


def bounds(name: str) -> tuple[int, int]:
    """Inclusive ``(min, max)`` of a whole-number setting (``port``, ``sim_workers``, ...)."""
    b = contract()["kit_bounds"][name]
    return int(b["min"]), int(b["max"])


def health_path() -> str:
    """Where sim and wsproxy answer 200 when the instance can serve (no Redis round trip)."""
    return str(contract()["kit_health_path"])


def deep_health_path() -> str:
    """Where sim and wsproxy answer 200 when they can serve and Redis answers a fresh connection."""
    return str(contract()["kit_deep_health_path"])


def jwt_algorithms() -> tuple[str, ...]:
    return tuple(contract()["kit_jwt_algorithms"])


def fd_reserve() -> int:
    """Descriptors a proxy or generator process keeps besides its sessions."""
    return int(contract()["kit_fd_reserve"])


def fds_per_session() -> int:
    """Descriptors one session takes in a proxy or generator process."""
    return int(contract()["kit_fds_per_session"])


def is_wsproxy_program(name: str) -> bool:
    """Whether *name* is a wsproxy instance's program name (:func:`wsproxy_program` of some i)."""
    head, _, tail = str(contract()["kit_wsproxy_program"]).partition("{i}")
    middle = name[len(head) : len(name) - len(tail)] if name.startswith(head) and name.endswith(tail) else ""
    return middle.isdigit() and len(name) == len(head) + len(middle) + len(tail)


def wsproxy_program(i: int) -> str:
    """The program (supervisor program, systemd unit suffix, HAProxy server suffix) of wsproxy instance *i*."""
    return str(contract()["kit_wsproxy_program"]).replace("{i}", str(int(i)))


@functools.cache
def _channel_format() -> bytes:
    return contract()["kit_pubsub_channel"].replace("{id}", "%s").encode()


def sim_close_channel() -> bytes:
    """Where the simulator's workers announce a closed session to each other."""
    return str(contract()["kit_sim_close_channel"]).encode()


def pubsub_channel(session_id: str) -> bytes:
    """The Redis pub/sub channel of *session_id*'s down messages."""
    return _channel_format() % session_id.encode()


def session_key(session_id: str) -> str:
    """The Redis key of *session_id*'s state."""
    return contract()["kit_session_key"].replace("{id}", session_id)


def run_id(clients: int, now: float | None = None) -> str:
    """A run id: the start time (local) and the total number of clients."""
    fmt = contract()["kit_run_id_format"].replace("{clients}", str(int(clients)))
    return time.strftime(fmt, time.localtime(now))


def sysctls(*, netns_only: bool = False) -> dict[str, str]:
    """Kernel settings the kit wants (name -> value as sysctl takes it); *netns_only*: only those a
    network namespace has of its own (what the lab sets in each of its hosts)."""
    return {s["name"]: str(s["value"]) for s in contract()["kit_sysctl"] if s["netns"] or not netns_only}


def secret_files() -> tuple[str, ...]:
    """Names of the secret files preflight generates in the controller's ``.secrets/``."""
    return tuple(contract()["kit_secrets"])
