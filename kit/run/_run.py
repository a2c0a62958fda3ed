"""One ``fab run`` end to end, as phases: preflight, monitors, launch, chaos, watch, stop, collect, merge, record.

:func:`execute` owns every connection; :func:`_execute` owns every remote job the run starts
(host monitors, generators, chaos faults), each recorded in a :class:`Run` as it starts (and in
``results/<run-id>/jobs.json``, PIDs included) and stopped in its ONE ``finally`` whatever ended
the run: every generator exited, the ``--max-duration`` bound, a failure, Ctrl-C or SIGTERM.
What exists is then collected, merged and packed; a run that did not end normally is
``partial: true`` with the reason.  A job that survives its stop is reported in the run record
(``stop_problems``) and makes the run partial, never ignored.

Every host monitor also samples the CPU of the kit's own processes: before it starts, each
host's service PIDs are asked from its service manager (the kit's supervisord, else systemd;
never matched by process name) and written to the monitor's ``procs.txt``; each generator's PID
is appended once it started.  :mod:`._components` turns the samples into the run's
per-component cost and bottleneck.  A PID that cannot be resolved is reported in the run record
(``component_problems``), never fatal.

``--chaos`` faults (:mod:`._chaos`, :mod:`._faults`) run in their own threads at their time
relative to the agreed start; each becomes an event of ``summary.json`` with its recovery time
and what it cost (lost tokens, reconnects, failed queries).

A run is judged by its thresholds: the user's ``--threshold`` rules and, unless
``no_default_thresholds``, the documented defaults (:data:`kit.run._plan.DEFAULT_THRESHOLDS`:
``success>=99%``, ``lost==0``) on every metric the user did not name, so a run no one gave a
threshold cannot pass silently.  Each check says whether it was a default; a failed one is named on
its own line at the end.

Returns the process exit status: 0 pass, 1 a threshold failed, 3 partial run, 130 interrupted by
Ctrl-C (128 + the signal number for SIGTERM: 143); 2 bad options or failed preflight (raised as
:class:`RunError`).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import platform
import shlex
import shutil
import signal
import sys
import threading
import time
import zlib
from pathlib import Path, PurePosixPath
from typing import Any, Callable

import kit
from kit import contract, options
from kit._charts import server_series
from kit.config import ConfigError, setting
from kit.inventory import Host, Inventory, load_inventory

from . import _hostops as ops
from ._balancer import (backend_sizes, balancer_verdict, deployed_shutdown_sessions, server_events,
                        shutdown_sessions_on_down)
from ._series import scrape_lines, server_totals
from ._build import record_build
from ._chaos import ChaosError, ChaosSpec, attribute, parse_chaos, recovery, resolve_targets
from ._components import (bottleneck, component_costs, host_cpu_peaks, host_sockets, load_host_samples,
                          memory_per_session, sessions_held)
from ._faults import ChaosRunner, Fault
from ._fleet import groups_facts, source_addresses
from ._sizing import size_fleet
from ._exporter import LiveExporter, parse_listen
from ._prometheus import export_window, prometheus_url
from ._live import PlainView, View
from ._pack import pack_run, stripped_inventory
from ._plan import (PRESETS, GeneratorSlot, PlanError, Threshold, clock_offset, judged_thresholds, make_run_id,
                    plan_generators)
from ._remote import GroupException, close_all, connect, describe_failures, fan_out
from ._services import check_health, collect_server_stats, haproxy_urls, tls_ca_file, unhealthy
from ._summary import aggregate_status, evaluate_thresholds, live_failures
from ._svcmgr import host_programs, resolve_service_pids

__all__ = ["RunOptions", "RunError", "Interrupted", "execute", "preflight", "resolve_service_pids", "CLOCK_BOUND_S"]

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
HOSTMON_SRC = REPO / "kit" / "hostmon.py"
#: clocks further apart than this make cross-host token delivery latency unreliable (flagged)
CLOCK_BOUND_S = 0.005
START_LEAD_S = 3.0
GRACE_S = 30.0
#: seconds between polls of the generators' status (the live view's refresh; they write it every second)
POLL_S = 1.0
SERVICES_REQUIRED = contract.groups()
#: seconds a generator gets between SIGTERM and SIGKILL when the run stops it early
STOP_GRACE_S = 5.0
class RunError(RuntimeError):
    """The run cannot start (bad options, unhealthy services, insufficient limits); exit 2."""


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM reached the controller mid-run; the run stops its jobs and exits 128 + signum."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


#: the load options fab run takes, declared once in kit.options (fab=True): None is not given (the generator's own)
_GivenLoadOptions: Any = dataclasses.make_dataclass("GivenLoadOptions", options.given_fields(), kw_only=True)


@dataclasses.dataclass(kw_only=True)
class RunOptions(_GivenLoadOptions):
    """``fab run``'s options: the load options it takes (:class:`kit.options.LoadOptions`, ``fab=True``) and
    the run's own, declared below the same way (``setting``: default, flag, bounds, help); fabfile.py builds
    the task from these fields.  :meth:`resolve` checks them, once, before anything starts."""

    inventory: Path = setting(REPO / "inventory" / "local.yml", option="--inventory",
                              help="Ansible inventory to use (default inventory/local.yml)")
    preset: str | None = setting(None, option="--preset", help=f"{' | '.join(PRESETS)} (the seed's scenarios)")
    thresholds: list[Threshold] = setting(factory=list, option="--threshold",
                                          help="pass/fail rule, repeatable: 'p99<2s', 'p50<=500ms', 'success>=99.9%', "
                                               "'lost==0'; replaces the default on its metric")
    #: judge the run by ``thresholds`` alone, without the defaults (kit.run._plan.DEFAULT_THRESHOLDS)
    no_default_thresholds: bool = setting(False, option="--no-default-thresholds",
                                          help="judge the run by --threshold alone: without it, 'success>=99%' and "
                                               "'lost==0' apply to every metric no --threshold names")
    #: stop the run as soon as the live merge shows a threshold failed for good (._summary.live_failures)
    abort_on_fail: bool = setting(False, option="--abort-on-fail",
                                  help="stop the run as soon as a threshold has failed for good (judged every second "
                                       "on the live figures after --abort-grace); recorded as aborted, exit 1")
    #: seconds after the agreed start before --abort-on-fail judges (early percentiles rest on few samples)
    abort_grace: float = setting(10.0, option="--abort-grace", minimum=0.0,
                                 help="seconds after the start before --abort-on-fail judges")
    #: seconds past --max-duration before a generator counts as hung and is stopped
    grace: float = GRACE_S
    results_dir: Path = REPO / "results"
    run_id: str | None = setting(None, option="--run-id", help="name of the run (default <date>-<time>-c<clients>)")
    live: bool = True
    skip_health: bool = setting(False, option="--skip-health", help="do not check service health before the run")
    #: faults during the run (``ACTION:TARGET@AT[+FOR][=ARG]``, see :mod:`kit.run._chaos`)
    chaos: list[str] = setting(factory=list, option="--chaos",
                               help="fault during the run, repeatable: ACTION:TARGET@AT[+FOR][=ARG], e.g. "
                                    "kill:wsproxy@20s, restart:redis@30s, pause:wsproxy[1]@15s+5s, "
                                    "partition:wsproxy@40s+3s, delay:wsproxy@10s+20s=50ms, kill:wsproxy[all]@20s")
    #: a workload file (weighted classes of sessions, kit.client._workload), copied to every generator
    workload: Path | None = setting(None, option="--workload",
                                    help="workload file (YAML): weighted classes of sessions overriding the workload "
                                         "options, copied to every generator (README 'Workload')")
    #: https:// and wss:// toward the balancers (the haproxy role's haproxy_tls), verified against ca_file
    tls: bool = setting(False, option="--tls", help="https:// and wss:// toward the balancers (deployed with "
                                                    "haproxy_tls: true); generators verify the certificates against "
                                                    "the kit CA")
    #: the CA certificate generators trust with tls, copied to each (default: the kit CA in .secrets/)
    ca_file: Path | None = setting(None, option="--ca-file",
                                   help="with --tls: the CA certificate generators trust (default .secrets/kit_ca.crt)")
    #: ADDR:PORT where the run's live merged figures are served for Prometheus while it lasts (._exporter)
    metrics_listen: str | None = setting(None, option="--metrics-listen",
                                         help="ADDR:PORT where the run's live merged figures are served for "
                                              "Prometheus while it lasts (e.g. 0.0.0.0:9464; README 'Prometheus')")

    def resolve(self) -> None:
        """Apply the preset under explicit options and check every option (kit.options.check), once."""
        if self.preset is not None:
            if self.preset not in PRESETS:
                raise RunError(f"--preset {self.preset!r}: choose one of {', '.join(PRESETS)}")
            p = PRESETS[self.preset]
            self.clients = p.clients if self.clients is None else self.clients
            self.queries = p.queries if self.queries is None else self.queries
            self.ramp = p.ramp if self.ramp is None else self.ramp
        if self.clients is None:
            raise RunError("--clients: give a number of clients >= 1 (or --preset smoke)")
        if self.queries is None:
            self.queries = options.default("queries")
        declared = {f.name: f for f in dataclasses.fields(_GivenLoadOptions)}
        try:
            for name, f in declared.items():
                options.parse_option(f, getattr(self, name))
            # what was given over the declared defaults: a rule between two options sees both
            options.check({name: options.default(name) for name in declared} | self.load_options())
        except ConfigError as exc:
            raise RunError(str(exc)) from None
        if not 0 <= self.abort_grace <= self.max_duration:
            raise RunError(f"--abort-grace {self.abort_grace:g}: give seconds from 0 to --max-duration "
                           f"({self.max_duration:g})")
        self._resolve_workload()
        if self.metrics_listen is not None:
            try:
                parse_listen(self.metrics_listen)
            except ValueError as exc:
                raise RunError(str(exc)) from None
        for spec in self.chaos_specs():
            if spec.at_s + spec.for_s > self.max_duration:
                raise RunError(f"--chaos {spec.text!r}: ends at {spec.at_s + spec.for_s:g} s, after "
                               f"--max-duration {self.max_duration:g}")

    def load_options(self) -> dict[str, Any]:
        """The load options given (kit.options names; those not given left out)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(_GivenLoadOptions)
                if getattr(self, f.name) is not None}

    def _resolve_workload(self) -> None:
        from kit.client._workload import Workload, WorkloadError, draw_seed, duration_problems, load_workload

        wl = Workload()
        if self.workload is not None:
            try:
                wl = load_workload(self.workload)
            except WorkloadError as exc:
                raise RunError(str(exc)) from None
            self.workload_seed = draw_seed(wl, self.workload_seed)
        problems = duration_problems(wl, self.tokens, self.token_delay_ms, self.ttft_ms, self.token_jitter_ms)
        if problems:
            raise RunError(problems[0])

    def judged_by(self) -> list[Threshold]:
        """The thresholds the run is judged by: the user's, then each default on a metric they do not name."""
        return judged_thresholds(self.thresholds, defaults=not self.no_default_thresholds)

    def chaos_specs(self) -> list[ChaosSpec]:
        """The parsed ``--chaos`` specs; RunError (one line) for a bad one."""
        try:
            return [parse_chaos(t) for t in self.chaos]
        except ChaosError as exc:
            raise RunError(str(exc)) from None


