"""``python -m kit.wsproxy``: read its Settings from the environment and serve.

Exit codes: 0 after SIGTERM/SIGINT (sockets closed), 2 on a configuration
error (one line on stderr, no traceback), 1 when the address cannot be bound.
"""

from __future__ import annotations

import asyncio
import logging
import sys

from kit.config import run_service

from ._settings import Settings

log = logging.getLogger("kit.wsproxy")


def _loop_factory():
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency, but optional here
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def _settings() -> Settings:
    from ._redis import parse_redis_url

    settings = Settings.from_env()
    parse_redis_url(settings.redis_url)
    return settings


def _serve(settings: Settings, level: str) -> None:
    from ._server import serve

    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(serve(settings))


def main() -> int:
    return run_service("kit.wsproxy", _settings, _serve, port_env="PORT")


if __name__ == "__main__":
    sys.exit(main())
