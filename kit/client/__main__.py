"""``python -m kit.client``: run a load, or ``analyze`` / ``merge`` result folders.

Every load option is declared once in :class:`kit.options.LoadOptions` (its default, bounds, help, flag
and environment variable; ``kit.config.ClientSettings`` is the same class); this parser is generated from
it.  Each option resolves as: its default < its environment variable < a settings file < its flag.

The settings file (``--settings FILE``, named ``client-settings.json``) is a JSON object of option names
(the declarations' field names: mostly the long flag with ``_``, but ``token_delay_ms`` for ``--token-delay``,
``wsproxy_url`` for ``--ws-url``) and values, e.g.
``{"clients": 250, "think_time": 0.5, "token_delay_ms": 20, "max_duration": 600}``; each value is checked
as the flag's would be, and an unknown name is an error.  ``fab run`` writes one per generator (the
options the run was given, checked once on the controller, and the generator's share of the load; its
command line carries only the URLs, processes, start and paths), and a multi-process run writes one for
its processes.  Bad configuration prints one line naming the option or variable and the fix, and exits 2.

Results go to ``OUTPUT_DIR`` (``--output-dir``) and never overwrite an earlier run: when
that folder already holds a run's files, this run writes into ``OUTPUT_DIR/<run-id>/``
(run ids are timestamped, e.g. ``20261130-150000-c100``; a taken one gets ``-2``, ``-3``;
a taken ``--run-id`` is refused).  The folder used is printed at the end.

``summary.json`` carries the run's verdict, ``status`` (with ``status_reason``):
``passed`` (every session succeeded), ``partial`` (some did, but at least one failed or
was cancelled, or ``--max-duration`` was reached) or ``failed`` (no session succeeded);
see ``kit.client._output.run_status``.

Exit codes of a load run:

- 0: passed (or any finished run with ``--exit-zero-on-failure``);
- 1: failed: no session succeeded, or the client itself failed (a generator process
  crashed; one line on stderr says which);
- 2: bad usage: an option, variable or ``OUTPUT_DIR`` is wrong, or a URL cannot be
  reached before the load starts (one line on stderr, nothing run);
- 3: partial;
- 130: interrupted (Ctrl-C).

``--exit-zero-on-failure`` is for orchestrators that read ``summary.json`` themselves:
``fab run`` passes it, since it reports a generator's non-zero exit as a crashed generator
(a partial run), and sessions the server refused are a measurement, not a crash.  The
processes a multi-process run starts (``--_process-count``) always exit 0 once they wrote
their results; their parent gives the verdict of the merged run.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import random
import socket
import ssl
import sys
import time
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

from kit import _gc, contract
from kit.config import ConfigError, parse_number
from kit.options import (
    SETTINGS_FILE,
    LoadOptions,
    check,
    declared,
    dest,
    option_help,
    parse_option,
    read_settings,
    write_settings,
)

from ._http import mask_url

log = logging.getLogger(__name__)

PROG = "python -m kit.client"
#: how far ahead --start-at may be: further is a mistake (epoch milliseconds for seconds), not a plan
MAX_START_AHEAD_S = 86400.0


def max_sessions() -> int:
    """The most sessions one invocation starts (``--clients``, or ``--arrival-rate`` x ``--duration``; with
    ``--stages``, the closed model's peak or the open model's arrivals due: :func:`total_sessions`).

    The kit's ceiling on a process's open files (contract ``kit_bounds.kit_nofile``, 1,048,576): the
    preflight allows (open files - reserve) / 2 sessions per generator process, and one invocation
    reaches one ``--ws-url`` from one address, which 64k local ports already cap far below this.  Every
    session's record stays in memory until the results are written, so the bound also bounds memory.
    A larger load is split over generators (``fab run`` does it)."""
    return contract.bounds("kit_nofile")[1]


def max_processes() -> int:
    """The most generator processes one invocation starts: 4 per core, at least 64."""
    return max(64, 4 * (os.cpu_count() or 1))


def _shown(v: int | float) -> str:
    """*v* for a message: a number too long to read (or to format as a float) shortened."""
    text = f"{v:g}" if isinstance(v, float) else str(v)
    return text if len(text) <= 24 else f"{text[:8]}...({len(text)} digits)"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, no usage dump
        head, sep, rest = message.partition(": ")
        if head.startswith("argument ") and rest.startswith("--"):
            raise ConfigError(rest)  # our converters' messages name the option and the fix
        raise ConfigError(f"{message}: see `{self.prog} --help`")


def _num(kind: type, name: str, minimum: float | None = None, example: str = "1"):
    """An argparse type: kit.config.parse_number, its message kept as argparse's."""

    def conv(raw: str):
        try:
            return parse_number(kind, name, raw, minimum=minimum, example=example)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return conv