def _say(msg: str) -> None:
    print(msg, flush=True)


def _fan(conns: list[Any], fn: Callable[[Any], Any], what: str, *, strict: bool = True) -> dict[Any, Any]:
    """fan_out; on failure either raise RunError naming each host, or return the partial results."""
    try:
        return dict(fan_out(conns, fn))
    except GroupException as exc:
        lines = describe_failures(exc)
        if strict:
            raise RunError(f"{what} failed on {len(lines)} host(s):\n  " + "\n  ".join(lines)) from None
        for line in lines:
            log.warning("%s: %s", what, line)
        return dict(exc.result)


def preflight(inv: Inventory, conns: dict[str, Any], plan_clients: int | None = None,
              skip_health: bool = False) -> dict[str, Any]:
    """Health, limits and clocks of every host; raises RunError on what would spoil the run."""
    inv.require_groups(*SERVICES_REQUIRED)
    problems: list[str] = []
    health = [] if skip_health else check_health(inv)
    problems += [f"unhealthy: {x}" for x in unhealthy(health)]
    order = list(conns.values())
    facts = {c.inventory_host.name: v for c, v in _fan(order, lambda c: ops.host_facts(
        c, c.inventory_host.kit_python, client_wrapper=c.inventory_host.client_wrapper,
        tuning_report=c.inventory_host.tuning_report), "reading host facts").items()}
    clocks = {}
    for c, samples in _fan(order, lambda c: ops.clock_samples(c, python=_system_python(c.inventory_host)),
                           "measuring clocks").items():
        clocks[c.inventory_host.name] = clock_offset(samples) | {"local": c.inventory_host.local}
    worst = max((abs(v["offset_s"]) + v["uncertainty_s"] for v in clocks.values()), default=0.0)
    caps: dict[str, Any] = {}
    gens = inv.groups["generators"]
    for name in gens:
        f = facts[name]
        if not f["kit_python"]:
            problems.append(f"{name}: {inv.hosts[name].kit_python} is missing: run `fab deploy` first")
    # sessions one process holds: the tuning role's figure (computed there only; without a report unknown)
    lbs = inv.group("haproxy")
    for h in lbs:
        nofile, cap, source = ops.open_file_limit(facts[h.name])
        share = None if plan_clients is None else -(-plan_clients // len(lbs))
        caps[h.name] = {"role": "haproxy", "nofile": nofile, "nofile_source": source, "max_sessions": cap,
                        "planned_sessions": share,
                        "note": f"one HAProxy process holds at most ~{cap} proxied sessions with nofile {nofile}"
                        if cap is not None else f"sessions per process unknown: {source}"}
    cores = {n: facts[n]["nproc"] for n in gens}
    if plan_clients is not None:
        slots = plan_generators(plan_clients, cores, [h.name for h in lbs])
        for name in gens:
            f = facts[name]
            mine = [s for s in slots if s.host == name]
            clients = sum(s.clients for s in mine)
            procs = max(1, sum(s.processes for s in mine))
            per_proc = -(-clients // procs)
            nofile, fd_cap, source = ops.open_file_limit(f)
            pr = f["port_range"] or [32768, 60999]
            per_lb: dict[str, int] = {}
            for s in mine:
                per_lb[s.haproxy] = per_lb.get(s.haproxy, 0) + s.clients
            addresses = max(1, len(source_addresses(inv.hosts[name])))
            port_cap = (pr[1] - pr[0] + 1) * addresses   # each source address has the whole range
            caps[name] = {"role": "generator", "clients": clients, "processes": procs, "clients_per_process": per_proc,
                          "nofile": nofile, "nofile_source": source, "max_clients_per_process_by_nofile": fd_cap,
                          "local_ports": port_cap, "source_addresses": addresses,
                          "max_clients_per_balancer_by_ports": port_cap}
            if fd_cap is not None and per_proc > fd_cap:
                problems.append(f"{name}: {per_proc} clients per process but a process holds ~{fd_cap} with its "
                                f"{nofile} open files ({source}): add generator hosts or cores")
            for lb, n in per_lb.items():
                if n > port_cap:   # one local port per WebSocket toward the balancer's WebSocket address:port
                    problems.append(f"{name}: {n} clients to {lb} need {n} local ports toward its WebSocket port but "
                                    f"ip_local_port_range gives {pr[1] - pr[0] + 1} per source address and the host "
                                    f"has {addresses}: widen the range (tuning role), add source addresses "
                                    "(generator_source_addresses) or add generator hosts")
    if plan_clients is not None:   # per group, what fab plan says: hosts the run needs against the inventory's
        needs = size_fleet(plan_clients, groups_facts(inv, facts))
        caps["plan"] = {n.group: {"needed": n.needed, "have": n.have, "limit": n.limit} for n in needs}
        problems += [f"the inventory cannot hold {plan_clients} sessions: {n.line()} (fab plan)"
                     for n in needs if not n.ok]
    return {"health": health, "facts": facts, "clocks": clocks, "clock_worst_s": worst,
            "clock_bound_s": CLOCK_BOUND_S, "clock_ok": worst <= CLOCK_BOUND_S, "caps": caps, "problems": problems}


def _client_argv(host: Host, slot: GeneratorSlot, opts: RunOptions, lb: Host, out_dir: str, start_at: float,
                 run_id: str, wrapper: str | None = None) -> list[str]:
    """The load client's command line: URLs, the slot's processes and start, and paths; the load itself is
    in the generator's settings file (:func:`generator_settings`, written by ``_phase_launch``).  Through
    the deployed ``kit-client`` wrapper when there is one (it adds the generator environment and open-file
    limit the Ansible role set up)."""
    api, ws = haproxy_urls(lb, opts.tls)
    prog = [wrapper] if wrapper else [host.kit_python, "-m", "kit.client"]
    argv = [*prog, "--api-url", api, "--ws-url", ws, "--settings", str(settings_path(out_dir)),
            "--processes", str(slot.processes), "--output-dir", out_dir, "--start-at", f"{start_at:.6f}",
            "--run-id", run_id, "--status-interval", "1", "--quiet",
            # sessions the server refused are a result (summary.json's status), not a crashed generator
            "--exit-zero-on-failure"]
    if opts.tls:  # the CA file is copied beside the generator's output (_phase_launch)
        argv += ["--ca-file", str(ca_path(out_dir))]
    if opts.workload is not None:  # the file is copied beside the generator's output (_phase_launch)
        argv += ["--workload", str(workload_path(out_dir))]
    return argv


def generator_settings(slot: GeneratorSlot, opts: RunOptions, sources: list[str] | None = None) -> dict[str, Any]:
    """One generator's settings file (kit.options.SETTINGS_FILE): the load options the run was given
    (checked by :meth:`RunOptions.resolve`; those not given are left to the generator), with its share of
    the sessions, of the ramp and of the arrivals, and a draw seed of its own (each generator draws its own
    sessions' classes: the same sessions would draw alike otherwise) and the source addresses its host's
    connections leave from (*sources*: the inventory's ``generator_source_addresses``)."""
    values = opts.load_options() | {"clients": slot.clients, "arrival_rate": slot.arrival_rate}
    if opts.ramp is not None:
        values["ramp"] = opts.ramp * slot.clients / opts.clients
    if slot.arrival_rate is None:
        values.pop("duration", None)
    values.pop("workload_seed", None)
    if opts.workload is not None:
        values["workload_seed"] = ((opts.workload_seed or 0) + zlib.crc32(slot.label.encode())) % 2**31
    if sources:
        values["source_addresses"] = ",".join(sources)
    return values


def settings_path(out_dir: str) -> PurePosixPath:
    """Where a generator's settings file goes: beside its output folder (collected with it)."""
    return PurePosixPath(out_dir).parent / options.SETTINGS_FILE


def ca_path(out_dir: str) -> PurePosixPath:
    """Where a generator's copy of the CA certificate goes (``--tls``): beside its output folder."""
    return PurePosixPath(out_dir).parent / "ca.crt"


def workload_path(out_dir: str) -> PurePosixPath:
    """Where a generator's copy of the workload file goes: beside its output folder."""
    return PurePosixPath(out_dir).parent / "workload.yml"



@dataclasses.dataclass
class GenJob:
    """One generator invocation (a ``kit.client`` process tree on one host)."""

    slot: GeneratorSlot
    dir: str
    start_at: float
    argv: list[str] | None = None
    pid: int | None = None
    #: its last state once it ended: job_state(), or {"hung": True} / {"stopped": why}
    final: dict[str, Any] | None = None
    status: dict[str, Any] | None = None
    out: Path | None = None


@dataclasses.dataclass
class Run:
    """Everything one run started or learned; the ``finally`` of :func:`_execute` stops what is here."""

    opts: RunOptions
    inv: Inventory
    conns: dict[str, Any]
    run_id: str
    run_dir: Path
    out: Callable[[str], None]
    #: the live view (:mod:`._live`); plain lines through ``out`` unless the caller gives one
    view: View
    #: called once with the outcome (exit status, paths, the summary) when the run is recorded
    on_result: Callable[[dict[str, Any]], None] | None = None
    t_begin: float = dataclasses.field(default_factory=time.time)
    phase: str = "preflight"
    pre: dict[str, Any] = dataclasses.field(default_factory=dict)
    slots: list[GeneratorSlot] = dataclasses.field(default_factory=list)
    faults: list[Fault] = dataclasses.field(default_factory=list)
    #: host -> remote folder of the run (``<kit_root>/runs/<run-id>``)
    remote_root: dict[str, str] = dataclasses.field(default_factory=dict)
    #: host -> remote folder of its started host monitor
    monitors: dict[str, str] = dataclasses.field(default_factory=dict)
    gens: dict[str, GenJob] = dataclasses.field(default_factory=dict)
    chaos: ChaosRunner | None = None
    #: the --metrics-listen endpoint (started after the preflight, closed with the run's jobs)
    exporter: LiveExporter | None = None
    start_at: float | None = None
    partial_reasons: list[str] = dataclasses.field(default_factory=list)
    #: set when --abort-on-fail stopped the run: the threshold(s), their live values, the second
    aborted: dict[str, Any] | None = None
    stop_problems: list[str] = dataclasses.field(default_factory=list)
    service_pids: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    component_problems: list[str] = dataclasses.field(default_factory=list)
    missing_metrics: list[str] = dataclasses.field(default_factory=list)
    log_problems: list[str] = dataclasses.field(default_factory=list)
    stats_problems: list[str] = dataclasses.field(default_factory=list)
    prometheus_problems: list[str] = dataclasses.field(default_factory=list)
    #: balancer host -> does its deployed haproxy.cfg close a server's sessions when marking it DOWN
    shutdown_sessions: dict[str, bool] = dataclasses.field(default_factory=dict)
    interrupted_by: int | None = None
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False)

    def host_of(self, c: Any) -> str:
        return c.inventory_host.name

    def labels_on(self, host: str) -> list[str]:
        return [lbl for lbl, g in self.gens.items() if g.slot.host == host]

    def write_jobs(self) -> None:
        """``jobs.json``: every remote job of the run with its host, folder and PID (what to clean up by hand)."""
        with self._lock:
            data = {"monitors": {h: {"dir": d, "pid": self.service_pids.get(h, {}).get("_monitor_pid")}
                                 for h, d in self.monitors.items()},
                    "generators": {lbl: {"host": g.slot.host, "dir": g.dir, "pid": g.pid}
                                   for lbl, g in self.gens.items()},
                    "faults": [{"spec": f.spec.text, "host": f.target.host, "program": f.target.program}
                               for f in self.faults]}
            (self.run_dir / "jobs.json").write_text(json.dumps(data, indent=2) + "\n")


def execute(opts: RunOptions, *, out: Callable[[str], None] = _say, view: View | None = None,
            on_result: Callable[[dict[str, Any]], None] | None = None) -> int:
    """Run the benchmark described by *opts*; return the exit status (see the module docstring).

    Every human line goes through *out*; the live view (``opts.live``) through *view* (default: plain
    lines through *out*).  *on_result* gets the recorded outcome: ``exit_status``, ``outcome`` (pass,
    threshold_failed, partial, interrupted), ``run_id``, ``results_dir``, ``tarball`` and ``summary``
    (what ``fab run --json`` prints).
    """
    try:
        opts.resolve()
    except PlanError as exc:
        raise RunError(str(exc)) from None
    inv = load_inventory(opts.inventory)
    _resolve_tls(opts, inv)
    if opts.metrics_listen is None and inv.monitoring is not None:
        # the monitoring role scrapes the controller there: serve it without being asked
        opts.metrics_listen = inv.monitoring.vars.get("monitoring_controller_target") or None
    opts.results_dir.mkdir(parents=True, exist_ok=True)
    taken = [p.name for p in opts.results_dir.iterdir()]
    run_id = opts.run_id or make_run_id(opts.clients, taken=taken)
    run_dir = opts.results_dir / run_id
    if run_dir.exists():
        raise RunError(f"{run_dir} already exists: choose another --run-id")
    conns = {name: connect(h) for name, h in inv.hosts.items()}
    restore = _trap_signals()
    try:
        return _execute(Run(opts=opts, inv=inv, conns=conns, run_id=run_id, run_dir=run_dir, out=out,
                            view=view or PlainView(out), on_result=on_result))
    finally:
        close_all(conns.values())
        restore()


def _resolve_tls(opts: RunOptions, inv: Inventory) -> None:
    """With ``--tls``: the CA file generators get (default the kit CA); RunError when it is missing."""
    if not opts.tls:
        if opts.ca_file is not None:
            raise RunError("--ca-file goes with --tls: add --tls (the balancers must terminate TLS)")
        return
    opts.ca_file = opts.ca_file or tls_ca_file(inv)
    if not opts.ca_file.is_file():
        raise RunError(f"--tls: no CA certificate at {opts.ca_file}: deploy with haproxy_tls: true (the haproxy "
                       "role makes the kit CA there) or pass --ca-file")


def _trap_signals() -> Callable[[], None]:
    """SIGINT and SIGTERM raise :class:`Interrupted` (once: while the run cleans up, further ones are
    noted and ignored, so a second Ctrl-C cannot leave jobs behind).  Returns the undo."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    seen: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        if seen:
            print(f"  ({signal.Signals(signum).name} again: still stopping the run's remote jobs; "
                  "every command is bounded)", file=sys.stderr, flush=True)
            return
        seen.append(signum)
        raise Interrupted(signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    return lambda: [signal.signal(s, h) for s, h in old.items()] and None


def _execute(run: Run) -> int:
    """The phases; the one try/finally owns every remote job the run starts."""
    _phase_preflight(run)   # starts nothing remote: a RunError here is exit 2
    try:
        _phase_monitors(run)
        _phase_launch(run)
        _phase_chaos(run)
        _phase_watch(run)
    except Interrupted as exc:
        run.interrupted_by = exc.signum
        run.partial_reasons.append(f"interrupted by {signal.Signals(exc.signum).name} during {run.phase}: "
                                   "every job was stopped and what existed was collected")
        run.out(f"  {signal.Signals(exc.signum).name}: stopping every remote job of the run")
    except RunError:
        raise
    except Exception as exc:  # a failure mid-run: stop, then collect what exists
        log.exception("run failed during %s", run.phase)
        run.partial_reasons.append(f"failed during {run.phase}: {type(exc).__name__}: {exc}")
    finally:
        _stop_everything(run)
        if run.exporter is not None:
            run.exporter.close()
    _phase_collect(run)
    summary = _phase_merge(run)
    return _phase_record(run, summary)


def _phase_preflight(run: Run) -> None:
    opts, inv = run.opts, run.inv
    specs = opts.chaos_specs()
    run.out(f"run {run.run_id}: {opts.clients} clients x {opts.queries} queries over inventory {opts.inventory}")
    pre = preflight(inv, run.conns, opts.clients, skip_health=opts.skip_health)
    for name, cap in pre["caps"].items():
        run.out(f"  caps {name}: " + ", ".join(f"{k}={v}" for k, v in cap.items() if k not in ("note",)))
    if not pre["clock_ok"]:
        run.out(f"  WARNING: host clocks differ by up to {pre['clock_worst_s'] * 1000:.2f} ms (bound "
                f"{CLOCK_BOUND_S * 1000:.1f} ms): cross-host token delivery latency is unreliable")
    if pre["problems"]:
        raise RunError("preflight failed:\n  " + "\n  ".join(pre["problems"]))
    programs = {h: host_programs(inv, h) for h in inv.hosts}
    try:
        run.faults = [Fault(spec=s, target=t, index=i) for i, (s, t) in enumerate(
            (s, t) for s in specs for t in resolve_targets(s, inv, programs))]
    except ChaosError as exc:
        raise RunError(str(exc)) from None
    run.pre = pre
    gens = {n: pre["facts"][n]["nproc"] for n in inv.groups["generators"]}
    run.slots = plan_generators(opts.clients, gens, inv.groups["haproxy"], opts.arrival_rate)
    run.remote_root = {n: f"{h.kit_root}/runs/{run.run_id}" for n, h in inv.hosts.items()}
    if opts.metrics_listen is not None:
        try:
            run.exporter = LiveExporter(opts.metrics_listen, run.run_id, str(opts.inventory))
        except ValueError as exc:
            raise RunError(str(exc)) from None
        host, port = run.exporter.address
        run.out(f"  live metrics for Prometheus at http://{host}:{port}/metrics while the run lasts")
    run.run_dir.mkdir(parents=True)
    (run.run_dir / "preflight.json").write_text(json.dumps(pre, indent=2, default=str) + "\n")


def _procs_file(run: Run, host: str) -> str:
    return f"{run.remote_root[host]}/hostmon/procs.txt"


def _phase_monitors(run: Run) -> None:
    """A host monitor on every host for the whole run (bounded by itself); the monitor is one
    self-contained file copied over, run by the kit's venv or, where the kit is not installed (e.g.
    a balancer host), by the host's python3.  Each samples the kit's processes of its host: the
    services' PIDs now, the generators' once they started (appended to procs.txt)."""
    run.phase = "starting host monitors"
    bound = run.opts.max_duration + run.opts.grace

    def start_monitor(c: Any) -> int:
        h = c.inventory_host
        d = f"{run.remote_root[h.name]}/hostmon"
        c.run(f"mkdir -p {shlex.quote(d)}", timeout=ops.CMD_TIMEOUT)
        c.put(str(HOSTMON_SRC), f"{d}/hostmon.py")
        pids, problems = resolve_service_pids(c, run.inv)
        with run._lock:
            run.service_pids[h.name] = {prog: pid for prog, (_, pid) in pids.items()}
            run.component_problems.extend(f"{p}; its CPU is not counted" for p in problems)
        lines = "".join(f"{component} {pid}\n" for component, pid in pids.values() if pid)
        c.run(f"printf %s {shlex.quote(lines)} > {shlex.quote(_procs_file(run, h.name))}", timeout=ops.CMD_TIMEOUT)
        scrape = f"{d}/scrape.txt"   # what the host's services say of themselves, every second (kit/run/_series.py)
        c.run(f"printf %s {shlex.quote(scrape_lines(run.inv, h))} > {shlex.quote(scrape)}", timeout=ops.CMD_TIMEOUT)
        py = h.kit_python if run.pre["facts"][h.name]["kit_python"] else _system_python(h)
        with run._lock:
            run.monitors[h.name] = d   # owned from here on: stopped in the finally
        pid = ops.start_job(c, d, [py, f"{d}/hostmon.py", f"{d}/host.jsonl", "--interval", "1",
                                   "--duration", f"{bound + 60:g}", "--procs", _procs_file(run, h.name),
                                   "--scrape", scrape])
        with run._lock:
            run.service_pids[h.name]["_monitor_pid"] = pid
        return pid

    try:
        _fan(list(run.conns.values()), start_monitor, "starting host monitors")
    finally:
        run.write_jobs()
    for p in run.component_problems:
        run.out(f"  WARNING: component CPU: {p}")


def _phase_launch(run: Run) -> None:
    """Every generator at one agreed instant, in each host's own clock."""
    run.phase = "starting generators"
    opts, inv = run.opts, run.inv
    run.start_at = start_at = time.time() + START_LEAD_S + 0.2 * len(run.slots)
    for s in run.slots:
        run.gens[s.label] = GenJob(slot=s, dir=f"{run.remote_root[s.host]}/gen-{s.label}",
                                   start_at=start_at + run.pre["clocks"][s.host]["offset_s"])

    def launch(c: Any) -> list[int]:
        pids = []
        host = run.host_of(c)
        for label in run.labels_on(host):
            g = run.gens[label]
            g.argv = _client_argv(c.inventory_host, g.slot, opts, inv.hosts[g.slot.haproxy], f"{g.dir}/out",
                                  g.start_at, run.run_id, run.pre["facts"][host].get("kit_client"))
            c.run(f"mkdir -p {shlex.quote(g.dir)}", timeout=ops.CMD_TIMEOUT)
            # its options, kept with the run's results (settings/<label>.json) and copied beside its output
            local = options.write_settings(run.run_dir / "settings" / f"{label}.json", generator_settings(
                g.slot, opts, source_addresses(run.inv.hosts[g.slot.host])))
            c.put(str(local), str(settings_path(f"{g.dir}/out")))
            if opts.workload is not None:  # the generator reads the file the controller checked
                c.put(str(opts.workload), str(workload_path(f"{g.dir}/out")))
            if opts.tls:  # a remote generator verifies the balancers' certificates against its own copy
                c.put(str(opts.ca_file), str(ca_path(f"{g.dir}/out")))
            g.pid = ops.start_job(c, g.dir, g.argv)
            pids.append(g.pid)
            c.run(f"echo 'client {g.pid}' >> {shlex.quote(_procs_file(run, host))}", timeout=ops.CMD_TIMEOUT)
        return pids

    try:
        launched = _fan([run.conns[h] for h in {g.slot.host for g in run.gens.values()}], launch,
                        "starting generators", strict=False)
    finally:
        run.write_jobs()
    for c, v in launched.items():
        if isinstance(v, BaseException):
            run.partial_reasons.append(f"{run.host_of(c)}: could not start: {v}")
            for lbl in run.labels_on(run.host_of(c)):
                run.gens[lbl].final = run.gens[lbl].final or {"rc": None, "alive": False, "status": None,
                                                               "launch_failed": True}
    run.out(f"  {len(run.slots)} generator invocation(s) start at "
            f"{time.strftime('%H:%M:%S', time.localtime(start_at))} "
            f"({', '.join(f'{s.label}:{s.clients}c/{s.processes}p->{s.haproxy}' for s in run.slots)})")


