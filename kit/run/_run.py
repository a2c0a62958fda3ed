"""One ``fab run`` end to end, as phases: preflight, monitors, launch, chaos, watch, stop, collect, merge, record.

The options are :mod:`._options` (:class:`RunOptions`, checked once before anything starts); the
preflight's records are :mod:`._preflight`; this module runs the phases over them.

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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kit
from kit import options
from kit._charts import server_series
from kit.inventory import Host, Inventory, load_inventory
from kit.metrics import SecondHistograms

from . import _hostops as ops
from ._balancer import (
    backend_sizes,
    balancer_verdict,
    deployed_shutdown_sessions,
    server_events,
    shutdown_sessions_on_down,
)
from ._build import record_build
from ._chaos import ChaosError, attribute, recovery, resolve_targets
from ._components import (
    bottleneck,
    component_costs,
    host_cpu_peaks,
    host_sockets,
    idle_window,
    load_host_samples,
    memory_per_session,
    sessions_held,
)
from ._exporter import LiveExporter
from ._faults import ChaosRunner, Fault
from ._fleet import source_addresses
from ._jobwatch import JobWatch
from ._live import PlainView, View
from ._options import REPO, RunError, RunOptions, ca_path, generator_settings, settings_path, workload_path
from ._pack import pack_run, stripped_inventory
from ._plan import GeneratorSlot, PlanError, make_run_id, plan_generators
from ._planfile import PLAN_FILE
from ._preflight import CLOCK_BOUND_S, Preflight, fan, inspect_hosts, system_python
from ._prometheus import export_window, prometheus_url
from ._remote import Conn, GroupException, close_all, connect, describe_failures, fan_out
from ._series import scrape_lines, server_totals
from ._services import collect_server_stats, haproxy_urls, tls_ca_file
from ._stagefigures import stage_figures, stage_windows
from ._summary import aggregate_status, evaluate_thresholds, live_failures
from ._svcmgr import host_programs, resolve_service_pids

__all__ = ["Interrupted", "Run", "execute", "ramp_seconds"]

log = logging.getLogger(__name__)

HOSTMON_SRC = REPO / "kit" / "hostmon.py"
START_LEAD_S = 3.0
#: seconds between polls of the generators' status (the live view's refresh; they write it every second)
POLL_S = 1.0
#: seconds a generator gets between SIGTERM and SIGKILL when the run stops it early
STOP_GRACE_S = 5.0


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM reached the controller mid-run; the run stops its jobs and exits 128 + signum."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _say(msg: str) -> None:
    print(msg, flush=True)


def _client_argv(
    host: Host,
    slot: GeneratorSlot,
    opts: RunOptions,
    lb: Host,
    out_dir: str,
    start_at: float,
    run_id: str,
    wrapper: str | None = None,
) -> list[str]:
    """The load client's command line: URLs, the slot's processes and start, and paths; the load itself is
    in the generator's settings file (:func:`generator_settings`, written by ``_phase_launch``).  Through
    the deployed ``kit-client`` wrapper when there is one (it adds the generator environment and open-file
    limit the Ansible role set up)."""
    api, ws = haproxy_urls(lb, opts.tls)
    prog = [wrapper] if wrapper else [host.kit_python, "-m", "kit.client"]
    argv = [
        *prog,
        "--api-url",
        api,
        "--ws-url",
        ws,
        "--settings",
        str(settings_path(out_dir)),
        "--processes",
        str(slot.processes),
        "--output-dir",
        out_dir,
        "--start-at",
        f"{start_at:.6f}",
        "--run-id",
        run_id,
        "--status-interval",
        "1",
        "--quiet",
        # sessions the server refused are a result (summary.json's status), not a crashed generator
        "--exit-zero-on-failure",
    ]
    if opts.tls:  # the CA file is copied beside the generator's output (_phase_launch)
        argv += ["--ca-file", str(ca_path(out_dir))]
    if opts.workload is not None:  # the file is copied beside the generator's output (_phase_launch)
        argv += ["--workload", str(workload_path(out_dir))]
    return argv


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
    conns: dict[str, Conn]
    run_id: str
    run_dir: Path
    out: Callable[[str], None]
    #: the live view (:mod:`._live`); plain lines through ``out`` unless the caller gives one
    view: View
    #: called once with the outcome (exit status, paths, the summary) when the run is recorded
    on_result: Callable[[dict[str, Any]], None] | None = None
    t_begin: float = dataclasses.field(default_factory=time.time)
    phase: str = "preflight"
    pre: Preflight = dataclasses.field(default_factory=Preflight)
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

    def host_of(self, c: Conn) -> str:
        return c.inventory_host.name

    def labels_on(self, host: str) -> list[str]:
        return [lbl for lbl, g in self.gens.items() if g.slot.host == host]

    def write_jobs(self) -> None:
        """``jobs.json``: every remote job of the run with its host, folder and PID (what to clean up by hand)."""
        with self._lock:
            data = {
                "monitors": {
                    h: {"dir": d, "pid": self.service_pids.get(h, {}).get("_monitor_pid")}
                    for h, d in self.monitors.items()
                },
                "generators": {lbl: {"host": g.slot.host, "dir": g.dir, "pid": g.pid} for lbl, g in self.gens.items()},
                "faults": [
                    {"spec": f.spec.text, "host": f.target.host, "program": f.target.program} for f in self.faults
                ],
            }
            (self.run_dir / "jobs.json").write_text(json.dumps(data, indent=2) + "\n")


def execute(
    opts: RunOptions,
    *,
    out: Callable[[str], None] = _say,
    view: View | None = None,
    on_result: Callable[[dict[str, Any]], None] | None = None,
) -> int:
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
        return _execute(
            Run(
                opts=opts,
                inv=inv,
                conns=conns,
                run_id=run_id,
                run_dir=run_dir,
                out=out,
                view=view or PlainView(out),
                on_result=on_result,
            )
        )
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
        raise RunError(
            f"--tls: no CA certificate at {opts.ca_file}: deploy with haproxy_tls: true (the haproxy "
            "role makes the kit CA there) or pass --ca-file"
        )


def _trap_signals() -> Callable[[], None]:
    """SIGINT and SIGTERM raise :class:`Interrupted` (once: while the run cleans up, further ones are
    noted and ignored, so a second Ctrl-C cannot leave jobs behind).  Returns the undo."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    seen: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        if seen:
            print(
                f"  ({signal.Signals(signum).name} again: still stopping the run's remote jobs; "
                "every command is bounded)",
                file=sys.stderr,
                flush=True,
            )
            return
        seen.append(signum)
        raise Interrupted(signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}

    def restore() -> None:
        for s, h in old.items():
            signal.signal(s, h)

    return restore


