"""``python -m kit.sim``: read SimSettings from the environment and serve the simulator.

Honours FASTAPI_HOST, FASTAPI_PORT, FASTAPI_WORKERS (aliases SIM_HOST/SIM_PORT/
SIM_WORKERS) and every other SimSettings variable; LOG_LEVEL sets the log level.

Exit codes: 0 after SIGTERM/SIGINT (workers stopped, lifespan shutdown run),
2 on a configuration error (one line ``kit.sim: <message>`` on stderr, no
traceback), 1 when the server cannot start (e.g. the port is taken).

Server choice (measured by ``bench/asgi_servers.py``): Granian (ASGI interface,
uvloop) serves POST /session/create (one Redis write each) about 1.6-2x faster
than Hypercorn on this 2-core machine, 1 worker each, wrk -c64 -t2 -d5s, run
side by side:

    .venv/bin/python bench/asgi_servers.py

    server                 req/s    p99 ms
    granian loop=uvloop     3889      23.5
    granian loop=asyncio    3296      26.9
    hypercorn uvloop        2035      38.8

(see bench/asgi_servers.py's docstring for the full table and conditions)
"""

from __future__ import annotations

import logging
import os
import socket
import sys

from kit.config import ConfigError, SimSettings

log = logging.getLogger("kit.sim")


def _check_redis_url(url: str) -> None:
    from redis.asyncio.connection import parse_url

    try:
        parse_url(url)
    except ValueError as exc:
        raise ConfigError(f"REDIS_URL is not a valid Redis URL ({exc}): use redis://[:password@]host:port/db") \
            from None


def _check_bind(host: str, port: int) -> None:
    """Fail early with a clear message if the address is taken (Granian would raise a bare RuntimeError)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))


def main() -> int:
    level = os.environ.get("LOG_LEVEL", "INFO").upper()
    if level not in ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"):
        print(f"kit.sim: LOG_LEVEL={level!r} is not a log level: use DEBUG, INFO, WARNING or ERROR",
              file=sys.stderr)
        return 2
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = SimSettings.from_env()
        _check_redis_url(settings.redis_url)
    except ConfigError as exc:
        print(f"kit.sim: {exc}", file=sys.stderr)
        return 2
    from ._serve import serve

    try:
        _check_bind(settings.host, settings.port)
        serve(settings, log_level=level)
    except OSError as exc:
        print(f"kit.sim: cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}: "
              "free the port or set FASTAPI_PORT", file=sys.stderr)
        return 1
    except RuntimeError as exc:
        if "os error" not in str(exc):  # Granian reports socket failures as RuntimeError("... (os error N)")
            raise
        print(f"kit.sim: cannot listen on {settings.host}:{settings.port}: {exc}: free the port or set "
              "FASTAPI_PORT", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