def _phase_chaos(run: Run) -> None:
    if not run.faults:
        return
    run.phase = "scheduling faults"
    assert run.start_at is not None
    run.chaos = ChaosRunner(run.faults, run.inv, run.start_at, run.remote_root, run.out)
    run.chaos.start()
    run.out("  chaos: " + ", ".join(f"{f.spec.text} -> {f.target.label()}" for f in run.faults))


def _phase_watch(run: Run) -> None:
    """Poll every generator until each has exited or the bound is reached; show the live view
    (rates and latency percentiles of the last interval); the in-place view ends with the phase."""
    run.phase = "watching generators"
    try:
        _watch(run)
    finally:
        run.view.close()


def _watch(run: Run) -> None:
    opts = run.opts
    assert run.start_at is not None
    deadline = run.start_at + opts.max_duration + opts.grace
    prev_agg: dict[str, Any] | None = None
    while True:
        live = {lbl: g for lbl, g in run.gens.items() if g.final is None}
        if not live:
            return
        polled = _fan([run.conns[h] for h in {g.slot.host for g in live.values()}],
                      lambda c: {lbl: ops.job_state(c, run.gens[lbl].dir, "out/status.json")
                                 for lbl in run.labels_on(run.host_of(c)) if lbl in live},
                      "polling generators", strict=False)
        for v in polled.values():
            if isinstance(v, BaseException):
                continue
            for lbl, st in v.items():
                g = run.gens[lbl]
                g.status = st["status"] or g.status
                if st["rc"] is not None or not st["alive"]:
                    g.final = st
        now = time.time()
        agg = aggregate_status({lbl: g.status for lbl, g in run.gens.items()}, prev_agg, now)
        prev_agg = agg
        if opts.live and now >= run.start_at:
            run.view.show(agg, now - run.start_at)
        if run.exporter is not None:
            run.exporter.update(agg, now - run.start_at)
        if opts.abort_on_fail and now - run.start_at >= opts.abort_grace and _abort_if_failed(run, agg, now):
            return
        if now > deadline:
            for lbl, g in live.items():
                if g.final is None:
                    run.partial_reasons.append(f"{lbl}: still running after --max-duration {opts.max_duration:g} s "
                                               f"+ {opts.grace:g} s grace; stopped")
                    g.final = {"rc": None, "alive": True, "status": None, "hung": True}
            return
        time.sleep(POLL_S)  # the live view's refresh period