def _execute(run: Run) -> int:
    """The phases; the one try/finally owns every remote job the run starts."""
    _phase_preflight(run)  # starts nothing remote: a RunError here is exit 2
    try:
        _phase_monitors(run)
        _phase_launch(run)
        _phase_chaos(run)
        _phase_watch(run)
    except Interrupted as exc:
        run.interrupted_by = exc.signum
        run.partial_reasons.append(
            f"interrupted by {signal.Signals(exc.signum).name} during {run.phase}: "
            "every job was stopped and what existed was collected"
        )
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
    pre = inspect_hosts(inv, run.conns, opts.clients, skip_health=opts.skip_health)
    record = pre.to_dict()
    for name, cap in record["caps"].items():
        run.out(f"  caps {name}: " + ", ".join(f"{k}={v}" for k, v in cap.items() if k not in ("note",)))
    if not pre.clock_ok:
        run.out(
            f"  WARNING: host clocks differ by up to {pre.clock_worst_s * 1000:.2f} ms (bound "
            f"{CLOCK_BOUND_S * 1000:.1f} ms): cross-host token delivery latency is unreliable"
        )
    if pre.problems:
        raise RunError("preflight failed:\n  " + "\n  ".join(pre.problems))
    programs = {h: host_programs(inv, h) for h in inv.hosts}
    try:
        run.faults = [
            Fault(spec=s, target=t, index=i)
            for i, (s, t) in enumerate((s, t) for s in specs for t in resolve_targets(s, inv, programs))
        ]
    except ChaosError as exc:
        raise RunError(str(exc)) from None
    run.pre = pre
    gens = {n: pre.facts[n].nproc for n in inv.groups["generators"]}
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
    (run.run_dir / "preflight.json").write_text(json.dumps(record, indent=2, default=str) + "\n")


def _procs_file(run: Run, host: str) -> str:
    return f"{run.remote_root[host]}/hostmon/procs.txt"


