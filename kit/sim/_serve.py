"""Serve ``kit.sim:app`` with the ASGI server chosen by ``bench/asgi_servers.py``: Granian.

Granian runs a supervising main process and ``FASTAPI_WORKERS`` worker processes;
each worker imports ``kit.sim:app`` (built from the same environment), runs the
ASGI lifespan (Quart's before_serving/after_serving) around serving, and SIGTERM
or SIGINT to the main process stops the workers (lifespan shutdown included)
before it exits 0.  The measurements behind the choice are in ``kit/sim/__main__.py``.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import tempfile

from kit.config import SimSettings

__all__ = ["serve", "GRANIAN_LOOP"]

log = logging.getLogger(__name__)

#: Granian's event loop option for the workers (bench/asgi_servers.py compares them)
GRANIAN_LOOP = "uvloop"
APP_TARGET = "kit.sim:app"


def _log_config(level: str) -> dict:
    from granian.log import LOGGING_CONFIG

    cfg = copy.deepcopy(LOGGING_CONFIG)
    cfg["formatters"]["kit"] = {"()": "logging.Formatter",
                                "fmt": "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"}
    cfg["handlers"]["kit"] = {"formatter": "kit", "class": "logging.StreamHandler", "stream": "ext://sys.stderr"}
    cfg["loggers"]["kit"] = {"handlers": ["kit"], "level": level, "propagate": False}
    return cfg


def serve(settings: SimSettings, *, log_level: str = "INFO", loop: str = GRANIAN_LOOP) -> None:
    """Run Granian in this process until SIGTERM/SIGINT; blocks.  Raises OSError if it cannot bind."""
    from granian.constants import HTTPModes, Interfaces, Loops
    from granian.log import LogLevels
    from granian.server import Server

    # the workers' counters meet here for the summed /stats/all and /metrics (kit/sim/_workers.py)
    from ._workers import STATS_DIR_ENV
    stats_dir = tempfile.mkdtemp(prefix="kit-sim-stats-")
    os.environ[STATS_DIR_ENV] = stats_dir
    server = Server(
        APP_TARGET,
        address=settings.host,
        port=settings.port,
        interface=Interfaces.ASGI,          # ASGI with lifespan: before_serving/after_serving run
        workers=settings.workers,
        loop=Loops(loop),
        http=HTTPModes.http1,
        websockets=False,
        log_level=LogLevels(log_level.lower()),
        log_dictconfig=_log_config(log_level.upper()),
        log_access=False,
        workers_kill_timeout=10,
    )
    try:
        server.serve()
    finally:
        shutil.rmtree(stats_dir, ignore_errors=True)