def _abort_if_failed(run: Run, agg: dict[str, Any], now: float) -> bool:
    """--abort-on-fail: True (and the run marked aborted) when the live merge shows a threshold failed."""
    opts = run.opts
    failed = live_failures(agg, opts.judged_by(), sessions=opts.clients,
                           queries=None if opts.workload is not None else (opts.clients or 0) * (opts.queries or 0))
    if not failed:
        return False
    assert run.start_at is not None
    run.aborted = {"at_s": round(now - run.start_at, 3), "threshold": failed[0]["threshold"], "failed": failed,
                   "grace_s": opts.abort_grace}
    run.out(f"  ABORTING at t={now - run.start_at:.0f}s: threshold {failed[0]['threshold']} has failed "
            f"(live value {failed[0]['actual']:g}{' ' + failed[0]['unit'] if failed[0]['unit'] else ''}): "
            "stopping every generator (--abort-on-fail)")
    return True


def _stop_everything(run: Run) -> None:
    """Undo the faults, stop every generator still alive and every host monitor; record what survived."""
    run.phase = "stopping"
    if run.chaos is not None:
        run.stop_problems += run.chaos.stop()
    alive = [lbl for lbl, g in run.gens.items() if g.pid and (g.final is None or g.final.get("hung"))]
    for lbl in alive:
        if run.gens[lbl].final is None:
            run.gens[lbl].final = {"rc": None, "alive": True, "status": None, "stopped": True}

    def stop_gens(c: Any) -> dict[str, list[int]]:
        return {lbl: ops.stop_job(c, run.gens[lbl].dir, grace=STOP_GRACE_S)
                for lbl in run.labels_on(run.host_of(c)) if lbl in alive}

    for what, conns, fn in (
            ("stopping generators", [run.conns[h] for h in {run.gens[lbl].slot.host for lbl in alive}], stop_gens),
            ("stopping host monitors", [run.conns[h] for h in run.monitors],
             lambda c: ops.stop_job(c, run.monitors[run.host_of(c)], grace=3))):
        if not conns:
            continue
        try:
            fan_out(conns, fn)
        except GroupException as exc:
            run.stop_problems += [f"{what}: {line}" for line in describe_failures(exc)]
    for p in run.stop_problems:
        run.out(f"  WARNING: {p}")


