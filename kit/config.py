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
import sys
from collections.abc import Callable, Mapping
from typing import Any, Self

from kit import contract

__all__ = [
    "ConfigError",
    "DEFAULT_PORTS",  # noqa: F822 (module __getattr__ reads it lazily)
    "MIN_JWT_SECRET_BYTES",
    "SimSettings",
    "WsproxySettings",
    "ClientSettings",  # noqa: F822 (module __getattr__ imports it lazily)
    "env_str",
    "env_int",
    "env_float",
    "env_secret",
    "parse_number",
    "configure_logging",
    "run_service",
]


def __getattr__(name: str) -> Any:
    # DEFAULT_PORTS: the kit's listening ports by service (redis, sim, wsproxy, haproxy_*), read
    # from the contract when first asked for (nothing is read on import)
    if name == "DEFAULT_PORTS":
        return contract.ports()
    # ClientSettings: the load client's settings, every one a load option declared in kit.options
    if name == "ClientSettings":
        from kit.options import LoadOptions

        return LoadOptions
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    env: Mapping[str, str],
    *names: str,
    default: int,
    minimum: int | None = None,
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
    env: Mapping[str, str],
    *names: str,
    default: float,
    minimum: float | None = None,
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


def parse_number(
    kind: type,
    option: str,
    raw: Any,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    example: str | None = None,
) -> Any:
    """*raw* (a command-line value) as *kind* (int or float), finite and within *minimum*..*maximum*;
    ConfigError naming *option*, the value and an example otherwise.  The one parser of numeric options
    (the client's argparse types, the fab tasks' options and the settings file's values)."""
    hint = f": pass e.g. {option} {example}" if example else ""
    try:
        v = kind(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{option} {raw!r} is not {'a whole number' if kind is int else 'a number'}{hint}") from None
    if isinstance(v, float) and (v != v or v in (float("inf"), float("-inf"))):
        raise ConfigError(f"{option} {raw!r} is not finite{hint}")
    shown = f"{raw:g}" if isinstance(raw, float) else raw  # a value, not a command-line string (a settings file's)
    if minimum is not None and v < minimum:
        raise ConfigError(f"{option} {shown} is below {minimum:g}{hint}")
    if maximum is not None and v > maximum:
        raise ConfigError(f"{option} {shown} is above {maximum:g}{hint}")
    return v


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
            raise ConfigError(
                f"{name}_FILE={path}: cannot read it ({exc.strerror}); point it at the secret file"
            ) from None
    else:
        value = env.get(name, "")
    if not value:
        if required:
            raise ConfigError(f"{name} is not set: export {name}=<secret> or {name}_FILE=<path to a 0600 file>")
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


def run_service(
    name: str, read_settings: Callable[[], Any], serve: Callable[[Any, str], None], *, port_env: str
) -> int:
    """The ``main()`` of a kit service (``python -m kit.sim`` / ``kit.wsproxy``): logging and settings
    from the environment (a ConfigError is one line on stderr, exit 2), then *serve(settings, level)*
    until SIGTERM/SIGINT (exit 0); an address that cannot be bound is one line and exit 1."""
    try:
        level = configure_logging()
        settings = read_settings()
    except ConfigError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 2
    try:
        serve(settings, level)
    except OSError as exc:
        print(
            f"{name}: cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}: free the port "
            f"or set {port_env}",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        pass
    return 0


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
    alg = env_str(env, "JWT_ALGORITHM", default=contract.contract()["kit_jwt_algorithm"])
    allowed = contract.jwt_algorithms()
    if alg not in allowed:
        raise ConfigError(f"JWT_ALGORITHM={alg!r} is not supported: use {', '.join(allowed[:-1])} or {allowed[-1]}")
    return alg


# -- settings: a dataclass field is the default; its metadata says how the environment (and, for the
# client, the command line) sets it, so from_env and argparse derive from the field ------------------


def setting(
    default: Any = dataclasses.MISSING,
    *,
    env: tuple[str, ...] = (),
    option: str | None = None,
    dest: str | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    bounds: str | None = None,
    help: str = "",
    factory: Any = None,
    repr: bool = True,
    **more: Any,
) -> Any:
    """A settings field: *default* (or *factory*), the environment variables that set it (first set wins),
    the client option that overrides it (*option*, parsed into *dest*), inclusive bounds (*bounds* names
    the contract's kit_bounds entry; *minimum* / *maximum* override its ends) and the option's help;
    *more* is metadata its readers define (kit.options: ``fab``, ``at_most``, ``wire``, ``aliases``)."""
    md = {
        "env": env,
        "option": option,
        "dest": dest,
        "minimum": minimum,
        "maximum": maximum,
        "bounds": bounds,
        "help": help,
        **more,
    }
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=md, repr=repr)
    return dataclasses.field(default=default, metadata=md, repr=repr)


def field_kind(f: dataclasses.Field) -> type:
    """int, float or str: the field's type without ``| None``."""
    base = str(f.type).split("|")[0].strip()
    return {"int": int, "float": float}.get(base, str)


def field_default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def field_limits(f: dataclasses.Field) -> tuple[Any, Any]:
    """Inclusive (minimum, maximum) of a field (None: unbounded)."""
    lo, hi = contract.bounds(f.metadata["bounds"]) if f.metadata.get("bounds") else (None, None)
    lo = f.metadata["minimum"] if f.metadata.get("minimum") is not None else lo
    hi = f.metadata["maximum"] if f.metadata.get("maximum") is not None else hi
    return lo, hi


def _from_env(cls: Any, env: Mapping[str, str], **given: Any) -> Any:
    """*cls* from *env*: every field with environment names is read, typed and bounded as its metadata
    says; *given* supplies the fields read otherwise (secrets, choices)."""
    values = dict(given)
    for f in dataclasses.fields(cls):
        names = f.metadata.get("env")
        if f.name in values or not names:
            continue
        kind, default, (lo, hi) = field_kind(f), field_default(f), field_limits(f)
        if kind is int:
            values[f.name] = env_int(env, *names, default=default, minimum=lo, maximum=hi)
        elif kind is float:
            values[f.name] = env_float(env, *names, default=default, minimum=lo, maximum=hi)
        elif default is None:
            values[f.name] = _get(env, *names)[1]
        else:
            values[f.name] = env_str(env, *names, default=default)
    return cls(**values)


def _local(service: str, scheme: str, path: str = "") -> Any:
    return lambda: f"{scheme}://127.0.0.1:{contract.ports()[service]}{path}"


@dataclasses.dataclass(frozen=True, kw_only=True)
class SimSettings:
    """The backend simulator (``python -m kit.sim``)."""

    host: str = setting("127.0.0.1", env=("FASTAPI_HOST", "SIM_HOST"))
    port: int = setting(
        factory=lambda: contract.ports()["sim"], env=("FASTAPI_PORT", "SIM_PORT"), bounds="port", minimum=0
    )
    workers: int = setting(1, env=("FASTAPI_WORKERS", "SIM_WORKERS"), bounds="sim_workers")
    redis_url: str = setting(factory=_local("redis", "redis", "/0"), env=("REDIS_URL",))
    jwt_secret: str = dataclasses.field(repr=False)
    jwt_algorithm: str = setting(factory=lambda: contract.contract()["kit_jwt_algorithm"])
    #: JWT_TTL_SECONDS (0 or unset: tokens carry no exp)
    jwt_ttl_seconds: int | None = None
    session_ttl_seconds: int = setting(10800, env=("SESSION_TTL_SECONDS",), bounds="sim_session_ttl_seconds")
    token_delay_ms: float = setting(50.0, env=("TOKEN_DELAY_MS",), minimum=0.0)
    ttft_ms: float = setting(0.0, env=("TTFT_MS",), minimum=0.0)
    token_jitter_ms: float = setting(0.0, env=("TOKEN_JITTER_MS",), minimum=0.0)
    llm_response_text: str = setting(DEFAULT_LLM_RESPONSE_TEXT, env=("LLM_RESPONSE_TEXT",))
    #: the publisher wakes on a grid of this many ms and publishes everything due by then in one
    #: write; 0 wakes at each message's own due time.  5 ms by measurement (bench/sim_publish.py,
    #: 1,000 sessions at 50 ms pacing, figures in its docstring): 5 ms takes the publisher from
    #: ~2,000-3,000 wake-ups a second to ~200 and most of the CPU per token that ticks can save;
    #: 10 and 20 ms save no more than the run-to-run noise, and 5 ms is a tenth of the usual
    #: 50 ms token gap, below what a client can tell from network jitter.  A token is never early;
    #: it is at most one tick (plus loop lag) late, and its ``ts`` is still the real publish time.
    publish_tick_ms: float = setting(5.0, env=("PUBLISH_TICK_MS",), minimum=0.0, maximum=100.0)
    #: Redis connections per worker for request handling (the publisher has its own); a request
    #: that finds them all busy waits up to redis_pool_timeout_ms, then gets 503
    #: redis_pool_exhausted.  One request holds one for one round trip (~0.1 ms), so 100 serve
    #: bursts far beyond what one worker's CPU can answer.  The wait is long (10 s, against 2 s
    #: before): on a saturated Redis host a round trip takes seconds, and a request that waits is
    #: slow while one refused is a failed session (a 20,000-session lab run: 420 of them at 2 s);
    #: it stays well inside HAProxy's timeout server (60 s) and the client's HTTP timeout (30 s).
    redis_pool_size: int = setting(100, env=("SIM_REDIS_POOL_SIZE",), minimum=1, maximum=10000)
    redis_pool_timeout_ms: float = setting(10000.0, env=("SIM_REDIS_POOL_TIMEOUT_MS",), minimum=0.0, maximum=60000.0)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Self:
        env = os.environ if env is None else env
        ttl = env_int(env, "JWT_TTL_SECONDS", default=0, minimum=0)
        return _from_env(
            cls, env, jwt_secret=_jwt_secret(env), jwt_algorithm=_jwt_algorithm(env), jwt_ttl_seconds=ttl or None
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class WsproxySettings:
    """The reference wsproxy (``python -m kit.wsproxy``)."""

    host: str = setting("127.0.0.1", env=("HOST",))
    port: int = setting(factory=lambda: contract.ports()["wsproxy"], env=("PORT",), bounds="port", minimum=0)
    redis_url: str = setting(factory=_local("redis", "redis", "/0"), env=("REDIS_URL",))
    jwt_secret: str = dataclasses.field(repr=False)
    jwt_algorithm: str = setting(factory=lambda: contract.contract()["kit_jwt_algorithm"])
    pubsub_pool_size: int = setting(512, env=("PUBSUB_POOL_SIZE",), bounds="wsproxy_pubsub_pool_size")
    ws_ping_interval_secs: float = setting(15.0, env=("WS_PING_INTERVAL_SECS",), minimum=0.01)
    ws_ping_timeout_secs: float = setting(30.0, env=("WS_PING_TIMEOUT_SECS",), minimum=0.01)
    #: frames queued for one socket before it counts as stalled and is dropped
    ws_send_buffer_messages: int = setting(1024, env=("WS_SEND_BUFFER_MESSAGES",), minimum=1)
    #: bytes of an Authorization header beyond which the request is refused
    max_auth_header_bytes: int = setting(4096, env=("WS_MAX_AUTH_HEADER_BYTES",), minimum=64)
    #: seconds a connection has to deliver a complete request head, counted from its accept (or
    #: from its previous response); later it is closed, so a peer trickling an upgrade request a
    #: byte at a time holds no socket for long.  It also closes keep-alive connections idle that long
    ws_request_header_timeout_secs: float = setting(
        10.0, env=("WS_REQUEST_HEADER_TIMEOUT_SECS",), minimum=0.1, maximum=3600.0
    )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Self:
        env = os.environ if env is None else env
        return _from_env(cls, env, jwt_secret=_jwt_secret(env), jwt_algorithm=_jwt_algorithm(env))
