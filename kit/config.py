"""One definition of every setting the kit's processes read.

Each service reads its environment through one frozen settings object built by
``from_env``.  Names and defaults are the seed kit's (see the README's
"Configuration" table), so the seed's commands keep working.  Ports, JWT
algorithms and bounds the playbooks use too come from :mod:`kit.contract`.

Bad values raise :class:`ConfigError` naming the variable, the value's
problem and how to fix it; callers print it and exit 2, never a traceback.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

from kit import contract

__all__ = [
    "ConfigError",
    "DEFAULT_PORTS",
    "MIN_JWT_SECRET_BYTES",
    "SimSettings",
    "WsproxySettings",
    "ClientSettings",
    "env_str",
    "env_int",
    "env_float",
    "env_secret",
    "configure_logging",
]


def __getattr__(name: str) -> Any:
    # DEFAULT_PORTS: the kit's listening ports by service (redis, sim, wsproxy, haproxy_*), read
    # from the contract when first asked for (nothing is read on import)
    if name == "DEFAULT_PORTS":
        return contract.ports()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _port(service: str) -> Any:
    return dataclasses.field(default_factory=lambda: contract.ports()[service])


def _local_url(scheme: str, service: str, path: str = "") -> Any:
    return dataclasses.field(default_factory=lambda: f"{scheme}://127.0.0.1:{contract.ports()[service]}{path}")


def _port_max() -> int:
    return contract.bounds("port")[1]


MIN_JWT_SECRET_BYTES = 32

DEFAULT_LLM_RESPONSE_TEXT = (
    "This is a simulated response from the language model. It streams one token "
    "at a time through Redis pub/sub and the WebSocket proxy so that the load "
    "test can measure time to first token, inter-token latency and end-to-end "
    "latency under realistic streaming conditions."
)


class ConfigError(ValueError):
    """A setting is missing or malformed; the message says which and how to fix it."""


def _get(env: Mapping[str, str], *names: str) -> tuple[str, str | None]:
    """Return (name used, raw value) for the first of *names* that is set."""
    for name in names:
        value = env.get(name)
        if value is not None and value != "":
            return name, value
    return names[0], None


def env_str(env: Mapping[str, str], *names: str, default: str | None = None) -> str:
    name, raw = _get(env, *names)
    if raw is None:
        if default is None:
            raise ConfigError(f"{name} is not set: export {name}=<value> or pass the matching option")
        return default
    return raw


def env_int(
    env: Mapping[str, str], *names: str, default: int, minimum: int | None = None,
    maximum: int | None = None,
) -> int:
    name, raw = _get(env, *names)
    if raw is None:
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a whole number: set it to e.g. {default}") from None
    _check_range(name, value, minimum, maximum)
    return value


def env_float(
    env: Mapping[str, str], *names: str, default: float, minimum: float | None = None,
    maximum: float | None = None,
) -> float:
    name, raw = _get(env, *names)
    if raw is None:
        return default
    try:
        value = float(raw.strip())
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number: set it to e.g. {default}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise ConfigError(f"{name}={raw!r} is not a finite number: set it to e.g. {default}")
    _check_range(name, value, minimum, maximum)
    return value


def _check_range(name: str, value: Any, minimum: Any, maximum: Any) -> None:
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name}={value} is below the minimum {minimum}: raise it")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{name}={value} is above the maximum {maximum}: lower it")


def env_secret(env: Mapping[str, str], name: str, *, required: bool = True) -> str | None:
    """Read a secret from ``NAME`` or from the file named by ``NAME_FILE``.

    The value itself never appears in an error message.
    """
    path = env.get(f"{name}_FILE")
    if path:
        try:
            with open(path, encoding="utf-8") as fh:
                value = fh.read().strip()
        except OSError as exc:
            raise ConfigError(f"{name}_FILE={path}: cannot read it ({exc.strerror}); point it at the secret file") from None
    else:
        value = env.get(name, "")
    if not value:
        if required:
            raise ConfigError(
                f"{name} is not set: export {name}=<secret> or {name}_FILE=<path to a 0600 file>"
            )
        return None
    return value


LOG_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG")


def configure_logging(env: Mapping[str, str] | None = None) -> str:
    """Set up the root logger from ``LOG_LEVEL`` (default INFO) for a service; return the level."""
    env = os.environ if env is None else env
    level = env.get("LOG_LEVEL", "INFO").strip().upper() or "INFO"
    if level not in LOG_LEVELS:
        raise ConfigError(f"LOG_LEVEL={level!r} is not a log level: use DEBUG, INFO, WARNING or ERROR")
    import logging

    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return level


def _jwt_secret(env: Mapping[str, str]) -> str:
    secret = env_secret(env, "JWT_SECRET")
    assert secret is not None
    if len(secret.encode()) < MIN_JWT_SECRET_BYTES:
        raise ConfigError(
            f"JWT_SECRET is {len(secret.encode())} bytes; it must be at least {MIN_JWT_SECRET_BYTES}: "
            'generate one with python3 -c "import secrets; print(secrets.token_urlsafe(48))"'
        )
    return secret


def _jwt_algorithm(env: Mapping[str, str]) -> str:
    alg = env_str(env, "JWT_ALGORITHM", default="HS256")
    allowed = contract.jwt_algorithms()
    if alg not in allowed:
        raise ConfigError(f"JWT_ALGORITHM={alg!r} is not supported: use {', '.join(allowed[:-1])} or {allowed[-1]}")
    return alg


@dataclasses.dataclass(frozen=True, kw_only=True)
class SimSettings:
    """The backend simulator (``python -m kit.sim``)."""

    host: str = "127.0.0.1"
    port: int = _port("sim")
    workers: int = 1
    redis_url: str = _local_url("redis", "redis", "/0")
    jwt_secret: str = dataclasses.field(repr=False)
    jwt_algorithm: str = "HS256"
    jwt_ttl_seconds: int | None = None
    session_ttl_seconds: int = 10800
    token_delay_ms: float = 50.0
    ttft_ms: float = 0.0
    token_jitter_ms: float = 0.0
    llm_response_text: str = DEFAULT_LLM_RESPONSE_TEXT
    #: the publisher wakes on a grid of this many ms and publishes everything due by then in one
    #: write; 0 wakes at each message's own due time.  5 ms by measurement (bench/sim_publish.py,
    #: 1,000 sessions at 50 ms pacing, figures in its docstring): 5 ms takes the publisher from
    #: ~2,000-3,000 wake-ups a second to ~200 and most of the CPU per token that ticks can save;
    #: 10 and 20 ms save no more than the run-to-run noise, and 5 ms is a tenth of the usual
    #: 50 ms token gap, below what a client can tell from network jitter.  A token is never early;
    #: it is at most one tick (plus loop lag) late, and its ``ts`` is still the real publish time.
    publish_tick_ms: float = 5.0
    #: Redis connections per worker for request handling (the publisher has its own); a request
    #: that finds them all busy waits up to redis_pool_timeout_ms, then gets 503
    #: redis_pool_exhausted.  One request holds one for one round trip (~0.1 ms), so 100 serve
    #: bursts far beyond what one worker's CPU can answer.
    redis_pool_size: int = 100
    redis_pool_timeout_ms: float = 2000.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "SimSettings":
        env = os.environ if env is None else env
        ttl = env_int(env, "JWT_TTL_SECONDS", default=0, minimum=0)
        workers_min, workers_max = contract.bounds("sim_workers")
        ttl_min, ttl_max = contract.bounds("sim_session_ttl_seconds")
        return cls(
            host=env_str(env, "FASTAPI_HOST", "SIM_HOST", default="127.0.0.1"),
            port=env_int(env, "FASTAPI_PORT", "SIM_PORT", default=contract.ports()["sim"], minimum=0,
                         maximum=_port_max()),
            workers=env_int(env, "FASTAPI_WORKERS", "SIM_WORKERS", default=1, minimum=workers_min,
                            maximum=workers_max),
            redis_url=env_str(env, "REDIS_URL", default=f"redis://127.0.0.1:{contract.ports()['redis']}/0"),
            jwt_secret=_jwt_secret(env),
            jwt_algorithm=_jwt_algorithm(env),
            jwt_ttl_seconds=ttl or None,
            session_ttl_seconds=env_int(env, "SESSION_TTL_SECONDS", default=10800, minimum=ttl_min,
                                        maximum=ttl_max),
            token_delay_ms=env_float(env, "TOKEN_DELAY_MS", default=50.0, minimum=0.0),
            ttft_ms=env_float(env, "TTFT_MS", default=0.0, minimum=0.0),
            token_jitter_ms=env_float(env, "TOKEN_JITTER_MS", default=0.0, minimum=0.0),
            llm_response_text=env_str(env, "LLM_RESPONSE_TEXT", default=DEFAULT_LLM_RESPONSE_TEXT),
            publish_tick_ms=env_float(env, "PUBLISH_TICK_MS", default=cls.publish_tick_ms, minimum=0.0,
                                      maximum=100.0),
            redis_pool_size=env_int(env, "SIM_REDIS_POOL_SIZE", default=cls.redis_pool_size, minimum=1,
                                    maximum=10000),
            redis_pool_timeout_ms=env_float(env, "SIM_REDIS_POOL_TIMEOUT_MS", default=cls.redis_pool_timeout_ms,
                                            minimum=0.0, maximum=60000.0),
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class WsproxySettings:
    """The reference wsproxy (``python -m kit.wsproxy``)."""

    host: str = "127.0.0.1"
    port: int = _port("wsproxy")
    redis_url: str = _local_url("redis", "redis", "/0")
    jwt_secret: str = dataclasses.field(repr=False)
    jwt_algorithm: str = "HS256"
    pubsub_pool_size: int = 512
    ws_ping_interval_secs: float = 15.0
    ws_ping_timeout_secs: float = 30.0
    #: frames queued for one socket before it counts as stalled and is dropped
    ws_send_buffer_messages: int = 1024
    #: bytes of an Authorization header beyond which the request is refused
    max_auth_header_bytes: int = 4096
    #: seconds a connection has to deliver a complete request head, counted from its accept (or
    #: from its previous response); later it is closed, so a peer trickling an upgrade request a
    #: byte at a time holds no socket for long.  It also closes keep-alive connections idle that long
    ws_request_header_timeout_secs: float = 10.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "WsproxySettings":
        env = os.environ if env is None else env
        pool_min, pool_max = contract.bounds("wsproxy_pubsub_pool_size")
        return cls(
            host=env_str(env, "HOST", default="127.0.0.1"),
            port=env_int(env, "PORT", default=contract.ports()["wsproxy"], minimum=0, maximum=_port_max()),
            redis_url=env_str(env, "REDIS_URL", default=f"redis://127.0.0.1:{contract.ports()['redis']}/0"),
            jwt_secret=_jwt_secret(env),
            jwt_algorithm=_jwt_algorithm(env),
            pubsub_pool_size=env_int(env, "PUBSUB_POOL_SIZE", default=512, minimum=pool_min, maximum=pool_max),
            ws_ping_interval_secs=env_float(env, "WS_PING_INTERVAL_SECS", default=15.0, minimum=0.01),
            ws_ping_timeout_secs=env_float(env, "WS_PING_TIMEOUT_SECS", default=30.0, minimum=0.01),
            ws_send_buffer_messages=env_int(env, "WS_SEND_BUFFER_MESSAGES", default=1024, minimum=1),
            max_auth_header_bytes=env_int(env, "WS_MAX_AUTH_HEADER_BYTES", default=4096, minimum=64),
            ws_request_header_timeout_secs=env_float(env, "WS_REQUEST_HEADER_TIMEOUT_SECS",
                                                     default=cls.ws_request_header_timeout_secs, minimum=0.1,
                                                     maximum=3600.0),
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class ClientSettings:
    """The trio load client (``python -m kit.client``); options override these."""

    api_url: str = _local_url("http", "haproxy_http")
    wsproxy_url: str = _local_url("ws", "haproxy_ws")
    clients: int = 100
    queries_per_client: int = 10
    jwt_secret: str | None = dataclasses.field(default=None, repr=False)
    output_dir: str = "loadtest_results"
    ws_max_reconnect_attempts: int = 5
    ws_initial_backoff_seconds: float = 1.0
    ws_max_backoff_seconds: float = 30.0
    #: PEM file of the CA the servers' TLS certificates are checked against (None: the system store)
    ssl_ca_file: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "ClientSettings":
        env = os.environ if env is None else env
        initial = env_float(env, "WS_INITIAL_BACKOFF_SECONDS", default=1.0, minimum=0.0)
        cap = env_float(env, "WS_MAX_BACKOFF_SECONDS", default=30.0, minimum=0.0)
        if cap < initial:
            raise ConfigError(
                f"WS_MAX_BACKOFF_SECONDS={cap} is below WS_INITIAL_BACKOFF_SECONDS={initial}: raise the cap"
            )
        return cls(
            api_url=env_str(env, "FASTAPI_URL", "API_URL", default=f"http://127.0.0.1:{contract.ports()['haproxy_http']}"),
            wsproxy_url=env_str(env, "WSPROXY_URL", default=f"ws://127.0.0.1:{contract.ports()['haproxy_ws']}"),
            clients=env_int(env, "CLIENTS", default=100, minimum=1),
            queries_per_client=env_int(env, "QUERIES_PER_CLIENT", default=10, minimum=0),
            jwt_secret=env_secret(env, "JWT_SECRET", required=False),
            output_dir=env_str(env, "OUTPUT_DIR", default="loadtest_results"),
            ws_max_reconnect_attempts=env_int(env, "WS_MAX_RECONNECT_ATTEMPTS", default=5, minimum=0),
            ws_initial_backoff_seconds=initial,
            ws_max_backoff_seconds=cap,
            ssl_ca_file=env.get("SSL_CA_FILE") or None,
        )