def _phase_monitors(run: Run) -> None:
    """A host monitor on every host for the whole run (bounded by itself); the monitor is one
    self-contained file copied over, run by the kit's venv or, where the kit is not installed (e.g.
    a balancer host), by the host's python3.  Each samples the kit's processes of its host: the
    services' PIDs now, the generators' once they started (appended to procs.txt)."""
    run.phase = "starting host monitors"
    bound = run.opts.max_duration + run.opts.grace

    def start_monitor(c: Conn) -> int:
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
        scrape = f"{d}/scrape.txt"  # what the host's services say of themselves, every second (kit/run/_series.py)
        c.run(f"printf %s {shlex.quote(scrape_lines(run.inv, h))} > {shlex.quote(scrape)}", timeout=ops.CMD_TIMEOUT)
        py = _host_python(run, h)
        with run._lock:
            run.monitors[h.name] = d  # owned from here on: stopped in the finally
        pid = ops.start_job(
            c,
            d,
            [
                py,
                f"{d}/hostmon.py",
                f"{d}/host.jsonl",
                "--interval",
                "1",
                "--duration",
                f"{bound + 60:g}",
                "--procs",
                _procs_file(run, h.name),
                "--scrape",
                scrape,
            ],
        )
        with run._lock:
            run.service_pids[h.name]["_monitor_pid"] = pid
        return pid

    try:
        fan(run.conns.values(), start_monitor, "starting host monitors")
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
        run.gens[s.label] = GenJob(
            slot=s, dir=f"{run.remote_root[s.host]}/gen-{s.label}", start_at=start_at + run.pre.clocks[s.host].offset_s
        )

    def launch(c: Conn) -> list[int]:
        pids = []
        host = run.host_of(c)
        for label in run.labels_on(host):
            g = run.gens[label]
            g.argv = _client_argv(
                c.inventory_host,
                g.slot,
                opts,
                inv.hosts[g.slot.haproxy],
                f"{g.dir}/out",
                g.start_at,
                run.run_id,
                run.pre.facts[host].kit_client,
            )
            c.run(f"mkdir -p {shlex.quote(g.dir)}", timeout=ops.CMD_TIMEOUT)
            # its options, kept with the run's results (settings/<label>.json) and copied beside its output
            local = options.write_settings(
                run.run_dir / "settings" / f"{label}.json",
                generator_settings(g.slot, opts, source_addresses(run.inv.hosts[g.slot.host])),
            )
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
        launched = fan(
            [run.conns[h] for h in {g.slot.host for g in run.gens.values()}],
            launch,
            "starting generators",
            strict=False,
        )
    finally:
        run.write_jobs()
    for c, v in launched.failed.items():
        run.partial_reasons.append(f"{run.host_of(c)}: could not start: {v}")
        for lbl in run.labels_on(run.host_of(c)):
            run.gens[lbl].final = run.gens[lbl].final or {
                "rc": None,
                "alive": False,
                "status": None,
                "launch_failed": True,
            }
    run.out(
        f"  {len(run.slots)} generator invocation(s) start at "
        f"{time.strftime('%H:%M:%S', time.localtime(start_at))} "
        f"({', '.join(f'{s.label}:{s.clients}c/{s.processes}p->{s.haproxy}' for s in run.slots)})"
    )


def _phase_chaos(run: Run) -> None:
    if not run.faults:
        return
    run.phase = "scheduling faults"
    assert run.start_at is not None
    run.chaos = ChaosRunner(run.faults, run.inv, run.start_at, run.remote_root, run.out)
    run.chaos.start()
    run.out("  chaos: " + ", ".join(f"{f.spec.text} -> {f.target.label()}" for f in run.faults))


def _host_python(run: Run, h: Host) -> str:
    """The kit's python on *h* where the preflight found it, else the host's own python3."""
    return h.kit_python if run.pre.facts[h.name].kit_python else system_python(h)


def _phase_watch(run: Run) -> None:
    """Watch every generator (:mod:`._jobwatch`; a host whose watcher does not report is polled) until each
    has exited or the bound is reached; show the live view (rates and latency percentiles of the last
    interval); the in-place view ends with the phase."""
    run.phase = "watching generators"
    try:
        _watch(run)
    finally:
        run.view.close()


