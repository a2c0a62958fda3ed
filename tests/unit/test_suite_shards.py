"""devkit/suite.py's shards cover the whole suite: every test file runs in exactly one of them."""

from __future__ import annotations

from pathlib import Path

from devkit.suite import SHARDS

REPO = Path(__file__).resolve().parents[2]


def _files(selection: list[str]) -> set[Path]:
    """The test files pytest collects for *selection* (paths and --ignore=PATH, as the shards write them)."""
    ignored = {(REPO / a.split("=", 1)[1]).resolve() for a in selection if a.startswith("--ignore=")}
    out: set[Path] = set()
    for arg in selection:
        if arg.startswith("-"):
            continue
        p = REPO / arg
        for f in [p] if p.is_file() else p.rglob("test_*.py"):
            if not any(f.resolve() == i or i in f.resolve().parents for i in ignored):
                out.add(f.resolve())
    return out


def test_every_test_file_is_in_exactly_one_shard():
    every = {f.resolve() for f in (REPO / "tests").rglob("test_*.py")}
    seen: dict[Path, list[str]] = {}
    for name, selection in SHARDS.items():
        for f in _files(selection):
            seen.setdefault(f, []).append(name)
    assert sorted(str(f) for f in every - set(seen)) == [], "in no shard"
    assert {str(f): s for f, s in seen.items() if len(s) > 1} == {}, "in two shards"