def build_parser(env: LoadOptions) -> argparse.ArgumentParser:
    """The load's options, one per :class:`kit.options.LoadOptions` field (defaulting to *env*, the
    environment's values), then the invocation's own (processes, start, run id, output)."""
    p = _Parser(
        prog=PROG,
        description="Trio load client for wsproxy (see kit/client/__init__.py).",
        epilog=f"Each load option resolves as: its default < its environment variable < --settings FILE < "
        f"its flag.  {SETTINGS_FILE} is a JSON object of option names (kit/options.py's, "
        'e.g. {"clients": 50, "think_time": 0.5, "token_delay_ms": 20}); fab run writes one '
        "per generator, a multi-process run one for its processes.",
    )
    a = p.add_argument
    a(
        "--settings",
        default=None,
        help=f"settings file ({SETTINGS_FILE}) whose options override the environment's "
        "(a flag overrides both); checked like the flags",
    )
    for f in declared():
        flags = (f.metadata["option"], *f.metadata.get("aliases", ()))
        a(*flags, dest=dest(f), type=_option_type(f), default=getattr(env, f.name), help=option_help(f))
    a(
        "--processes",
        type=_num(int, "--processes", 1, "2"),
        default=None,
        help="trio processes on this host (default: one per core)",
    )
    a(
        "--start-at",
        type=_num(float, "--start-at", 0, str(int(time.time()) + 10)),
        default=None,
        help="wall-clock epoch seconds at which to start (all generators agree on it)",
    )
    a("--run-id", default=None, help="name of the run (default: time and client count)")
    a("--quiet", action="store_true", help="no live progress line")
    a(
        "--status-interval",
        type=_num(float, "--status-interval", 0.1, "1"),
        default=None,
        help="write OUTPUT_DIR/status.json every this many seconds",
    )
    a("--no-preflight", action="store_true", help="skip the reachability check of both URLs")
    a(
        "--exit-zero-on-failure",
        action="store_true",
        help="exit 0 when the run finished but sessions failed (summary.json's status says so; for orchestrators)",
    )
    a("--_process-index", dest="process_index", type=int, default=0, help=argparse.SUPPRESS)
    a("--_process-count", dest="process_count", type=int, default=None, help=argparse.SUPPRESS)
    return p


def _option_type(f: dataclasses.Field):
    """An argparse type for option *f*: its value parsed and bounded as declared, the message kept."""

    def conv(raw: str):
        try:
            return parse_option(f, raw)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return conv


def parse_args(argv: list[str], env: LoadOptions) -> argparse.Namespace:
    """*argv* over *env*; a ``--settings`` file's options (read and bounded as declared) between the two."""
    parser = build_parser(env)
    args = parser.parse_args(argv)
    if args.settings:
        values = read_settings(args.settings)
        parser.set_defaults(**{dest(f): values[f.name] for f in declared() if f.name in values})
        args = parser.parse_args(argv)
    return args


