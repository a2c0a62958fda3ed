"""kit.run exposes its public names; fabfile.py and bench/ import them from there, never from a private module."""

from __future__ import annotations

import re
from pathlib import Path

import kit.run

REPO = Path(__file__).resolve().parents[2]


def test_kit_run_exports_what_the_fabfile_and_bench_use():
    assert set(kit.run.__all__) >= {"RunOptions", "RunError", "PlanError", "Interrupted", "execute", "execute_capacity",
                                    "parse_threshold", "live_view", "deploy", "status", "logs", "analyze"}
    for name in kit.run.__all__:
        assert hasattr(kit.run, name), name


def test_fabfile_and_bench_import_no_private_kit_run_module():
    private = re.compile(r"^\s*(from|import)\s+kit\.run\._", re.M)
    for p in [REPO / "fabfile.py", *sorted((REPO / "bench").glob("*.py"))]:
        assert not private.search(p.read_text()), p.name