def _phase_collect(run: Run) -> None:
    """Generator outputs, host monitors, logs, server stats: whatever exists."""
    run.phase = "collecting"
    run.out("  collecting results")
    ended = time.time()
    gen_hosts = sorted({g.slot.host for g in run.gens.values() if g.pid})

    def collect_gens(c: Any) -> None:
        for lbl in run.labels_on(run.host_of(c)):
            dest = run.run_dir / "generators" / lbl
            ops.fetch_dir(c, run.gens[lbl].dir, dest)
            run.gens[lbl].out = dest / "out"

    got = _fan([run.conns[h] for h in gen_hosts], collect_gens, "collecting generator outputs", strict=False)
    run.partial_reasons += [f"{run.host_of(c)}: collecting outputs failed: {v}" for c, v in got.items()
                            if isinstance(v, BaseException)]
    for lbl, g in run.gens.items():
        st = g.final or {}
        if st.get("rc") not in (0, None) or (st.get("rc") is None and not st.get("alive")
                                             and not st.get("launch_failed")):
            tail = _tail(run.run_dir / "generators" / lbl / "out.log")
            run.partial_reasons.append(f"{lbl}: generator exited with status {st.get('rc')}"
                                       + (f": {tail}" if tail else f" (see generators/{lbl}/out.log)"))
    mons = _fan([run.conns[h] for h in run.monitors], lambda c: ops.fetch_dir(
        c, run.monitors[run.host_of(c)], run.run_dir / "hosts" / run.host_of(c)),
        "collecting host metrics", strict=False)
    run.missing_metrics = [run.host_of(c) for c, v in mons.items() if isinstance(v, BaseException)]
    from ._logs import fetch_logs
    run.log_problems = fetch_logs(run.inv, run.conns, run.run_dir / "logs")
    policy = _fan([run.conns[h.name] for h in run.inv.group("haproxy") if h.name in run.conns],
                  lambda c: deployed_shutdown_sessions(c, c.inventory_host), "reading the balancers' check policy",
                  strict=False)
    run.shutdown_sessions = {run.host_of(c): v for c, v in policy.items() if isinstance(v, bool)}
    run.stats_problems = collect_server_stats(run.inv, run.run_dir / "server")
    if run.inv.monitoring is not None and run.start_at is not None:
        run.out(f"  exporting the run's window from Prometheus ({prometheus_url(run.inv)})")
        run.prometheus_problems = export_window(run.inv, run.start_at, ended, run.run_dir / "prometheus")


