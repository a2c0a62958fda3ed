"""The garbage collector of the kit's long-lived processes (client, simulator, wsproxy): latency first.

A process holding thousands of sessions keeps hundreds of thousands of container objects alive, and
CPython's full (generation-2) collection walks all of them while the event loop stands still.  Measured
with ``bench/gc_pauses.py`` (one client process, 2,500 sessions, Python's defaults): three full
collections of up to 133 ms in one run, and every token in flight meanwhile counts the pause as delivery
latency.  Almost nothing a session allocates per token is cyclic (reference counting frees it), so the
kit collects rarely:

- ``gc.freeze()`` once start-up is done: what imports and set-up created is never scanned again;
- generation 0 every ``GEN0`` net container allocations instead of 700, so young collections are rare;
- a full collection only after ``GEN1 * GEN2`` young ones; a service running for days still gets them.

``KIT_GC=default`` keeps Python's own settings (to compare, or if a process's memory grows).
"""

from __future__ import annotations

import gc
import os

#: ``KIT_GC=default`` keeps Python's collector settings; anything else (or unset) applies the kit's.
ENV = "KIT_GC"
GEN0 = 1_000
GEN1 = 10
GEN2 = 1_000


def tune(env: dict[str, str] | os._Environ[str] = os.environ) -> dict[str, object]:
    """Freeze what start-up created and raise the thresholds, unless ``KIT_GC=default``; returns
    :func:`describe` (what the process runs with, recorded in run metadata)."""
    if env.get(ENV, "").strip().lower() != "default":
        gc.collect()
        gc.freeze()
        gc.set_threshold(GEN0, GEN1, GEN2)
    return describe()


def describe() -> dict[str, object]:
    return {"threshold": list(gc.get_threshold()), "frozen": gc.get_freeze_count()}