def _watch(run: Run) -> None:
    opts = run.opts
    assert run.start_at is not None
    deadline = run.start_at + opts.max_duration + opts.grace
    watches = _start_watches(run, deadline)
    try:
        _watch_loop(run, watches, deadline)
    finally:
        for w in watches.values():
            w.close()


def _start_watches(run: Run, deadline: float) -> dict[str, JobWatch]:
    """A :class:`JobWatch` per generator host (its jobs' states as they change, over one channel); a host
    whose watcher does not report is polled command by command instead (see :mod:`._jobwatch`)."""

    def start(c: Conn) -> JobWatch:
        h = c.inventory_host
        jobs = {lbl: run.gens[lbl].dir for lbl in run.labels_on(h.name)}
        # bounded: the run's deadline plus the stop's grace, then it ends by itself
        w = JobWatch(c, _host_python(run, h), jobs, "out/status.json", deadline - time.time() + 2 * STOP_GRACE_S)
        w.wait_first()
        return w

    got = fan(
        [run.conns[h] for h in {g.slot.host for g in run.gens.values()}], start, "watching generators", strict=False
    )
    return {c.inventory_host.name: w for c, w in got.succeeded.items()}


def _watch_loop(run: Run, watches: dict[str, JobWatch], deadline: float) -> None:
    opts = run.opts
    assert run.start_at is not None
    prev_agg: dict[str, Any] | None = None
    while True:
        live = {lbl: g for lbl, g in run.gens.items() if g.final is None}
        if not live:
            return
        states: dict[str, dict[str, Any]] = {}
        unwatched = []
        for host in {g.slot.host for g in live.values()}:
            latest = watches[host].latest() if host in watches else None
            if latest is None:
                unwatched.append(host)
            else:
                states.update(latest)
        polled = fan(
            [run.conns[h] for h in unwatched],
            lambda c: {
                lbl: ops.job_state(c, run.gens[lbl].dir, "out/status.json")
                for lbl in run.labels_on(run.host_of(c))
                if lbl in live  # noqa: B023 (fan calls it before the loop moves on)
            },
            "polling generators",
            strict=False,
        )
        for v in polled.succeeded.values():
            states.update(v)
        for lbl, st in states.items():
            if lbl not in live:
                continue
            g = run.gens[lbl]
            g.status = st["status"] or g.status
            if ops.job_ended(st):
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
                    run.partial_reasons.append(
                        f"{lbl}: still running after --max-duration {opts.max_duration:g} s "
                        f"+ {opts.grace:g} s grace; stopped"
                    )
                    g.final = {"rc": None, "alive": True, "status": None, "hung": True}
            return
        time.sleep(POLL_S)  # the live view's refresh period