def _phase_merge(run: Run) -> dict[str, Any]:
    """Merge what every generator left; cost every component; evaluate each fault's recovery."""
    run.phase = "merging"
    from kit.client import merge_outputs
    outs = {lbl: g.out for lbl, g in run.gens.items() if g.out is not None}
    usable = [p for _, p in sorted(outs.items()) if (p / "histograms.json").exists()]
    for lbl in run.gens:
        if lbl not in outs or not (outs[lbl] / "histograms.json").exists():
            if not any(r.startswith(f"{lbl}:") for r in run.partial_reasons):
                run.partial_reasons.append(f"{lbl}: no results (histograms.json missing)")
    summary: dict[str, Any] = merge_outputs(usable, run.run_dir) if usable else {"total_sessions": 0}
    client_cpu: dict[str, float] = {}
    for lbl, p in outs.items():  # what each generator measured of itself at exit (getrusage)
        host = run.gens[lbl].slot.host
        client_cpu[host] = client_cpu.get(host, 0.0) + sum(float(r.get("cpu_s") or 0.0) for r in _runs_of([p]))
    samples = load_host_samples(run.run_dir)
    summary["components"] = component_costs(samples, summary.get("total_tokens"),
                                            {n: f.get("nproc") for n, f in run.pre["facts"].items()}, client_cpu)
    summary["bottleneck"] = bottleneck(summary["components"], host_cpu_peaks(samples))
    if not summary["components"]:
        run.component_problems.append("no per-process CPU samples: no component costs for this run")
    timeline = _read_csv(run.run_dir / "timeline.csv")
    peak = max((int(float(r.get("active_sessions") or 0)) for r in timeline), default=0)
    share = {h: sum(s.clients for s in run.slots if s.host == h) / max(1, run.opts.clients or 0) for h in
             {s.host for s in run.slots}}
    memory_per_session(summary["components"], sessions_held(
        server_series(samples, run.start_at or 0.0), {h: peak * f for h, f in share.items()}))
    summary["hosts_sockets"] = host_sockets(samples)
    summary["ramp_s"] = ramp_seconds(timeline, run.start_at, peak)
    summary["events"] = _fault_events(run)
    summary["server_totals"] = server_totals(samples)
    if run.start_at is not None:  # what the balancers decided meanwhile, from their own logs
        summary["server_events"] = server_events(run.run_dir / "logs", [h.name for h in run.inv.group("haproxy")],
                                                 run.start_at, time.time())
        summary["balancer_verdict"] = balancer_verdict(summary["server_events"], backend_sizes(run.inv),
                                                       shutdown_sessions_on_down(run.inv) | run.shutdown_sessions)
    return summary


