"""The lab tests' stand-in inventory: the lab's generator hosts (SSH into their namespaces) and one
``controller`` host (``ansible_connection: local``) standing for every service group, its ports pointing
at devkit.localstack's processes (or HAProxy in front of them) on the lab bridge's address."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from devkit.localstack import free_port

REPO = Path(__file__).resolve().parents[2]
VENV = REPO / ".venv"


def standin_inventory(
    path: Path,
    tmp: Path,
    lab: Mapping[str, Any],
    generators: Mapping[str, Mapping[str, Any]],
    addr: str,
    ports: Mapping[str, int],
    *,
    venvs: Mapping[str, Path] | None = None,
    **controller: Any,
) -> Path:
    """Write the inventory to *path* and return it.  *lab*: the lab inventory's ``all``; *generators*: the
    generator hosts' variables (each gets a kit_root under *tmp* and the venv of *venvs*, else the repo's);
    *ports*: ``http``, ``ws`` (the balancer's), ``redis``, ``sim``, ``wsproxy``; *controller*: more of its
    variables."""
    hosts: dict[str, Any] = {
        name: {**hv, "kit_root": str(tmp / "roots" / name), "kit_venv_dir": str((venvs or {}).get(name, VENV))}
        for name, hv in generators.items()
    }
    hosts["controller"] = {
        "ansible_connection": "local",
        "ansible_host": addr,
        "kit_root": str(tmp / "roots" / "ctl"),
        "kit_venv_dir": str(VENV),
        "ansible_python_interpreter": str(VENV / "bin" / "python"),
        "haproxy_http_port": ports["http"],
        "haproxy_ws_port": ports["ws"],
        "haproxy_stats_port": free_port(addr),
        "redis_port": ports["redis"],
        "sim_port": ports["sim"],
        "wsproxy_base_port": ports["wsproxy"],
        **controller,
    }
    ctl = {"hosts": {"controller": None}}
    groups = {g: ctl for g in ("redis", "haproxy", "wsproxy", "sim")}
    inv = {
        "all": {
            "vars": lab["vars"],
            "hosts": hosts,
            "children": {**groups, "generators": {"hosts": dict.fromkeys(generators)}},
        }
    }
    path.write_text(yaml.safe_dump(inv))
    return path