def _abort_if_failed(run: Run, agg: dict[str, Any], now: float) -> bool:
    """--abort-on-fail: True (and the run marked aborted) when the live merge shows a threshold failed."""
    opts = run.opts
    failed = live_failures(
        agg,
        opts.judged_by(),
        sessions=opts.clients,
        queries=None if opts.workload is not None else (opts.clients or 0) * (opts.queries or 0),
    )
    if not failed:
        return False
    assert run.start_at is not None
    run.aborted = {
        "at_s": round(now - run.start_at, 3),
        "threshold": failed[0]["threshold"],
        "failed": failed,
        "grace_s": opts.abort_grace,
    }
    run.out(
        f"  ABORTING at t={now - run.start_at:.0f}s: threshold {failed[0]['threshold']} has failed "
        f"(live value {failed[0]['actual']:g}{' ' + failed[0]['unit'] if failed[0]['unit'] else ''}): "
        "stopping every generator (--abort-on-fail)"
    )
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

    def stop_gens(c: Conn) -> dict[str, list[int]]:
        return {
            lbl: ops.stop_job(c, run.gens[lbl].dir, grace=STOP_GRACE_S)
            for lbl in run.labels_on(run.host_of(c))
            if lbl in alive
        }

    for what, conns, fn in (
        ("stopping generators", [run.conns[h] for h in {run.gens[lbl].slot.host for lbl in alive}], stop_gens),
        (
            "stopping host monitors",
            [run.conns[h] for h in run.monitors],
            lambda c: ops.stop_job(c, run.monitors[run.host_of(c)], grace=3),
        ),
    ):
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

    def collect_gens(c: Conn) -> None:
        for lbl in run.labels_on(run.host_of(c)):
            dest = run.run_dir / "generators" / lbl
            ops.fetch_dir(c, run.gens[lbl].dir, dest)
            run.gens[lbl].out = dest / "out"

    got = fan([run.conns[h] for h in gen_hosts], collect_gens, "collecting generator outputs", strict=False)
    run.partial_reasons += [f"{run.host_of(c)}: collecting outputs failed: {v}" for c, v in got.failed.items()]
    for lbl, g in run.gens.items():
        st = g.final or {}
        if st.get("rc") not in (0, None) or (
            st.get("rc") is None and not st.get("alive") and not st.get("launch_failed")
        ):
            tail = _tail(run.run_dir / "generators" / lbl / "out.log")
            run.partial_reasons.append(
                f"{lbl}: generator exited with status {st.get('rc')}"
                + (f": {tail}" if tail else f" (see generators/{lbl}/out.log)")
            )
    mons = fan(
        [run.conns[h] for h in run.monitors],
        lambda c: ops.fetch_dir(c, run.monitors[run.host_of(c)], run.run_dir / "hosts" / run.host_of(c)),
        "collecting host metrics",
        strict=False,
    )
    run.missing_metrics = [run.host_of(c) for c in mons.failed]
    from ._logs import fetch_logs

    run.log_problems = fetch_logs(run.inv, run.conns, run.run_dir / "logs")
    policy = fan(
        [run.conns[h.name] for h in run.inv.group("haproxy") if h.name in run.conns],
        lambda c: deployed_shutdown_sessions(c, c.inventory_host),
        "reading the balancers' check policy",
        strict=False,
    )
    run.shutdown_sessions = {run.host_of(c): v for c, v in policy.succeeded.items() if isinstance(v, bool)}
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
    timeline = _read_csv(run.run_dir / "timeline.csv")
    peak = max((int(float(r.get("active_sessions") or 0)) for r in timeline), default=0)
    summary["idle_window"] = idle_window(timeline, peak)
    summary["components"] = component_costs(
        samples,
        summary.get("total_tokens"),
        {n: f.nproc for n, f in run.pre.facts.items()},
        client_cpu,
        summary["idle_window"],
    )
    summary["bottleneck"] = bottleneck(summary["components"], host_cpu_peaks(samples))
    if not summary["components"]:
        run.component_problems.append("no per-process CPU samples: no component costs for this run")
    share = {
        h: sum(s.clients for s in run.slots if s.host == h) / max(1, run.opts.clients or 0)
        for h in {s.host for s in run.slots}
    }
    memory_per_session(
        summary["components"],
        sessions_held(server_series(samples, run.start_at or 0.0), {h: peak * f for h, f in share.items()}),
    )
    summary["hosts_sockets"] = host_sockets(samples)
    summary["ramp_s"] = ramp_seconds(timeline, run.start_at, peak)
    summary["events"] = _fault_events(run)
    summary["stages"] = _stage_figures(run, timeline)
    summary["server_totals"] = server_totals(samples)
    if run.start_at is not None:  # what the balancers decided meanwhile, from their own logs
        summary["server_events"] = server_events(
            run.run_dir / "logs", [h.name for h in run.inv.group("haproxy")], run.start_at, time.time()
        )
        summary["balancer_verdict"] = balancer_verdict(
            summary["server_events"], backend_sizes(run.inv), shutdown_sessions_on_down(run.inv) | run.shutdown_sessions
        )
    return summary


