"""``python -m kit.sim``: read SimSettings from the environment and serve the simulator.

Honours FASTAPI_HOST, FASTAPI_PORT, FASTAPI_WORKERS (aliases SIM_HOST/SIM_PORT/
SIM_WORKERS) and every other SimSettings variable; LOG_LEVEL sets the log level.

Exit codes: 0 after SIGTERM/SIGINT (workers stopped, lifespan shutdown run),
2 on a configuration error (one line ``kit.sim: <message>`` on stderr, no
traceback), 1 when the server cannot start (e.g. the port is taken).

Server choice (measured by ``bench/asgi_servers.py``): **Granian**, ASGI interface,
uvloop.  POST /session/create (one atomic Redis write + a JWT), 1 worker, wrk
-c64 -t2 -d5s, all candidates interleaved in one run on this 2-core machine
while other jobs ran (load average 5-7, so absolute req/s swing 2x run to run):

    .venv/bin/python bench/asgi_servers.py --rounds 3

    server                   best req/s median req/s p99 ms (best) req/CPU-s (median)
    granian loop=uvloop            2527         1907         120.0               2717
    granian loop=asyncio           2620         1833          67.8               2364
    granian uvloop task=rust       2092         2033         265.0               2421
    hypercorn -k uvloop            2236          942          71.5               2139
    hypercorn -k asyncio           1273          949         129.0               1825

Granian beat Hypercorn in all six runs made (best granian / best hypercorn
1.17x-2.2x in req/s; at the quietest, 1 round of 3 s: granian+uvloop 3623 req/s,
hypercorn+uvloop 2589, 1.4x), and served 1.27x the requests per CPU-second, the
noise-robust figure.  Between Granian's loops uvloop had the higher median req/s
in 5 of 6 runs (the best round in 4 of 6) and is the most CPU-efficient, so it is the default (``_serve.GRANIAN_LOOP``).  Most of a
request's ~370 us of CPU is Quart itself, which is why the gap is not larger.
"""

from __future__ import annotations

import logging
import socket
import sys

from kit._resp import parse_redis_url
from kit.config import ConfigError, SimSettings, run_service

from ._limits import SimLimits

log = logging.getLogger("kit.sim")


def _check_bind(host: str, port: int) -> None:
    """Fail early with a clear message if the address is taken (Granian would raise a bare RuntimeError)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))


def _settings() -> SimSettings:
    settings = SimSettings.from_env()
    parse_redis_url(settings.redis_url)  # ConfigError, one line: the request pool and publisher need redis://
    SimLimits.from_env()  # every worker reads them: a bad value is one line here, not a failing worker
    _check_default_query(settings)
    return settings


def _check_default_query(settings: SimSettings) -> None:
    """A /run that asks nothing gets the deployment's workload: it must end within kit.wire.MAX_QUERY_MS."""
    from kit.wire import query_duration_problem

    from ._schedule import split_tokens

    problem = query_duration_problem(
        len(split_tokens(settings.llm_response_text)),
        settings.token_delay_ms,
        settings.ttft_ms,
        settings.token_jitter_ms,
    )
    if problem is not None:
        raise ConfigError(
            f"the deployed workload (LLM_RESPONSE_TEXT's words, TOKEN_DELAY_MS, TTFT_MS, "
            f"TOKEN_JITTER_MS) is too long: {problem}"
        )


def _serve(settings: SimSettings, level: str) -> None:
    from ._serve import serve

    _check_bind(settings.host, settings.port)
    try:
        serve(settings, log_level=level)
    except RuntimeError as exc:
        if "os error" not in str(exc):  # Granian reports socket failures as RuntimeError("... (os error N)")
            raise
        raise OSError(str(exc)) from None


def main() -> int:
    return run_service("kit.sim", _settings, _serve, port_env="FASTAPI_PORT")


if __name__ == "__main__":
    sys.exit(main())
