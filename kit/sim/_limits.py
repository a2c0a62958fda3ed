"""What one simulator worker holds for a client, in time and in memory: :class:`SimLimits`.

Every byte a client sends before its request is accepted is bounded, and so is what an accepted
``/run`` costs:

* the request head: the server (:mod:`kit.sim._serve`) closes a connection that has not sent a whole head within
  ``SIM_REQUEST_HEADER_TIMEOUT_SECS`` of its accept or of its previous answer (so an idle keep-alive
  connection too), and answers 431 to a head over ``SIM_MAX_HEAD_BYTES``;
* the request body: a body not complete ``SIM_REQUEST_BODY_TIMEOUT_SECS`` after its head is answered
  408 and the connection closed (:class:`kit.sim._asgi.BodyDeadlines`, both the direct and the Quart
  paths); bodies over 64 KiB are 413 as before;
* queries in flight on one worker: at most ``SIM_MAX_QUERIES_IN_FLIGHT`` in all, at most
  ``SIM_MAX_SESSION_QUERIES_IN_FLIGHT`` of one session, and at most ``SIM_MAX_TOKENS_IN_FLIGHT``
  tokens scheduled (a query holds its due times until its end, 16 bytes a token); beyond any of them
  ``/run`` is answered 429 ``too_many_queries`` with a detail naming the bound.  The bounds are per
  worker: a session whose requests are spread over W workers may hold W times the per-session bound.
* a query's length: :data:`kit.wire.MAX_QUERY_MS` (the wire contract's, 422 beyond it).

The fields are settings like :class:`kit.config.SimSettings`'s (same ``setting`` helper, same
environment conventions); ``python -m kit.sim`` reads them once at start (a bad value is one line and
exit 2) and every worker reads the same environment.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

from kit.config import _from_env, setting

__all__ = ["SimLimits"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class SimLimits:
    """Bounds of one simulator worker (see the module docstring)."""

    #: seconds a connection has to send a whole request head (from its accept or its previous answer)
    request_header_timeout_secs: float = setting(
        10.0, env=("SIM_REQUEST_HEADER_TIMEOUT_SECS",), minimum=1.0, maximum=3600.0
    )
    #: seconds a request's body has to arrive whole after its head; then 408 and the connection closed
    request_body_timeout_secs: float = setting(
        10.0, env=("SIM_REQUEST_BODY_TIMEOUT_SECS",), minimum=0.1, maximum=3600.0
    )
    #: the largest request head (request line and headers) read; answered 431 beyond it
    max_head_bytes: int = setting(65536, env=("SIM_MAX_HEAD_BYTES",), minimum=8192, maximum=16 * 1024 * 1024)
    #: queries whose tokens are still being published, per worker
    max_queries_in_flight: int = setting(20000, env=("SIM_MAX_QUERIES_IN_FLIGHT",), minimum=1, maximum=10_000_000)
    #: of which one session's, per worker (a client runs one at a time)
    max_session_queries_in_flight: int = setting(
        8, env=("SIM_MAX_SESSION_QUERIES_IN_FLIGHT",), minimum=1, maximum=100_000
    )
    #: tokens of the queries in flight, per worker (their due times are held until each query ends)
    max_tokens_in_flight: int = setting(5_000_000, env=("SIM_MAX_TOKENS_IN_FLIGHT",), minimum=1, maximum=1_000_000_000)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SimLimits:
        """The limits for *env* (default: this process's environment); ConfigError names a bad variable."""
        return _from_env(cls, os.environ if env is None else env)
