"""``python -m kit.wsproxy``: read WsproxySettings from the environment and serve.

Exit codes: 0 after SIGTERM/SIGINT (sockets closed), 2 on a configuration
error (one line on stderr, no traceback), 1 when the address cannot be bound.
"""

from __future__ import annotations

import asyncio
import logging
import sys

from kit.config import ConfigError, WsproxySettings, configure_logging

log = logging.getLogger("kit.wsproxy")


def _loop_factory():
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency, but optional here
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def main() -> int:
    from ._redis import parse_redis_url
    from ._server import serve

    try:
        configure_logging()
        settings = WsproxySettings.from_env()
        parse_redis_url(settings.redis_url)
    except ConfigError as exc:
        print(f"kit.wsproxy: {exc}", file=sys.stderr)
        return 2
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(serve(settings))
    except OSError as exc:
        print(f"kit.wsproxy: cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
