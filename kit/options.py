"""Every option of a load, declared once: :class:`LoadOptions`.

A field is one option: its name, type, default, bounds, help, command-line flag and the environment
variables that set it (:func:`kit.config.setting`).  Everything else derives from the field:

- ``python -m kit.client``'s parser (``kit.client.__main__.build_parser``): one flag per field,
  defaulting to the environment, typed and bounded by the field;
- ``fab run``'s options: ``kit.run.RunOptions`` derives one field per option marked ``fab=True``
  (None: not given) and fabfile.py builds the task's signature and help from those fields;
- the settings file, :data:`SETTINGS_FILE`, that ``fab run`` writes for each generator and a
  multi-process client writes for its children (:func:`write_settings`, :func:`read_settings`);
- the defaults of ``kit.client``'s ``SessionConfig`` and ``LoadConfig`` (:func:`default`).

A client resolves each option as: the field's default < its environment variables < the settings
file (``--settings FILE``) < a flag on its command line.  :func:`check` holds every rule that spans
options (one message per problem, the same on the controller and on a client run by hand); a bound
of one option is its field's.

Adding an option: one field here, then its use (e.g. a ``SessionConfig`` field the client fills).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, cast

from kit.config import ConfigError, _from_env, _local, field_default, field_kind, field_limits, parse_number, setting

__all__ = [
    "ARRIVALS",
    "LoadOptions",
    "SETTINGS_FILE",
    "check",
    "default",
    "declared",
    "dest",
    "given_fields",
    "option_help",
    "read_settings",
    "settings_text",
    "write_settings",
    "parse_option",
    "shown",
]

#: the settings file's name: a JSON object of option names (:class:`LoadOptions` fields) and values
SETTINGS_FILE = "client-settings.json"

#: how sessions arrive (``--arrivals``; kit.client._stages draws them), the default first
ARRIVALS = ("even", "poisson")

#: the query the seed's client sends (README "Configuration")
DEFAULT_QUERY_TEXT = "Tell me about WebSocket proxies."


def _reconnect_rate() -> float:
    """The default kit.client._limiter defines beside the code that uses it (and says why)."""
    from kit.client import RECONNECT_RATE

    return RECONNECT_RATE


def _check_stages(text: str) -> None:
    """A ``--stages`` value parses (kit.client._stages); ConfigError naming the item otherwise."""
    from kit.client import parse_stages

    parse_stages(text)


def _http_connections() -> int:
    from kit.client import DEFAULT_MAX_CONNECTIONS

    return DEFAULT_MAX_CONNECTIONS


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoadOptions:
    """The options of a load (``python -m kit.client`` and, where ``fab=True``, ``fab run``).

    ``wire=True``: the field is part of each ``/run`` body, bounded by the wire contract (kit.wire, checked
    by :func:`check`);
    ``at_most``: another option bounds it (when that one is set); ``fab_default``: ``fab run``'s own default;
    ``fab_required``: ``fab run`` has no default (the generators' would be wrong); ``choices``: the values a
    text option takes; ``validate``: a function that raises ConfigError for a text option's bad value."""

    api_url: str = setting(
        factory=_local("haproxy_http", "http"),
        env=("FASTAPI_URL", "API_URL"),
        option="--api-url",
        dest="api_url",
        help="simulator / HAProxy HTTP URL",
    )
    wsproxy_url: str = setting(
        factory=_local("haproxy_ws", "ws"),
        env=("WSPROXY_URL",),
        option="--ws-url",
        dest="ws_url",
        help="wsproxy / HAProxy WebSocket URL",
    )
    clients: int = setting(
        100,
        env=("CLIENTS",),
        option="--clients",
        minimum=1,
        fab=True,
        fab_required=True,
        help="sessions (fab run: in all, split over the generator hosts; required unless --preset)",
    )
    queries: int = setting(
        10,
        env=("QUERIES_PER_CLIENT",),
        option="--queries",
        minimum=0,
        fab=True,
        help="queries per session (fab run: or the preset's)",
    )
    output_dir: str = setting("loadtest_results", env=("OUTPUT_DIR",), option="--output-dir", help="result folder")
    ramp: float = setting(
        0.0,
        option="--ramp",
        minimum=0.0,
        fab=True,
        help="sessions started per second (fab run: over all generators, or the preset's); 0 = all at once",
    )
    arrival_rate: float | None = setting(
        None,
        option="--arrival-rate",
        minimum=0.0,
        fab=True,
        help="open model: sessions arriving per second (with --duration)",
    )
    duration: float | None = setting(
        None, option="--duration", minimum=0.0, fab=True, help="open model: seconds of arrivals"
    )
    #: k6's stages (kit.client._stages says how each model reads them)
    stages: str | None = setting(
        None,
        option="--stages",
        fab=True,
        validate=_check_stages,
        help="DURATION:TARGET[:ARRIVALS],... e.g. 30:100,60:100,30:0: each stage moves its target linearly over "
        "DURATION seconds (30, 30s, 2m) from the previous one's; closed model: concurrent sessions, from 0 (the "
        "peak replaces --clients and --ramp); with --arrival-rate: sessions started per second, from that rate "
        "(the stages replace --duration); ARRIVALS even|poisson overrides --arrivals for the stage",
    )
    arrivals: str = setting(
        "even",
        option="--arrivals",
        fab=True,
        choices=ARRIVALS,
        help="even | poisson: how sessions arrive in the open model (--arrival-rate) and how a --stages ramp "
        "starts its sessions (poisson: random instants drawn from --seed, the same mean)",
    )
    max_duration: float | None = setting(
        None,
        option="--max-duration",
        minimum=0.001,
        fab=True,
        fab_default=600.0,
        help="hard bound on the run in seconds: running sessions are cancelled "
        "(fab run: a generator past it + 30 s is stopped)",
    )
    think_time: float = setting(
        0.0,
        option="--think-time",
        minimum=0.0,
        at_most="max_duration",
        fab=True,
        help="seconds a session waits between its queries",
    )
    query_timeout: float = setting(
        60.0,
        option="--query-timeout",
        minimum=0.001,
        at_most="max_duration",
        fab=True,
        help="seconds a query may take to its done message before it counts as failed",
    )
    # the run's workload, sent in each /run body (unset: the simulator's deployed value)
    tokens: int | None = setting(
        None,
        option="--tokens",
        aliases=("--max-tokens",),
        wire=True,
        fab=True,
        help="tokens in each answer (the response text repeats past its end; default the "
        "simulator's whole response text)",
    )
    token_delay_ms: float | None = setting(
        None,
        option="--token-delay",
        wire=True,
        fab=True,
        help="ms between tokens (default the simulator's TOKEN_DELAY_MS)",
    )
    ttft_ms: float | None = setting(
        None, option="--ttft", wire=True, fab=True, help="ms to the first token (default the simulator's TTFT_MS)"
    )
    token_jitter_ms: float | None = setting(
        None,
        option="--token-jitter",
        wire=True,
        fab=True,
        help="ms of uniform jitter per token (default the simulator's TOKEN_JITTER_MS)",
    )
    workload: str | None = setting(
        None,
        option="--workload",
        help="workload file (YAML): weighted classes of sessions overriding these options (README 'Workload')",
    )
    workload_seed: int | None = setting(
        None,
        option="--workload-seed",
        minimum=0,
        fab=True,
        help="seed of each session's class draw (default the workload file's seed, else random)",
    )
    max_reconnect_attempts: int = setting(
        5,
        env=("WS_MAX_RECONNECT_ATTEMPTS",),
        option="--max-reconnect-attempts",
        minimum=0,
        fab=True,
        help="reconnects of a session's WebSocket before it fails",
    )
    initial_backoff: float = setting(
        1.0,
        env=("WS_INITIAL_BACKOFF_SECONDS",),
        option="--initial-backoff",
        minimum=0.0,
        at_most="max_duration",
        fab=True,
        help="seconds before the first reconnect (doubling after)",
    )
    max_backoff: float = setting(
        30.0,
        env=("WS_MAX_BACKOFF_SECONDS",),
        option="--max-backoff",
        minimum=0.0,
        at_most="max_duration",
        fab=True,
        help="cap of the reconnect backoff in seconds",
    )
    #: one generator process's bound on its sessions' reconnect attempts (kit.client._limiter says why the default)
    reconnect_rate: float = setting(
        factory=_reconnect_rate,
        env=("WS_RECONNECT_RATE",),
        option="--reconnect-rate",
        minimum=0.0,
        fab=True,
        help="reconnect attempts per second per generator process, over all its "
        "sessions, after their backoff (0 = unlimited; burst 50)",
    )
    #: PEM file of the CA the servers' TLS certificates are checked against (None: the system store)
    ca_file: str | None = setting(
        None,
        env=("SSL_CA_FILE",),
        option="--ca-file",
        help="PEM file of the CA that signs the servers' certificates, for https:// "
        "and wss:// (default: the system store; certificates are always verified)",
    )
    agent_id: str = setting("load-test-agent", option="--agent-id", help="agent id of each session's WebSocket path")
    query_text: str = setting(DEFAULT_QUERY_TEXT, option="--query-text", help="text of each query")
    jitter: float = setting(
        0.5, option="--jitter", minimum=0.0, maximum=1.0, help="fraction of each backoff that is random (0..1)"
    )
    connect_timeout: float = setting(
        10.0, option="--connect-timeout", minimum=0.001, help="seconds a WebSocket connect may take"
    )
    http_timeout: float = setting(30.0, option="--http-timeout", minimum=0.001, help="seconds an HTTP request may take")
    http_connections: int = setting(
        factory=_http_connections,
        option="--http-connections",
        minimum=1,
        help="keep-alive HTTP connections per process for create/run/close (a wait for one is recorded)",
    )
    seed: int | None = setting(
        None,
        option="--seed",
        minimum=0,
        fab=True,
        help="random seed of the arrival schedule (--arrivals poisson) and of the reconnect jitter; the same seed "
        "gives the same schedule (default random: the seed drawn is recorded in summary.json)",
    )
    #: several addresses lift the per-address cap of ephemeral ports toward one balancer (kit.client._ws.SOURCES)
    source_addresses: str | None = setting(
        None,
        env=("WS_SOURCE_ADDRESSES",),
        option="--source-addresses",
        help="local addresses (comma-separated) the connections leave from in "
        "turn, each with its own ports (fab run: the inventory's "
        "generator_source_addresses)",
    )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> LoadOptions:
        """Each field from its environment variables (first set wins), else its default; bounds checked."""
        return _from_env(cls, os.environ if env is None else env)


def declared() -> Iterator[dataclasses.Field]:
    """The declared options, in flag order."""
    yield from dataclasses.fields(LoadOptions)


def dest(f: dataclasses.Field) -> str:
    """The option's attribute name on a parsed command line (its field name unless it says otherwise)."""
    return f.metadata.get("dest") or f.name


def default(name: str) -> Any:
    """Option *name*'s declared default (for the client's own config objects)."""
    return field_default(next(f for f in declared() if f.name == name))


def shown(v: Any) -> str:
    """*v* for a message: floats as %g, a number too long to read shortened."""
    text = f"{v:g}" if isinstance(v, float) else str(v)
    return text if len(text) <= 24 else f"{text[:8]}...({len(text)} digits)"


def parse_option(f: dataclasses.Field, raw: Any, flag: str | None = None) -> Any:
    """*raw* (a command-line string, or a value read from a settings file) as option *f*'s type, within its
    own bounds; ConfigError naming the flag otherwise.  None stays None (not given)."""
    if raw is None:
        return None
    kind, (lo, hi), flag = field_kind(f), field_limits(f), flag or f.metadata["option"]
    if kind is str:
        if not isinstance(raw, str):
            raise ConfigError(f"{flag} {raw!r} is not text")
        _check_text(f, raw, flag)
        return raw
    if isinstance(raw, bool) or (kind is int and isinstance(raw, float)):
        raise ConfigError(f"{flag} {raw!r} is not {'a whole number' if kind is int else 'a number'}")
    d = field_default(f)
    example = f.metadata.get("example") or (shown(d) if isinstance(d, (int, float)) else None)
    return parse_number(kind, flag, raw, minimum=lo, maximum=hi, example=example)


def _check_text(f: dataclasses.Field, raw: str, flag: str) -> None:
    """A text option's own rules: one of its ``choices``, and its ``validate`` (e.g. ``--stages``' syntax)."""
    choices = f.metadata.get("choices")
    if choices and raw not in choices:
        raise ConfigError(f"{flag} {raw!r:.40} is not {' or '.join(choices)}: pass e.g. {flag} {choices[-1]}")
    if f.metadata.get("validate"):
        f.metadata["validate"](raw)


def check(values: Mapping[str, Any]) -> None:
    """The rules that span options, over *values* (field name -> value; None: not set): ConfigError, one line.

    Each option within the bound another sets (``at_most``), each ``/run`` field within the wire
    contract, the backoff cap at least the first backoff, a text option within its choices and rules,
    the open model's rate and duration together and starting a session, Poisson arrivals only where there
    are arrivals to draw; with ``--stages``: no ``--duration``, at least one session, within
    ``--max-duration``."""
    from kit.client import check_option

    fields = {f.name: f for f in declared()}
    for name, f in fields.items():
        v, bound = values.get(name), f.metadata.get("at_most")
        if v is None:
            continue
        # a default is never refused: the bound is on what was given (a run shorter than the default timeout)
        if bound and values.get(bound) is not None and v > values[bound] and v != field_default(f):
            raise ConfigError(
                f"{f.metadata['option']} {shown(v)} is above {fields[bound].metadata['option']} "
                f"{shown(values[bound])}: give at most that"
            )
        if f.metadata.get("wire"):
            problem = check_option(name, v, f"{f.metadata['option']} {shown(v)}")
            if problem:
                raise ConfigError(problem)
    lo, hi = values.get("initial_backoff"), values.get("max_backoff")
    if lo is not None and hi is not None and hi < lo:
        raise ConfigError(
            f"--max-backoff / WS_MAX_BACKOFF_SECONDS = {hi:g} is below --initial-backoff / "
            f"WS_INITIAL_BACKOFF_SECONDS = {lo:g}: raise the cap"
        )
    for a in (values.get("source_addresses") or "").split(","):
        try:
            ipaddress.ip_address(a.strip()) if a.strip() else None
        except ValueError:
            raise ConfigError(
                f"--source-addresses / WS_SOURCE_ADDRESSES: {a.strip()!r:.60} is not an IP address: "
                "give this host's addresses, comma-separated"
            ) from None
    for name, f in fields.items():
        if values.get(name) is not None and field_kind(f) is str:
            _check_text(f, values[name], f.metadata["option"])
    if values.get("stages"):
        _check_staged(values)
        return
    rate, duration = values.get("arrival_rate"), values.get("duration")
    if (rate is None) != (duration is None):
        raise ConfigError(
            "--arrival-rate and --duration go together (open model): pass both, e.g. --arrival-rate 20 --duration 60"
        )
    if rate is not None and math.isfinite(rate * duration) and rate * duration < 1:
        raise ConfigError(f"--arrival-rate {rate:g} x --duration {duration:g} starts no session: raise one of them")
    if rate is None and values.get("arrivals") == "poisson":
        raise ConfigError(
            "--arrivals poisson applies to the open model or to --stages: add --arrival-rate R --duration S, "
            "or --stages (a closed model's --ramp is even)"
        )


def _check_staged(values: Mapping[str, Any]) -> None:
    """The rules of a run with ``--stages``: the stages give its length (no --duration), start at least one
    session, and end within --max-duration."""
    from kit.client import parse_stages, peak_target, rate_integral, stages_length

    text, rate = values["stages"], values.get("arrival_rate")
    stages = parse_stages(text)
    if values.get("duration") is not None:
        raise ConfigError(
            f"--duration {values['duration']:g} with --stages: the stages give the run's length "
            f"({stages_length(stages):g} s): drop --duration"
        )
    if rate is None and peak_target(stages) <= 0:
        raise ConfigError(f"--stages {text:.40} never sets a target above 0 sessions: give a stage a TARGET > 0")
    if rate is not None and rate_integral(stages, rate) < 1:
        raise ConfigError(
            f"--stages {text:.40} from --arrival-rate {rate:g} starts no session (the rate's integral is "
            f"{rate_integral(stages, rate):.3g}): raise a stage's TARGET or --arrival-rate"
        )
    limit = values.get("max_duration")
    if limit is not None and stages_length(stages) > limit:
        raise ConfigError(
            f"--stages last {stages_length(stages):g} s, above --max-duration {limit:g}: raise --max-duration "
            "or shorten the stages"
        )


def given_fields() -> list[tuple[str, Any, dataclasses.Field]]:
    """The options ``fab run`` takes, as fields of ``RunOptions`` (``dataclasses.make_dataclass``): the
    same name and metadata, ``T | None`` defaulting to None (not given: the generator's own value) unless
    the option declares ``fab_default``."""
    out: list[tuple[str, Any, dataclasses.Field]] = []
    for f in declared():
        if f.metadata.get("fab"):
            fab_default = f.metadata.get("fab_default")
            # field() is typed as its default's type, for class bodies; it returns the Field
            new = cast(dataclasses.Field, dataclasses.field(default=fab_default, metadata=f.metadata))
            out.append((f.name, field_kind(f) | None, new))
    return out


def option_help(f: dataclasses.Field, *, default_value: Any = dataclasses.MISSING, generator: bool = False) -> str:
    """The option's help with its default (the declared one, or *default_value*) and its variables;
    *generator*: for ``fab run``, where an option not given is left to each generator."""
    d = field_default(f) if default_value is dataclasses.MISSING else default_value
    env = " / ".join(f.metadata.get("env") or ())
    if d is None or d is False or d == [] or (default_value is dataclasses.MISSING and callable(f.default_factory)):
        extra = "" if generator else env
    elif generator:
        extra = f"generator default {shown(d)}" + (f", or its {env}" if env else "")
    else:
        extra = f"default {shown(d) if isinstance(d, (int, float)) else d}" + (f"; {env}" if env else "")
    return f"{f.metadata['help']} ({extra})" if extra else f.metadata["help"]


def settings_text(values: Mapping[str, Any]) -> str:
    """*values* (option name -> value; None and unknown names left out) as a settings file's JSON."""
    names = {f.name for f in declared()}
    data = {k: (str(v) if isinstance(v, Path) else v) for k, v in values.items() if k in names and v is not None}
    return json.dumps(data, indent=1, sort_keys=True) + "\n"


def write_settings(path: Path, values: Mapping[str, Any]) -> Path:
    """*values* as the settings file at *path* (:func:`settings_text`; its folder made if need be)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(settings_text(values))
    return path


def read_settings(path: str | Path) -> dict[str, Any]:
    """A settings file's options (field name -> value), each typed and bounded as declared; ConfigError
    naming the file for anything else (unknown names included)."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except OSError as exc:
        raise ConfigError(
            f"--settings {path}: cannot read it ({exc.strerror or exc}): pass a settings file "
            f"({SETTINGS_FILE}, as fab run writes)"
        ) from None
    except ValueError as exc:
        raise ConfigError(f"--settings {path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--settings {path}: a JSON object of option names and values is expected")
    fields = {f.name: f for f in declared()}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"--settings {path}: unknown option(s) {', '.join(unknown)}: use {', '.join(fields)}")
    try:
        return {k: parse_option(fields[k], v) for k, v in data.items()}
    except ConfigError as exc:
        raise ConfigError(f"--settings {path}: {exc}") from None
