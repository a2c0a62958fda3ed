"""Packing a run: the inventory with secrets stripped, and ``results/<run-id>.tar.gz``."""

from __future__ import annotations

import re
import tarfile
from pathlib import Path
from typing import Any

import yaml

from kit.inventory import Inventory

__all__ = ["strip_secrets", "stripped_inventory", "pack_run", "SECRET_KEY"]

#: variable names whose values are never written into a run's records: the name's last word (after ``_``
#: or ``-``) is a secret's (``jwt_secret``, ``redis_admin_password``, ``auth_token``, ``api_key``, and the
#: same with ``_hash``).  A word inside the name is not enough: ``sim_token_delay_ms`` is a setting and
#: ``kit_jwt_secret_file`` a path, both worth keeping in the record.
SECRET_KEY = re.compile(
    r"(?:^|[_-])(?:pass|passwd|password|passphrase|secret|token|credentials?|api_?key|"
    r"private_key|access_key|secret_key)(?:[_-]hash)?$",
    re.I,
)


def strip_secrets(value: Any, key: str = "") -> Any:
    if key and SECRET_KEY.search(key) and not isinstance(value, (dict, list)):
        return "<stripped>"
    if isinstance(value, dict):
        return {k: strip_secrets(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [strip_secrets(v, key) for v in value]
    return value


def stripped_inventory(inv: Inventory) -> str:
    """The inventory as Ansible resolved it (groups, host variables), secrets replaced by ``<stripped>``."""
    data = {
        "source": str(inv.path),
        "groups": {g: list(h) for g, h in inv.groups.items()},
        "hostvars": {n: strip_secrets(dict(h.vars)) for n, h in inv.hosts.items()},
    }
    return "# Inventory used by this run, as ansible-inventory resolved it; secret values stripped.\n" + yaml.safe_dump(
        data, sort_keys=True, default_flow_style=False
    )


def pack_run(run_dir: Path) -> Path:
    """Write ``<run_dir>.tar.gz`` holding the run folder (top-level name = the run id)."""
    tarball = run_dir.with_name(run_dir.name + ".tar.gz")
    tmp = tarball.with_name(tarball.name + ".tmp")
    with tarfile.open(tmp, "w:gz") as tf:
        tf.add(run_dir, arcname=run_dir.name)
    tmp.replace(tarball)
    return tarball