def _check_url(value: str, schemes: tuple[str, ...], option: str, env: str) -> None:
    """ConfigError unless *value* is a URL of one of *schemes* with a host (and a valid port, if any).
    The value is quoted with its credentials masked (:func:`~kit.client._http.mask_url`)."""
    shown = _refused_url(value)
    example = (
        f"pass e.g. {option} {schemes[0]}://127.0.0.1:"
        f"{contract.ports()['haproxy_http' if 'http' in schemes else 'haproxy_ws']}"
    )
    try:
        u = urlsplit(value)
    except ValueError as exc:  # e.g. "http://[::1": an unclosed IPv6 bracket
        raise ConfigError(
            f"{option} / {env} = {shown!r} is not a valid URL ({mask_url(str(exc))}): {example}"
        ) from None
    if u.scheme not in schemes or not u.hostname:
        raise ConfigError(
            f"{option} / {env} = {shown!r} is not a {' or '.join(s + '://' for s in schemes)} URL: {example}"
        )
    try:
        _ = u.port  # raises ValueError for a port out of range or not a number
    except ValueError:  # its message may quote what follows the host's colon: not repeated
        raise ConfigError(
            f"{option} / {env} = {shown!r} has a bad port: give a number from 1 to 65535, {example}"
        ) from None


def _refused_url(value: str) -> str:
    """A URL that failed validation, for its message: everything from ``://`` to the last ``@`` is taken
    for credentials and masked (a password with an unencoded ``/`` escapes :func:`mask_url`'s reading)."""
    head, sep, rest = value.partition("://")
    if not sep or "@" not in rest:
        return mask_url(value)
    userinfo, _, host = rest.rpartition("@")
    user, colon, _ = userinfo.partition(":")
    return f"{head}://{user}:***@{host}" if colon and "/" not in user else f"{head}://***@{host}"


def _check_sessions(args: argparse.Namespace) -> None:
    """The number of sessions this invocation would start is bounded (:func:`max_sessions`), and so is
    the number of its processes: checked before anything else, since both size what the run builds."""
    cap = max_sessions()
    if args.stages:
        _check_staged_sessions(args, cap)
    elif args.arrival_rate is None and args.clients > cap:
        raise ConfigError(
            f"--clients / CLIENTS = {_shown(args.clients)} is above {cap}, the sessions one "
            "generator invocation may start: lower it, or spread the load over generator hosts "
            "(fab run --clients N splits it)"
        )
    if args.arrival_rate is not None and args.duration is not None and not args.stages:
        total = args.arrival_rate * args.duration
        if not math.isfinite(total) or total > cap:
            raise ConfigError(
                f"--arrival-rate {_shown(args.arrival_rate)} x --duration {_shown(args.duration)} "
                f"starts more than {cap} sessions, the most one generator invocation may start: "
                "lower one of them, or spread the load over generator hosts"
            )
    if args.processes is not None and args.processes > max_processes():
        raise ConfigError(
            f"--processes {_shown(args.processes)} is above {max_processes()} (4 per core, at "
            "least 64): pass at most one per core, e.g. --processes "
            f"{os.cpu_count() or 1}"
        )


def _check_staged_sessions(args: argparse.Namespace, cap: int) -> None:
    """With --stages: the closed model's slots (its peak target), or the open model's arrivals due, within
    *cap*."""
    from ._stages import parse_stages, rate_integral, slot_count

    stages = parse_stages(args.stages)
    if args.arrival_rate is None and slot_count(stages) > cap:
        raise ConfigError(
            f"--stages {args.stages:.40} peaks at {slot_count(stages)} sessions, above {cap}, the sessions one "
            "generator invocation may hold: lower the targets, or spread the load over generator hosts"
        )
    due = rate_integral(stages, args.arrival_rate) if args.arrival_rate is not None else 0.0
    if not math.isfinite(due) or due > cap:
        raise ConfigError(
            f"--stages {args.stages:.40} from --arrival-rate {_shown(args.arrival_rate)} starts about "
            f"{_shown(due)} sessions, more than {cap}, the most one generator invocation may start: lower the "
            "rates, or spread the load over generator hosts"
        )


def total_sessions(args: argparse.Namespace) -> int:
    """The sessions a run is sized and named for: --clients; open, --arrival-rate x --duration; with
    --stages, the closed model's peak slots or the open model's arrivals due (kit.client._stages)."""
    from ._stages import parse_stages, rate_integral, slot_count

    if args.stages:
        stages = parse_stages(args.stages)
        if args.arrival_rate is None:
            return slot_count(stages)
        return max(1, round(rate_integral(stages, args.arrival_rate)))
    return round(args.arrival_rate * args.duration) if args.arrival_rate else args.clients