def _stage_figures(run: Run, timeline: list[dict[str, str]]) -> list[dict[str, Any]]:
    """summary.json's stages: each stage of --stages with its own figures (empty without stages)."""
    stages = getattr(run.opts, "stages", None)
    if not stages or run.start_at is None or not (run.run_dir / "histograms.json").exists():
        return []
    state = json.loads((run.run_dir / "histograms.json").read_text())
    seconds = SecondHistograms.from_dict(state.get("timeline_histograms"))
    return stage_figures(stage_windows(stages, run.opts.arrival_rate), run.start_at, timeline, seconds)


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
    skews: list[float] = [sk for r in _runs_of(usable) if (sk := r.get("start_skew_s")) is not None]
    run_rec = {
        "run_id": run.run_id,
        "partial": bool(run.partial_reasons),
        "partial_reasons": run.partial_reasons,
        "interrupted": signal.Signals(run.interrupted_by).name if run.interrupted_by else None,
        "started": run.t_begin,
        "ended": time.time(),
        "start_at": run.start_at,
        "start_skew_s": {
            "max": max(skews, default=None),
            "min": min(skews, default=None),
            "spread": (max(skews) - min(skews)) if skews else None,
            "per_process": skews,
        },
        "clock": {
            "worst_s": pre.clock_worst_s,
            "bound_s": CLOCK_BOUND_S,
            "ok": pre.clock_ok,
            "offsets": pre.offsets(),
            "note": "" if pre.clock_ok else "cross-host delivery latency unreliable: clocks exceed the bound",
        },
        "config": {
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in dataclasses.asdict(opts).items()
            if k not in ("thresholds", "no_default_thresholds", "given", "loaded_plan", "plan_overridden", "tags")
        }
        | {"thresholds": [t.text for t in opts.thresholds], "default_thresholds": not opts.no_default_thresholds},
        "slots": [
            dataclasses.asdict(s) | {"argv": run.gens[s.label].argv, "host_start_at": run.gens[s.label].start_at}
            for s in run.slots
        ],
        "tags": opts.tag_map(),
        "plan": _record_plan(run),
        "thresholds": checks,
        "thresholds_passed": all(c["passed"] for c in checks),
        "aborted": run.aborted,
        "missing_host_metrics": run.missing_metrics,
        "log_problems": run.log_problems,
        "stats_problems": run.stats_problems,
        "stop_problems": run.stop_problems,
        "prometheus_problems": run.prometheus_problems,
        "service_pids": {
            n: {p: v for p, v in pids.items() if not p.startswith("_")} for n, pids in run.service_pids.items()
        },
        "monitor_pids": {n: pids.get("_monitor_pid") for n, pids in run.service_pids.items()},
        "generator_pids": {lbl: g.pid for lbl, g in run.gens.items()},
        "component_problems": run.component_problems,
        "versions": _versions(pre),
        "build": record_build(run.inv, run.conns),  # which wsproxy build was measured (fab compare shows it)
        "inventory": run.inv.describe(),
    }
    summary["run"] = run_rec
    summary["tags"] = run_rec["tags"]
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
        run.out(
            f"ABORTED RUN at t={run.aborted['at_s']:g}s: threshold {run.aborted['threshold']} failed while the run "
            "went (--abort-on-fail); what the generators had done is recorded"
        )
        rc, outcome = 1, "aborted"
    elif run.partial_reasons:
        run.out(
            "PARTIAL RUN: "
            + "; ".join(run.partial_reasons)
            + (f" (and {len(failed)} threshold(s) failed: {', '.join(failed)})" if failed else "")
        )
        rc, outcome = 3, "partial"
    else:
        rc, outcome = (0, "pass") if run_rec["thresholds_passed"] else (1, "threshold_failed")
    if run.on_result is not None:
        run.on_result(
            {
                "exit_status": rc,
                "outcome": outcome,
                "failed_thresholds": failed,
                "aborted": run.aborted,
                "run_id": run.run_id,
                "results_dir": str(run.run_dir),
                "tarball": str(tarball),
                "summary": summary,
            }
        )
    return rc


def _record_plan(run: Run) -> dict[str, Any] | None:
    """The plan file the run was given, copied beside its results (plan.yml), with what the command line
    overrode in it and the values the run took for each of its keys."""
    opts, plan = run.opts, run.opts.loaded_plan
    if plan is None:
        return None
    (run.run_dir / PLAN_FILE).write_text(plan.text)
    shown = {k: getattr(opts, k) for k in plan.values}
    shown["thresholds"] = [t.text for t in opts.thresholds] if "thresholds" in shown else None
    return {
        "file": str(plan.path),
        "copy": PLAN_FILE,
        "sha256": plan.sha256,
        "overridden": opts.plan_overridden,
        "values": {k: (str(v) if isinstance(v, Path) else v) for k, v in shown.items() if v is not None},
    }


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


def _versions(pre: Preflight) -> dict[str, Any]:
    return {
        "kit_controller": _kit_version(),
        "python_controller": platform.python_version(),
        "hosts": {n: f.versions() for n, f in pre.facts.items()},
        "argv": sys.argv,
    }