def ramp_seconds(timeline: list[dict[str, str]], start_at: float | None, peak: int) -> float | None:
    """Seconds from the agreed start to the first second that held 99 % of the run's peak active sessions."""
    if start_at is None or peak <= 0:
        return None
    for r in sorted(timeline, key=lambda r: int(r["second"])):
        if int(float(r.get("active_sessions") or 0)) >= 0.99 * peak:
            return round(max(0.0, int(r["second"]) + 1 - start_at), 1)
    return None


def _fault_events(run: Run) -> list[dict[str, Any]]:
    """summary.json's events: each fault with its recovery and what it cost (from timeline.csv, queries.csv)."""
    if run.chaos is None or run.start_at is None:
        return []
    rows = _read_csv(run.run_dir / "timeline.csv")
    queries = [q for q in _read_csv(run.run_dir / "queries.csv") if q.get("lost") not in (None, "", "0")]
    last = max((int(r["second"]) + 1 for r in rows), default=0)
    events = []
    for ev in run.chaos.events():
        if ev["started_at"] is not None and ev["ok"]:
            end = ev["ended_at"] or ev["started_at"]
            rec = recovery(rows, ev["started_at"], end)
            until = rec["recovered_at"] if rec["recovered_at"] is not None else max(last, end)
            ev |= {"recovery": rec, "recovery_s": rec["recovery_s"]} | attribute(rows, queries, ev["started_at"], until)
        events.append(ev)
    return events