def validate(args: argparse.Namespace) -> None:
    _check_sessions(args)
    _check_url(args.api_url, ("http", "https"), "--api-url", "FASTAPI_URL")
    _check_url(args.ws_url, ("ws", "wss"), "--ws-url", "WSPROXY_URL")
    if args.ca_file is not None and not os.access(args.ca_file, os.R_OK):
        raise ConfigError(
            f"--ca-file / SSL_CA_FILE {args.ca_file}: cannot read it: pass the kit CA's PEM "
            "(fab run copies it from .secrets/)"
        )
    if args.start_at is not None and args.start_at > time.time() + MAX_START_AHEAD_S:
        raise ConfigError(
            f"--start-at {_shown(args.start_at)} is more than a day ahead: pass epoch seconds "
            f"(not milliseconds), e.g. --start-at {int(time.time()) + 10}"
        )
    check(options_of(args))


def options_of(args: argparse.Namespace) -> dict[str, Any]:
    """The load options of parsed *args*, by option name."""
    return {f.name: getattr(args, dest(f)) for f in declared()}


def preflight(args: argparse.Namespace) -> None:
    """One request to the API's /health and one TCP connect to the WebSocket endpoint.

    Credentials in ``--api-url`` go with the /health request (httpx sends them as Basic auth); every
    message quotes the URLs with them masked."""
    import httpx

    url = args.api_url.rstrip("/") + contract.health_path()
    api, ws = mask_url(args.api_url), mask_url(args.ws_url)
    try:
        r = httpx.get(url, timeout=5.0, verify=_ssl_context(args))
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        why = mask_url(str(exc) or type(exc).__name__)
        if "CERTIFICATE_VERIFY_FAILED" in why:
            raise ConfigError(
                f"--api-url / FASTAPI_URL {api}: the server's certificate was refused ({why}): "
                "pass the CA that signed it with --ca-file / SSL_CA_FILE"
            ) from None
        raise ConfigError(
            f"--api-url / FASTAPI_URL {api}: cannot reach it ({why}): "
            "start the simulator (or HAProxy) there or point --api-url at it"
        ) from None
    if r.status_code != 200:
        body = " ".join(mask_url(r.text[:120]).split())
        raise ConfigError(
            f"--api-url / FASTAPI_URL {api}: GET /health answered {r.status_code} "
            f"({body}): fix the service (is Redis up?) before loading it"
        )
    u = urlsplit(args.ws_url)
    port = u.port or (443 if u.scheme == "wss" else 80)
    try:
        with socket.create_connection((u.hostname, port), timeout=5.0) as sock:
            if u.scheme == "wss":  # the certificate too: a refused one is bad configuration, not a load result
                _ssl_context(args).wrap_socket(sock, server_hostname=u.hostname).close()
    except ssl.SSLCertVerificationError as exc:
        raise ConfigError(
            f"--ws-url / WSPROXY_URL {ws}: the server's certificate was refused "
            f"({exc.verify_message}): pass the CA that signed it with --ca-file / SSL_CA_FILE"
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"--ws-url / WSPROXY_URL {ws}: cannot reach it ({mask_url(str(exc.strerror or exc))}): "
            "start wsproxy (or HAProxy) there or point --ws-url at it"
        ) from None


def _ssl_context(args: argparse.Namespace) -> ssl.SSLContext:
    from ._ws import client_ssl_context

    return client_ssl_context(args.ca_file)


def _child_config(args: argparse.Namespace, out: Path) -> list[str]:
    """Write the parent's resolved options (every one, as parsed and checked) as its children's settings
    file; return the option that hands it to them.  A child reads it instead of rebuilding an argv (its
    own output folder comes on its command line)."""
    values = {k: v for k, v in options_of(args).items() if k != "output_dir"}
    return ["--settings", str(write_settings(out / SETTINGS_FILE, values))]


