"""``python -m kit.sim``: read SimSettings from the environment and serve the simulator.

Honours FASTAPI_HOST, FASTAPI_PORT, FASTAPI_WORKERS (aliases SIM_HOST/SIM_PORT/
SIM_WORKERS) and every other SimSettings variable; LOG_LEVEL sets the log level.

Exit codes: 0 after SIGTERM/SIGINT (workers stopped, lifespan shutdown run),
2 on a configuration error (one line ``kit.sim: <message>`` on stderr, no
traceback), 1 when the server cannot start (e.g. the port is taken) or a worker
dies within seconds of its start (a crash loop).

Server: Uvicorn (uvloop, httptools) in FASTAPI_WORKERS worker processes under the kit's own
supervisor; why, and what the supervisor does, is in ``kit/sim/_serve.py``.
"""

from __future__ import annotations

import logging
import sys

from kit._resp import parse_redis_url
from kit.config import ConfigError, SimSettings, run_service

from ._limits import SimLimits

log = logging.getLogger("kit.sim")


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

    serve(settings, log_level=level)


def main() -> int:
    return run_service("kit.sim", _settings, _serve, port_env="FASTAPI_PORT")


if __name__ == "__main__":
    sys.exit(main())
