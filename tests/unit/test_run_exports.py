"""kit.run exposes its public names; fabfile.py and bench/ import them from there, never from a private module."""

from __future__ import annotations

import re
from pathlib import Path

import kit.run

REPO = Path(__file__).resolve().parents[2]


def test_kit_run_exports_what_the_fabfile_and_bench_use():
    assert set(kit.run.__all__) >= {
        "RunOptions",
        "RunError",
        "PlanError",
        "Interrupted",
        "execute",
        "execute_capacity",
        "parse_threshold",
        "live_view",
        "deploy",
        "status",
        "logs",
        "analyze",
    }
    for name in kit.run.__all__:
        assert hasattr(kit.run, name), name


def test_fabfile_and_bench_import_no_private_kit_run_module():
    private = re.compile(r"^\s*(from|import)\s+kit\.run\._", re.M)
    for p in [REPO / "fabfile.py", *sorted((REPO / "bench").glob("*.py"))]:
        assert not private.search(p.read_text()), p.name


KIT = REPO / "kit"
_PRIVATE_IMPORT = re.compile(r"^\s*(?:from|import)\s+kit\.(?P<pkg>[a-z]+)\.(?P<mod>_[a-z_]+)", re.M)
_PRIVATE_FROM = re.compile(r"^\s*from\s+kit\.(?P<pkg>[a-z]+)\s+import\s+(?P<mod>_[a-z_]+)", re.M)


def _package_of(path: Path) -> str:
    rel = path.relative_to(KIT).parts
    return rel[0] if len(rel) > 1 else ""


def test_no_kit_module_imports_another_packages_private_module():
    # what crosses a package is re-exported by its __init__ (kit.run, kit.client, kit.sim, kit.wsproxy, kit.lab)
    crossing = []
    for p in sorted(KIT.rglob("*.py")):
        for rx in (_PRIVATE_IMPORT, _PRIVATE_FROM):
            for m in rx.finditer(p.read_text()):
                if (KIT / m["pkg"]).is_dir() and m["pkg"] != _package_of(p):
                    crossing.append(f"{p.relative_to(REPO)}: kit.{m['pkg']}.{m['mod']}")
    assert crossing == []


def test_kit_client_exports_what_the_controller_uses():
    import kit.client

    assert set(kit.client.__all__) >= {
        "STATUS_COUNTERS",
        "STATUS_HISTOGRAMS",
        "format_report",
        "analyze",
        "merge_outputs",
        "check_option",
        "load_workload",
        "DEFAULT_MAX_CONNECTIONS",
    }
    for name in kit.client.__all__:
        assert hasattr(kit.client, name), name
    assert {"build_label", "find_run"} <= set(kit.run.__all__)


def test_the_repository_root_is_derived_once_in_kit_paths():
    import kit.paths

    assert (kit.paths.REPO / "pyproject.toml").is_file() and kit.paths.PLAYBOOKS.is_dir()
    assert kit.paths.role_defaults("haproxy").is_file() and kit.paths.role_defaults("kit_service").is_file()
    derived = re.compile(r"parents\[\d\]|^\s*REPO\s*=", re.M)
    again = [
        str(p.relative_to(REPO))
        for p in sorted(KIT.rglob("*.py"))
        if p.name != "paths.py" and derived.search(p.read_text())
    ]
    assert again == [], "import it from kit.paths"
