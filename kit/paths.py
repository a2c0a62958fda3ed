"""The repository's folders, derived once from where this package sits (``kit/`` is at the root).

Every module of the kit that reaches outside the package (the playbooks and their role defaults,
the inventories, the controller's secrets, results, the lab's state, the wheelhouse) takes the
path from here.  They exist in the controller's checkout only: on a host the kit is an installed
wheel and nothing there reads them.  The package's own data files (``kit/contract.yml``,
``kit/_assets``) are found beside the module that reads them, so they travel in the wheel.
Nothing happens on import (no file is read or made).
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "REPO",
    "PLAYBOOKS",
    "ROLES",
    "INVENTORIES",
    "TEMPLATES",
    "RESULTS",
    "SECRETS",
    "LAB",
    "WHEELHOUSE",
    "role_defaults",
]

#: the checkout's root (pyproject.toml, fabfile.py, kit/)
REPO = Path(__file__).resolve().parents[1]
#: ``ansible-playbook``'s playbooks (and ``--playbook-dir`` for ``ansible-inventory``)
PLAYBOOKS = REPO / "playbooks"
ROLES = PLAYBOOKS / "roles"
INVENTORIES = REPO / "inventory"
#: the services' configuration templates (the roles reach them through ``playbook_dir``)
TEMPLATES = REPO / "templates"
#: one folder and one tarball per run
RESULTS = REPO / "results"
#: the controller's secrets (JWT, Redis ACL passwords, TLS) unless the inventory sets ``kit_secrets_dir``
SECRETS = REPO / ".secrets"
#: the network-namespace lab's state and keys
LAB = REPO / ".lab"
#: what ``python -m kit.wheelhouse build`` writes for hosts
WHEELHOUSE = REPO / ".wheelhouse"


def role_defaults(role: str) -> Path:
    """The ``defaults/main.yml`` of the role *role* (where a role's every knob is)."""
    return ROLES / role / "defaults" / "main.yml"