def _workload(args: argparse.Namespace):
    """The run's workload classes (the options alone, or ``--workload FILE``); fixes the draw's seed
    (``--workload-seed``, else the file's, else a random one) so every child process draws alike."""
    from ._workload import Workload, WorkloadError, draw_seed, duration_problems, load_workload

    if args.workload is None:
        workload = Workload()
    else:
        try:
            workload = load_workload(args.workload)
        except WorkloadError as exc:  # one line per problem in the file: one line here
            raise ConfigError("; ".join(str(exc).splitlines())) from None
    args.workload_seed = draw_seed(workload, args.workload_seed)
    problems = duration_problems(workload, args.tokens, args.token_delay_ms, args.ttft_ms, args.token_jitter_ms)
    if problems:
        raise ConfigError(problems[0])
    return workload


#: options whose names contain "token" but carry workload numbers (shown as given in meta.json)
_WORKLOAD_FLAGS = ("--tokens", "--token-delay", "--token-jitter")


def _safe_argv(argv: list[str]) -> list[str]:
    """*argv* for meta.json: the values of options named like a secret, and URLs' credentials, masked."""
    out, hide = [], False
    for a in map(mask_url, argv):
        if hide:
            out.append("***")
            hide = False
            continue
        name = a.split("=", 1)[0].lower()
        # the workload's --tokens/--token-delay/--token-jitter are numbers, not credentials
        if (
            a.startswith("--")
            and name not in _WORKLOAD_FLAGS
            and any(w in name for w in ("secret", "token", "password", "auth"))
        ):
            if "=" in a:
                out.append(a.split("=", 1)[0] + "=***")
            else:
                out.append(a)
                hide = True
            continue
        out.append(a)
    return out


#: exit status of a finished load run by its summary's status (see the module docstring)
EXIT_BY_STATUS = {"passed": 0, "failed": 1, "partial": 3}


