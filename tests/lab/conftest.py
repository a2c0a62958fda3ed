"""Lab fixtures: network-namespace hosts built by kit.lab with a test-only prefix and subnet.

Labs here use the prefix ``lkt``/``lku`` and subnets 10.213.7.0/24 / 10.213.8.0/24 so they never
touch a user's lab (``lk``, 10.213.0.0/24); each fixture removes its lab in ``finally``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kit.lab import LabConfig, lab_down, lab_up


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/lab/" in str(item.fspath):
            item.add_marker(pytest.mark.lab)


@pytest.fixture(scope="session")
def need_root():
    if os.geteuid() != 0:
        pytest.skip("lab tests need root (network namespaces)")


def lab_config(tmp: Path, prefix: str, subnet: str) -> LabConfig:
    return LabConfig(root=tmp / "lab", prefix=prefix, subnet=subnet, inventory_path=tmp / "inventory" / "lab.yml")


@pytest.fixture
def make_lab_config():
    """``make_lab_config(tmp, prefix, subnet)`` -> a LabConfig under *tmp*."""
    return lab_config


@pytest.fixture(scope="module")
def lab6(need_root, tmp_path_factory):
    """A 6-host lab with the default layout: (config, state)."""
    cfg = lab_config(tmp_path_factory.mktemp("lab6"), "lkt", "10.213.7.0/24")
    try:
        state = lab_up(6, cfg=cfg)
        yield cfg, state
    finally:
        lab_down(cfg)
