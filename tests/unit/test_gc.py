"""kit._gc: the kit's collector settings, and KIT_GC=default keeping Python's."""

from __future__ import annotations

import gc

import pytest

from kit import _gc


@pytest.fixture
def restore_gc():
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


def test_tune_freezes_start_up_and_makes_full_collections_rare(restore_gc):
    gc.set_threshold(700, 10, 10)
    made = [[i] for i in range(1000)]  # start-up objects: tracked containers
    got = _gc.tune({})
    assert gc.get_threshold() == (_gc.GEN0, _gc.GEN1, _gc.GEN2)
    assert _gc.GEN1 * _gc.GEN2 >= 10 * 100  # a full collection at least 10x rarer than Python's default
    assert got == {"threshold": [_gc.GEN0, _gc.GEN1, _gc.GEN2], "frozen": gc.get_freeze_count()}
    assert got["frozen"] >= len(made)


def test_kit_gc_default_keeps_pythons_settings(restore_gc):
    gc.set_threshold(700, 10, 10)
    got = _gc.tune({_gc.ENV: " Default "})
    assert gc.get_threshold() == (700, 10, 10)
    assert got["threshold"] == [700, 10, 10] and gc.get_freeze_count() == got["frozen"]
