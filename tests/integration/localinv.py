"""A one-host inventory that points ``fab run`` at devkit.localstack's processes (no SSH, no HAProxy).

``ansible_connection: local``; the "haproxy" ports point straight at the simulator and the wsproxy,
so kit.run drives the real load client against the real services on loopback.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from devkit.localstack import Stack, free_port, local_stack

REPO = Path(__file__).resolve().parents[2]
GROUPS = ("redis", "haproxy", "wsproxy", "sim", "generators")


def write_local_inventory(path: Path, stack: Stack, kit_root: Path, **extra: Any) -> Path:
    """Write the inventory to *path* (host ``local`` in every group, *extra* host variables); return it."""
    venv = REPO / ".venv"
    host = {
        "ansible_connection": "local",
        "kit_root": str(kit_root),
        "kit_venv_dir": str(venv),
        "ansible_python_interpreter": str(venv / "bin" / "python"),
        "haproxy_http_port": stack.sim_port,
        "haproxy_ws_port": stack.wsproxy_port,
        "haproxy_stats_port": free_port(),
        "redis_port": stack.redis.port,
        "sim_port": stack.sim_port,
        "wsproxy_base_port": stack.wsproxy_port,
        **extra,
    }
    path.write_text(
        yaml.safe_dump({"all": {"hosts": {"local": host}, "children": {g: {"hosts": {"local": None}} for g in GROUPS}}})
    )
    return path


@contextlib.contextmanager
def local_fab_inventory(tmp: Path, **extra: Any) -> Iterator[Path]:
    """devkit.localstack's processes (tokens 5 ms apart) under *tmp*, and the inventory that points ``fab run``
    at them (:func:`write_local_inventory`), for as long as the block lasts."""
    with local_stack(tmp / "stack", sim_env={"TOKEN_DELAY_MS": 5}) as stack:
        yield write_local_inventory(tmp / "inventory.yml", stack, tmp / "root", **extra)
