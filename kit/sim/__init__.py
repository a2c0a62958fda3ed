"""The backend simulator: a Quart app that creates sessions and streams LLM-like tokens via Redis.

``create_app(settings)`` builds an app; ``kit.sim:app`` is the app for the
environment (``SimSettings.from_env()``), built on first access so that importing
this package does nothing.  ``python -m kit.sim`` serves it (see ``__main__``).

Module owners: ``_app`` (the views, Redis session records and pool), ``_routes`` (every route once, for
Quart and for the direct path), ``_publisher``
(the per-process scheduler that PUBLISHes every token due within a PUBLISH_TICK_MS
tick in one write), ``_schedule`` (pure timing and message encoding), ``_body``
(request validation), ``_asgi`` (Quart's per-request ASGI path, leaner; the session routes
without Quart's request context; the body deadline), ``_limits`` (what a worker holds for a client:
head and body deadlines, queries in flight), ``_closes`` (a close heard by every worker cancels the
session's queries), ``_workers`` (every worker's counters summed), ``_serve`` (Uvicorn workers under the kit's
supervisor: dead workers respawned, a crash loop stopped, request heads bounded).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._app import SimState as SimState
from ._app import create_app as create_app
from ._body import BodyError as BodyError
from ._body import CreateRequest as CreateRequest
from ._body import RunRequest as RunRequest
from ._body import parse_create as parse_create
from ._body import parse_run as parse_run
from ._limits import SimLimits as SimLimits
from ._publisher import Publisher as Publisher
from ._schedule import due_offsets as due_offsets
from ._schedule import split_tokens as split_tokens

if TYPE_CHECKING:
    from quart import Quart

    app: Quart

__all__ = [
    "create_app",
    "SimState",
    "SimLimits",
    "Publisher",
    "BodyError",
    "CreateRequest",
    "RunRequest",
    "parse_create",
    "parse_run",
    "due_offsets",
    "split_tokens",
    "app",
    "app_from_env",
]


def app_from_env() -> Quart:
    """The app for this process's environment (``SimSettings.from_env()``), built once.

    Also a factory target for servers that evaluate the target in the module's
    namespace (Hypercorn: ``kit.sim:app_from_env()``).  Raises ConfigError.
    """
    application = globals().get("app")
    if application is None:
        from kit.config import SimSettings

        application = create_app(SimSettings.from_env(), tune_gc=True)
        globals()["app"] = application
    return application


def __getattr__(name: str):
    # ``kit.sim:app`` for ASGI servers: built from the environment on first access, then cached
    if name == "app":
        return app_from_env()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
