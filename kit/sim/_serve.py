"""Serve ``kit.sim:app`` with the ASGI server chosen by ``bench/asgi_servers.py``: Granian.

Granian runs a supervising main process and ``FASTAPI_WORKERS`` worker processes;
each worker imports ``kit.sim:app`` (built from the same environment), runs the
ASGI lifespan (Quart's before_serving/after_serving) around serving, and SIGTERM
or SIGINT to the main process stops the workers (lifespan shutdown included)
before it exits 0.  The measurements behind the choice are in ``kit/sim/__main__.py``.

Workers that die: a worker that exits unasked (a crash, ``kill -9``, the OOM killer) is started again at
once (Granian's ``respawn_failed_workers``); the other workers keep serving and publishing their queries
throughout, and the dead worker's queries in flight are lost (its clients count them lost).  A worker that
dies again within 5.5 s of being started is a crash loop: Granian then stops the whole simulator (exit 1),
and the service manager's restart takes over.

Request heads (:class:`._limits.SimLimits`): Granian (hyper) closes a connection that has not sent a whole
head within ``request_header_timeout_secs`` of its accept or of its previous answer, and answers 431 to a
head over ``max_head_bytes`` (its read buffer); bodies are bounded in :mod:`._asgi`.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import tempfile
from typing import Any

from kit.config import SimSettings

from ._limits import SimLimits

__all__ = ["serve", "GRANIAN_LOOP"]

log = logging.getLogger(__name__)

#: Granian's event loop option for the workers (bench/asgi_servers.py compares them)
GRANIAN_LOOP = "uvloop"
APP_TARGET = "kit.sim:app"


def _log_config(level: str) -> dict:
    from granian.log import LOGGING_CONFIG

    cfg: dict[str, Any] = copy.deepcopy(LOGGING_CONFIG)
    cfg["formatters"]["kit"] = {
        "()": "logging.Formatter",
        "fmt": "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
    }
    cfg["handlers"]["kit"] = {"formatter": "kit", "class": "logging.StreamHandler", "stream": "ext://sys.stderr"}
    cfg["loggers"]["kit"] = {"handlers": ["kit"], "level": level, "propagate": False}
    return cfg


def serve(
    settings: SimSettings, *, log_level: str = "INFO", loop: str = GRANIAN_LOOP, limits: SimLimits | None = None
) -> None:
    """Run Granian in this process until SIGTERM/SIGINT; blocks.  Raises OSError if it cannot bind.
    *limits* default to ``SimLimits.from_env()`` (the workers read the same environment)."""
    from granian.constants import HTTPModes, Interfaces, Loops
    from granian.http import HTTP1Settings
    from granian.log import LogLevels
    from granian.server import Server

    # the workers' counters meet here for the summed /stats/all and /metrics (kit/sim/_workers.py)
    from ._workers import STATS_DIR_ENV

    limits = SimLimits.from_env() if limits is None else limits
    stats_dir = tempfile.mkdtemp(prefix="kit-sim-stats-")
    os.environ[STATS_DIR_ENV] = stats_dir
    server = Server(
        APP_TARGET,
        address=settings.host,
        port=settings.port,
        interface=Interfaces.ASGI,  # ASGI with lifespan: before_serving/after_serving run
        workers=settings.workers,
        loop=Loops(loop),
        http=HTTPModes.http1,
        http1_settings=HTTP1Settings(
            header_read_timeout=int(limits.request_header_timeout_secs * 1000), max_buffer_size=limits.max_head_bytes
        ),
        websockets=False,
        log_level=LogLevels(log_level.lower()),
        log_dictconfig=_log_config(log_level.upper()),
        log_access=False,
        workers_kill_timeout=10,
        respawn_failed_workers=True,  # one dead worker is replaced; the others never stop
    )
    try:
        server.serve()
    finally:
        shutil.rmtree(stats_dir, ignore_errors=True)