def _phase_record(run: Run, summary: dict[str, Any]) -> int:
    """summary.json, run.json, the inventory, the report and the tarball; the exit status."""
    run.phase = "recording"
    opts, pre = run.opts, run.pre
    if run.stop_problems:
        run.partial_reasons += [f"left behind: {p}" for p in run.stop_problems]
    usable = [g.out for g in run.gens.values() if g.out is not None and (g.out / "histograms.json").exists()]
    checks = evaluate_thresholds(summary, opts.judged_by())
    skews = [r.get("start_skew_s") for r in _runs_of(usable) if r.get("start_skew_s") is not None]
    run_rec = {
        "run_id": run.run_id, "partial": bool(run.partial_reasons), "partial_reasons": run.partial_reasons,
        "interrupted": signal.Signals(run.interrupted_by).name if run.interrupted_by else None,
        "started": run.t_begin, "ended": time.time(), "start_at": run.start_at,
        "start_skew_s": {"max": max(skews, default=None), "min": min(skews, default=None),
                         "spread": (max(skews) - min(skews)) if skews else None, "per_process": skews},
        "clock": {"worst_s": pre["clock_worst_s"], "bound_s": CLOCK_BOUND_S, "ok": pre["clock_ok"],
                  "offsets": pre["clocks"],
                  "note": "" if pre["clock_ok"] else "cross-host delivery latency unreliable: clocks exceed the bound"},
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(opts).items()
                   if k not in ("thresholds", "no_default_thresholds")}
        | {"thresholds": [t.text for t in opts.thresholds], "default_thresholds": not opts.no_default_thresholds},
        "slots": [dataclasses.asdict(s) | {"argv": run.gens[s.label].argv, "host_start_at": run.gens[s.label].start_at}
                  for s in run.slots],
        "thresholds": checks, "thresholds_passed": all(c["passed"] for c in checks),
        "aborted": run.aborted,
        "missing_host_metrics": run.missing_metrics, "log_problems": run.log_problems,
        "stats_problems": run.stats_problems, "stop_problems": run.stop_problems,
        "prometheus_problems": run.prometheus_problems,
        "service_pids": {n: {p: v for p, v in pids.items() if not p.startswith("_")}
                         for n, pids in run.service_pids.items()},
        "monitor_pids": {n: pids.get("_monitor_pid") for n, pids in run.service_pids.items()},
        "generator_pids": {lbl: g.pid for lbl, g in run.gens.items()},
        "component_problems": run.component_problems,
        "versions": _versions(pre["facts"]),
        "build": record_build(run.inv, run.conns),  # which wsproxy build was measured (fab compare shows it)
        "inventory": run.inv.describe(),
    }
    summary["run"] = run_rec
    _record_workload(run, summary)
    summary["partial"] = run_rec["partial"]
    (run.run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    (run.run_dir / "run.json").write_text(json.dumps(run_rec, indent=2, default=str) + "\n")
    (run.run_dir / "inventory.yml").write_text(stripped_inventory(run.inv))
    from kit.report import failed_threshold_lines, write_report
    text = write_report(run.run_dir)
    tarball = pack_run(run.run_dir)
    run.out(text)
    run.out(f"results: {run.run_dir}  tarball: {tarball}")
    for line in failed_threshold_lines(checks):
        run.out(line)
    failed = [c["threshold"] for c in checks if not c["passed"]]
    if run.interrupted_by:
        run.out("INTERRUPTED RUN: " + "; ".join(run.partial_reasons))
        rc, outcome = 128 + run.interrupted_by, "interrupted"
    elif run.aborted is not None:
        run.out(f"ABORTED RUN at t={run.aborted['at_s']:g}s: threshold {run.aborted['threshold']} failed while the run "
                "went (--abort-on-fail); what the generators had done is recorded")
        rc, outcome = 1, "aborted"
    elif run.partial_reasons:
        run.out("PARTIAL RUN: " + "; ".join(run.partial_reasons)
                + (f" (and {len(failed)} threshold(s) failed: {', '.join(failed)})" if failed else ""))
        rc, outcome = 3, "partial"
    else:
        rc, outcome = (0, "pass") if run_rec["thresholds_passed"] else (1, "threshold_failed")
    if run.on_result is not None:
        run.on_result({"exit_status": rc, "outcome": outcome, "failed_thresholds": failed, "aborted": run.aborted,
                       "run_id": run.run_id, "results_dir": str(run.run_dir),
                       "tarball": str(tarball), "summary": summary})
    return rc


def _record_workload(run: Run, summary: dict[str, Any]) -> None:
    """The run's workload as the controller knows it: the file (copied beside the results) and the seed
    every generator's derives from, in summary.json and meta.json (merged by kit.client)."""
    opts, wl = run.opts, summary.get("workload")
    if opts.workload is not None:
        shutil.copyfile(opts.workload, run.run_dir / "workload.yml")
        if wl:
            wl.pop("sources", None)  # each generator's copy
            wl.update(source=str(opts.workload), seed=opts.workload_seed, seed_per_generator="seed + crc32(label)")
    try:
        meta = json.loads((run.run_dir / "meta.json").read_text())
    except (OSError, ValueError):
        meta = {}
    (run.run_dir / "meta.json").write_text(json.dumps({**meta, "workload": wl}, indent=2, default=str) + "\n")


def _read_csv(path: Path) -> list[dict[str, str]]:
    try:
        with open(path, newline="") as fh:
            return list(csv.DictReader(fh))
    except OSError:
        return []


def _system_python(h: Host) -> str:
    interp = str(h.vars.get("ansible_python_interpreter") or "")
    return interp if interp.startswith("/") else "python3"


def _tail(path: Path) -> str:
    try:
        lines = [x for x in path.read_text(errors="replace").splitlines() if x.strip()]
    except OSError:
        return ""
    return lines[-1][-300:] if lines else ""


def _runs_of(dirs: list[Path]) -> list[dict[str, Any]]:
    runs = []
    for d in dirs:
        try:
            runs += json.loads((d / "histograms.json").read_text()).get("runs", [])
        except (OSError, ValueError):
            pass
    return runs


def _kit_version() -> str:
    # importlib.metadata, not kit.__version__: an editable install made before kit/__init__.py
    # existed resolves ``kit`` as a namespace package (no attributes) outside the repository root
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("wsproxy-loadkit")
    except PackageNotFoundError:
        return getattr(kit, "__version__", "unknown")


def _versions(facts: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {"kit_controller": _kit_version(), "python_controller": platform.python_version(),
            "hosts": {n: {k: f.get(k) for k in ("kit_version", "haproxy_version", "redis_version", "kernel")
                          if f.get(k)} for n, f in facts.items()},
            "argv": sys.argv}