def run_load(argv: list[str]) -> int:
    from ._console import print_summary
    from ._load import LoadConfig, run_parent, run_process, versions
    from ._output import check_output_dir, claim_output_dir
    from ._session import SessionConfig
    from ._stages import parse_stages

    args = parse_args(argv, LoadOptions.from_env())
    validate(args)
    workload = _workload(args)
    child = args.process_count is not None
    check_output_dir(Path(args.output_dir))  # before any network check: a bad folder is bad usage
    if not child and not args.no_preflight:
        preflight(args)
    # URLs' credentials served the preflight only (the load's requests never send them): from here on
    # nothing (meta.json, the children's settings, error records) can write them
    args.api_url, args.ws_url = mask_url(args.api_url), mask_url(args.ws_url)
    if args.seed is None:  # drawn once here, so that every process of the run draws the same schedule
        args.seed = random.SystemRandom().randrange(2**32)
    total = total_sessions(args)
    processes = args.process_count or min(args.processes or os.cpu_count() or 1, total)
    run_id = args.run_id or contract.run_id(total)
    meta = {
        "run_id": run_id,
        "argv": _safe_argv([PROG, *argv]),
        "versions": versions(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "model": "open" if args.arrival_rate is not None else "closed",
        "config": {k: v for k, v in vars(args).items() if k not in ("process_count",)},
        "total_sessions": total,
        "processes": processes,
    }
    output_dir = Path(args.output_dir)
    if not child:  # a child's folder is a fresh one its parent chose
        output_dir, run_id = claim_output_dir(output_dir, run_id, meta, run_id_given=bool(args.run_id))
        meta["run_id"] = run_id
        if output_dir != Path(args.output_dir):
            print(f"{PROG}: {args.output_dir} holds an earlier run: this one goes to {output_dir}", file=sys.stderr)
    sess = SessionConfig(
        api_url=args.api_url.rstrip("/"),
        ws_url=args.ws_url.rstrip("/"),
        queries=args.queries,
        think_time=args.think_time,
        query_timeout=args.query_timeout,
        max_tokens=args.tokens,
        token_delay_ms=args.token_delay_ms,
        ttft_ms=args.ttft_ms,
        token_jitter_ms=args.token_jitter_ms,
        agent_id=args.agent_id,
        query_text=args.query_text,
        max_reconnect_attempts=args.max_reconnect_attempts,
        initial_backoff=args.initial_backoff,
        max_backoff=args.max_backoff,
        jitter=args.jitter,
        connect_timeout=args.connect_timeout,
        time_from_intended=args.arrival_rate is not None,
    )
    cfg = LoadConfig(
        session=sess,
        clients=args.clients,
        ramp=args.ramp,
        arrival_rate=args.arrival_rate,
        duration=args.duration,
        stages=parse_stages(args.stages) if args.stages else (),
        arrivals=args.arrivals,
        processes=processes,
        process_index=args.process_index,
        output_dir=output_dir,
        start_at=args.start_at,
        run_id=run_id,
        quiet=args.quiet,
        status_interval=args.status_interval,
        max_duration=args.max_duration,
        http_timeout=args.http_timeout,
        http_connections=args.http_connections,
        seed=args.seed,
        workload=workload,
        workload_seed=args.workload_seed,
        ca_file=args.ca_file,
        reconnect_rate=args.reconnect_rate,
        source_addresses=tuple(a.strip() for a in (args.source_addresses or "").split(",") if a.strip()),
    )
    meta["gc"] = _gc.tune()  # start-up is done: freeze it, collect rarely (kit/_gc.py)
    if processes > 1 and not child:
        cfg.output_dir.mkdir(parents=True, exist_ok=True)
        summary = run_parent(cfg, _child_config(args, cfg.output_dir), meta)
    else:
        summary = run_process(cfg, meta)
    if child:
        return 0
    print_summary(summary)
    print(f"results: {cfg.output_dir}", file=sys.stderr)
    status = summary.get("status", "failed")
    if status != "passed":
        print(f"{PROG}: run {status}: {summary.get('status_reason', '')}", file=sys.stderr)
    if summary.get("interrupted"):  # what was measured is written; the exit says how the run ended
        return 143 if summary["interrupted"] == ["SIGTERM"] else 130
    return 0 if args.exit_zero_on_failure else EXIT_BY_STATUS.get(status, 1)


def _analyze_parser() -> argparse.ArgumentParser:
    """``analyze``'s command line: result folders or CSV files, and ``--help`` (a path is never an option: one
    starting with ``-`` goes after ``--``)."""
    p = _Parser(
        prog=f"{PROG} analyze",
        description="Exact latency percentiles (nearest rank), a latency histogram and the error breakdown of "
        "result folders (their queries.csv) or CSV files, several at once; the seed's CSV (latency in seconds) too.",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="a result folder of python -m kit.client or a queries.csv")
    return p


def _results_command(argv: list[str]) -> int:
    from ._analyze import AnalyzeError, analyze, format_report
    from ._console import print_summary
    from ._output import merge_outputs

    try:
        if argv[0] == "analyze":
            paths = _analyze_parser().parse_args(argv[1:]).paths
            print(format_report(analyze([Path(p) for p in paths])))
        else:
            if len(argv) < 3:
                raise ConfigError(f"usage: {PROG} merge OUT_DIR IN_DIR [IN_DIR ...]")
            print_summary(merge_outputs([Path(p) for p in argv[2:]], Path(argv[1])))
    except (AnalyzeError, ValueError) as exc:  # bad inputs, not bugs in a run: the message names the file
        raise ConfigError(str(exc)) from None
    except OSError as exc:  # an unreadable input, an output folder that cannot be written
        if exc.filename is None:  # raised by the kit: its message names the file and the fix
            raise ConfigError(str(exc)) from None
        raise ConfigError(
            f"{exc.filename}: {exc.strerror or exc}: pass result folders you can read and an "
            "output folder you can write"
        ) from None
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if argv and argv[0] in ("analyze", "merge"):
            return _results_command(argv)
        return run_load(argv)
    except ConfigError as exc:  # one line, whatever the message held
        print(f"{PROG}: error: {'; '.join(x.strip() for x in str(exc).splitlines() if x.strip())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except RuntimeError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
