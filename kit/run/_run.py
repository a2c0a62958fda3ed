"""One ``fab run`` end to end: preflight, split, start, watch, collect, merge, report, pack.

:func:`execute` owns every connection and remote job it starts: generators and
host monitors run as background jobs in ``<kit_root>/runs/<run-id>/`` on their
hosts and are stopped (process group, by PID) when they outlive the run's
bound (``--max-duration`` + grace).  A generator that fails or hangs makes the
run ``partial: true`` with the reason; what every other generator measured is
still collected, merged and packed.

Every host monitor also samples the CPU of the kit's own processes: before it
starts, each host's service PIDs are asked from its service manager (the
kit's supervisord, else systemd; never matched by process name) and written
to the monitor's ``procs.txt``; each generator's PID is appended once it
started.  :mod:`._components` turns the samples into the run's per-component
cost and bottleneck.  A PID that cannot be resolved is reported in the run
record (``component_problems``), never fatal.  Returns the process exit status:
0 pass, 1 a threshold failed, 3 partial run, 2 bad options or failed preflight
(raised as :class:`RunError`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Callable

import yaml

import kit
from kit.inventory import Host, Inventory, load_inventory

from . import _hostops as ops
from ._components import bottleneck, component_costs, load_host_samples, service_programs
from ._pack import pack_run, stripped_inventory
from ._plan import PRESETS, GeneratorSlot, PlanError, Threshold, clock_offset, make_run_id, plan_generators
from ._remote import GroupException, close_all, connect, describe_failures, fan_out
from ._services import check_health, collect_server_stats, haproxy_urls, unhealthy
from ._summary import aggregate_status, evaluate_thresholds, format_live_line

__all__ = ["RunOptions", "RunError", "execute", "preflight", "CLOCK_BOUND_S"]

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
HOSTMON_SRC = REPO / "kit" / "hostmon.py"
#: clocks further apart than this make cross-host token delivery latency unreliable (flagged)
CLOCK_BOUND_S = 0.005
#: file descriptors one client session holds (WebSocket + its share of HTTP keep-alive)
FDS_PER_SESSION = 2
#: descriptors a process keeps for itself (logs, listeners, Python)
FD_RESERVE = 100
START_LEAD_S = 3.0
GRACE_S = 30.0
POLL_S = 2.0
SERVICES_REQUIRED = ("redis", "haproxy", "wsproxy", "sim", "generators")
#: the kit_service role's knobs (supervisorctl path, systemd unit prefix) live in its defaults
KIT_SERVICE_DEFAULTS = REPO / "playbooks" / "roles" / "kit_service" / "defaults" / "main.yml"


class RunError(RuntimeError):
    """The run cannot start (bad options, unhealthy services, insufficient limits); exit 2."""


@dataclasses.dataclass(kw_only=True)
class RunOptions:
    inventory: Path = REPO / "inventory" / "local.yml"
    clients: int | None = None
    queries: int | None = None
    ramp: float | None = None
    arrival_rate: float | None = None
    duration: float | None = None
    preset: str | None = None
    thresholds: list[Threshold] = dataclasses.field(default_factory=list)
    max_duration: float = 600.0
    #: seconds past --max-duration before a generator counts as hung and is stopped
    grace: float = GRACE_S
    results_dir: Path = REPO / "results"
    run_id: str | None = None
    live: bool = True
    skip_health: bool = False
    #: seconds a session waits between its queries (the client's default when None)
    think_time: float | None = None
    #: seconds a query may take to its done message before it fails (the client's default when None)
    query_timeout: float | None = None

    def resolve(self) -> None:
        """Apply the preset under explicit options and check the load shape."""
        if self.preset is not None:
            if self.preset not in PRESETS:
                raise RunError(f"--preset {self.preset!r}: choose one of {', '.join(PRESETS)}")
            p = PRESETS[self.preset]
            self.clients = p.clients if self.clients is None else self.clients
            self.queries = p.queries if self.queries is None else self.queries
            self.ramp = p.ramp if self.ramp is None else self.ramp
        if self.clients is None or self.clients < 1:
            raise RunError(f"--clients {self.clients}: give a number of clients >= 1 (or --preset smoke)")
        if self.queries is None:
            self.queries = 10
        if self.queries < 0:
            raise RunError(f"--queries {self.queries}: give 0 or more")
        if (self.arrival_rate is None) != (self.duration is None):
            raise RunError("--arrival-rate and --duration go together (the open model): give both or neither")
        if self.arrival_rate is not None and self.arrival_rate <= 0:
            raise RunError(f"--arrival-rate {self.arrival_rate}: give sessions per second > 0")
        if self.ramp is not None and self.ramp <= 0:
            raise RunError(f"--ramp {self.ramp}: give sessions started per second > 0")
        if self.max_duration <= 0:
            raise RunError(f"--max-duration {self.max_duration}: give seconds > 0")
        if self.think_time is not None and not 0 <= self.think_time <= self.max_duration:
            raise RunError(f"--think-time {self.think_time:g}: give seconds between a session's queries, "
                           f"0 to --max-duration ({self.max_duration:g})")
        if self.query_timeout is not None and not 0.001 <= self.query_timeout <= self.max_duration:
            raise RunError(f"--query-timeout {self.query_timeout:g}: give seconds a query may take, "
                           f"0.001 to --max-duration ({self.max_duration:g})")


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
        c, c.inventory_host.kit_python, c.inventory_host.kit_root), "reading host facts").items()}
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
    lbs = inv.group("haproxy")
    for h in lbs:
        nofile = facts[h.name]["nofile_hard"] or 0
        cap = max(0, (nofile - FD_RESERVE) // 2)
        share = None if plan_clients is None else -(-plan_clients // len(lbs))
        caps[h.name] = {"role": "haproxy", "nofile_hard": nofile, "max_sessions": cap, "planned_sessions": share,
                        "note": f"one HAProxy process holds at most ~{cap} proxied sessions (2 fds each) "
                                f"with nofile {nofile}"}
        if share is not None and share > cap:
            problems.append(f"{h.name}: haproxy would carry {share} sessions but its open-file limit "
                            f"{nofile} caps it at ~{cap}: add haproxy hosts to the inventory")
    cores = {n: facts[n]["nproc"] for n in gens}
    if plan_clients is not None:
        slots = plan_generators(plan_clients, cores, [h.name for h in lbs])
        for name in gens:
            f = facts[name]
            mine = [s for s in slots if s.host == name]
            clients = sum(s.clients for s in mine)
            procs = max(1, sum(s.processes for s in mine))
            per_proc = -(-clients // procs)
            fd_cap = max(0, (f["nofile_hard"] or 0) - FD_RESERVE) // FDS_PER_SESSION
            pr = f["port_range"] or [32768, 60999]
            per_lb: dict[str, int] = {}
            for s in mine:
                per_lb[s.haproxy] = per_lb.get(s.haproxy, 0) + s.clients
            port_cap = pr[1] - pr[0] + 1
            caps[name] = {"role": "generator", "clients": clients, "processes": procs, "clients_per_process": per_proc,
                          "nofile_hard": f["nofile_hard"], "max_clients_per_process_by_nofile": fd_cap,
                          "local_ports": port_cap, "max_clients_per_balancer_by_ports": port_cap // 2}
            if per_proc > fd_cap:
                problems.append(f"{name}: {per_proc} clients per process need ~{per_proc * FDS_PER_SESSION} open "
                                f"files but the hard limit is {f['nofile_hard']}: add generator hosts or cores")
            for lb, n in per_lb.items():
                if n * 2 > port_cap:
                    problems.append(f"{name}: {n} clients to {lb} need ~{n * 2} local ports but "
                                    f"ip_local_port_range gives {port_cap}: widen it (tuning role) or add hosts")
    return {"health": health, "facts": facts, "clocks": clocks, "clock_worst_s": worst,
            "clock_bound_s": CLOCK_BOUND_S, "clock_ok": worst <= CLOCK_BOUND_S, "caps": caps, "problems": problems}


def _client_argv(host: Host, slot: GeneratorSlot, opts: RunOptions, lb: Host, out_dir: str, start_at: float,
                 run_id: str, wrapper: str | None = None) -> list[str]:
    """The load client's command line; through the deployed ``kit-client`` wrapper when there is one
    (it adds the generator environment and open-file limit the Ansible role set up)."""
    api, ws = haproxy_urls(lb)
    prog = [wrapper] if wrapper else [host.kit_python, "-m", "kit.client"]
    argv = [*prog, "--api-url", api, "--ws-url", ws, "--clients", str(slot.clients),
            "--queries", str(opts.queries), "--processes", str(slot.processes), "--output-dir", out_dir,
            "--start-at", f"{start_at:.6f}", "--run-id", run_id, "--status-interval", "1",
            "--max-duration", f"{opts.max_duration:g}", "--quiet"]
    if opts.ramp is not None:
        argv += ["--ramp", f"{opts.ramp * slot.clients / opts.clients:.6g}"]
    if opts.think_time is not None:
        argv += ["--think-time", f"{opts.think_time:g}"]
    if opts.query_timeout is not None:
        argv += ["--query-timeout", f"{opts.query_timeout:g}"]
    if slot.arrival_rate is not None:
        argv += ["--arrival-rate", f"{slot.arrival_rate:.6g}", "--duration", f"{opts.duration:g}"]
    return argv


def execute(opts: RunOptions, *, out: Callable[[str], None] = _say) -> int:
    """Run the benchmark described by *opts*; return the exit status (see the module docstring)."""
    try:
        opts.resolve()
    except PlanError as exc:
        raise RunError(str(exc)) from None
    inv = load_inventory(opts.inventory)
    opts.results_dir.mkdir(parents=True, exist_ok=True)
    taken = [p.name for p in opts.results_dir.iterdir()]
    run_id = opts.run_id or make_run_id(opts.clients, taken=taken)
    run_dir = opts.results_dir / run_id
    if run_dir.exists():
        raise RunError(f"{run_dir} already exists: choose another --run-id")
    conns = {name: connect(h) for name, h in inv.hosts.items()}
    try:
        return _execute(opts, inv, conns, run_id, run_dir, out)
    finally:
        close_all(conns.values())


def _execute(opts: RunOptions, inv: Inventory, conns: dict[str, Any], run_id: str, run_dir: Path,
             out: Callable[[str], None]) -> int:
    t_begin = time.time()
    out(f"run {run_id}: {opts.clients} clients x {opts.queries} queries over inventory {opts.inventory}")
    pre = preflight(inv, conns, opts.clients, skip_health=opts.skip_health)
    for name, cap in pre["caps"].items():
        out(f"  caps {name}: " + ", ".join(f"{k}={v}" for k, v in cap.items() if k not in ("note",)))
    if not pre["clock_ok"]:
        out(f"  WARNING: host clocks differ by up to {pre['clock_worst_s'] * 1000:.2f} ms (bound "
            f"{CLOCK_BOUND_S * 1000:.1f} ms): cross-host token delivery latency is unreliable")
    if pre["problems"]:
        raise RunError("preflight failed:\n  " + "\n  ".join(pre["problems"]))
    gens = {n: pre["facts"][n]["nproc"] for n in inv.groups["generators"]}
    slots = plan_generators(opts.clients, gens, inv.groups["haproxy"], opts.arrival_rate)
    run_dir.mkdir(parents=True)
    (run_dir / "preflight.json").write_text(json.dumps(pre, indent=2, default=str) + "\n")

    remote_root = {n: f"{h.kit_root}/runs/{run_id}" for n, h in inv.hosts.items()}
    bound = opts.max_duration + opts.grace
    # host monitors on every host, for the whole run (bounded by themselves); the monitor is one
    # self-contained file copied over, run by the kit's venv or, where the kit is not installed
    # (e.g. a balancer host), by the host's python3.  Each samples the kit's processes of its host:
    # the services' PIDs now, the generators' once they started (appended to procs.txt)
    procs_file = {n: f"{remote_root[n]}/hostmon/procs.txt" for n in inv.hosts}
    service_pids: dict[str, dict[str, Any]] = {}
    component_problems: list[str] = []

    def start_monitor(c: Any) -> int:
        h = c.inventory_host
        d = f"{remote_root[h.name]}/hostmon"
        c.run(f"mkdir -p {shlex.quote(d)}")
        c.put(str(HOSTMON_SRC), f"{d}/hostmon.py")
        pids, problems = resolve_service_pids(c, inv)
        service_pids[h.name] = pids
        component_problems.extend(problems)
        lines = "".join(f"{component} {pid}\n" for component, pid in pids.values() if pid)
        c.run(f"printf %s {shlex.quote(lines)} > {shlex.quote(procs_file[h.name])}")
        py = h.kit_python if pre["facts"][h.name]["kit_python"] else _system_python(h)
        return ops.start_job(c, d, [py, f"{d}/hostmon.py", f"{d}/host.jsonl", "--interval", "1",
                                    "--duration", f"{bound + 60:g}", "--procs", procs_file[h.name]])

    _fan(list(conns.values()), start_monitor, "starting host monitors")
    for p in component_problems:
        out(f"  WARNING: component CPU: {p}")

    # one agreed instant, in each host's own clock
    start_at = time.time() + START_LEAD_S + 0.2 * len(slots)
    jobs: dict[str, dict[str, Any]] = {}
    for s in slots:
        h = inv.hosts[s.host]
        local_start = start_at + pre["clocks"][s.host]["offset_s"]
        jobs[s.label] = {"slot": s, "dir": f"{remote_root[s.host]}/gen-{s.label}", "start_at": local_start}
    by_conn = {}
    for label, j in jobs.items():
        by_conn.setdefault(j["slot"].host, []).append(label)

    def launch(c: Any) -> list[int]:
        pids = []
        for label in by_conn[c.inventory_host.name]:
            j = jobs[label]
            argv = _client_argv(c.inventory_host, j["slot"], opts, inv.hosts[j["slot"].haproxy], f"{j['dir']}/out",
                                j["start_at"], run_id, pre["facts"][c.inventory_host.name].get("kit_client"))
            j["argv"] = argv
            pid = ops.start_job(c, j["dir"], argv)
            j["pid"] = pid
            pids.append(pid)
            c.run(f"echo 'client {pid}' >> {shlex.quote(procs_file[c.inventory_host.name])}")
        return pids

    gen_conns = [conns[n] for n in by_conn]
    launched = _fan(gen_conns, launch, "starting generators", strict=False)
    partial_reasons = [f"{c.inventory_host.name}: could not start: {v}" for c, v in launched.items()
                       if isinstance(v, BaseException)]
    out(f"  {len(slots)} generator invocation(s) start at {time.strftime('%H:%M:%S', time.localtime(start_at))}"
        f" ({', '.join(f'{s.label}:{s.clients}c/{s.processes}p->{s.haproxy}' for s in slots)})")

    # watch until every generator has exited or the bound is reached
    deadline = start_at + bound
    finished: dict[str, dict[str, Any]] = {}
    prev_agg: dict[str, Any] | None = None
    statuses: dict[str, Any] = {lbl: None for lbl in jobs}   # last status.json seen per generator
    failed_hosts = {c.inventory_host.name for c, v in launched.items() if isinstance(v, BaseException)}
    while True:
        live = {lbl: j for lbl, j in jobs.items() if lbl not in finished and j["slot"].host not in failed_hosts}
        if not live:
            break
        polled = _fan([conns[h] for h in {j["slot"].host for j in live.values()}],
                      lambda c: {lbl: ops.job_state(c, jobs[lbl]["dir"], "out/status.json")
                                 for lbl in by_conn[c.inventory_host.name] if lbl in live},
                      "polling generators", strict=False)
        for c, v in polled.items():
            if isinstance(v, BaseException):
                continue
            for lbl, st in v.items():
                statuses[lbl] = st["status"] or statuses.get(lbl)
                if st["rc"] is not None or not st["alive"]:
                    finished[lbl] = st
        agg = aggregate_status(statuses, prev_agg, time.time())
        prev_agg = agg
        if opts.live and time.time() >= start_at:
            out("  " + format_live_line(agg, time.time() - start_at))
        if time.time() > deadline:
            for lbl, j in live.items():
                if lbl not in finished:
                    partial_reasons.append(f"{lbl}: still running after --max-duration {opts.max_duration:g} s "
                                           f"+ {opts.grace:g} s grace; stopped")
                    try:
                        ops.stop_job(conns[j["slot"].host], j["dir"])
                    except Exception as exc:  # reported in the run record
                        partial_reasons.append(f"{lbl}: stopping it failed: {exc}")
                    finished[lbl] = {"rc": None, "alive": False, "status": None, "hung": True}
            break
        time.sleep(POLL_S)  # the live view's refresh period
    exited = {lbl: st for lbl, st in finished.items()
              if st.get("rc") not in (0, None) or (st.get("rc") is None and not st.get("hung"))}

    # collect: generator outputs, host monitors, logs, server stats
    out("  collecting results")
    _fan(list(conns.values()), lambda c: ops.stop_job(c, f"{remote_root[c.inventory_host.name]}/hostmon", grace=3),
         "stopping host monitors", strict=False)
    gen_local: dict[str, Path] = {}

    def collect_gens(c: Any) -> None:
        for lbl in by_conn[c.inventory_host.name]:
            dest = run_dir / "generators" / lbl
            ops.fetch_dir(c, jobs[lbl]["dir"], dest)
            gen_local[lbl] = dest / "out"

    got = _fan(gen_conns, collect_gens, "collecting generator outputs", strict=False)
    partial_reasons += [f"{c.inventory_host.name}: collecting outputs failed: {v}" for c, v in got.items()
                        if isinstance(v, BaseException)]
    for lbl, st in exited.items():
        tail = _tail(run_dir / "generators" / lbl / "out.log")
        partial_reasons.append(f"{lbl}: generator exited with status {st.get('rc')}"
                               + (f": {tail}" if tail else f" (see generators/{lbl}/out.log)"))
    mons = _fan(list(conns.values()), lambda c: ops.fetch_dir(
        c, f"{remote_root[c.inventory_host.name]}/hostmon", run_dir / "hosts" / c.inventory_host.name),
        "collecting host metrics", strict=False)
    missing_metrics = [c.inventory_host.name for c, v in mons.items() if isinstance(v, BaseException)]
    from ._logs import fetch_logs
    log_problems = fetch_logs(inv, conns, run_dir / "logs")
    stats_problems = collect_server_stats(inv, run_dir / "server")

    # merge what every generator left
    from kit.client import merge_outputs
    usable = [p for lbl, p in sorted(gen_local.items()) if (p / "histograms.json").exists()]
    for lbl in jobs:
        if lbl not in gen_local or not (gen_local[lbl] / "histograms.json").exists():
            reason = f"{lbl}: no results (histograms.json missing)"
            if not any(r.startswith(f"{lbl}:") for r in partial_reasons):
                partial_reasons.append(reason)
    summary: dict[str, Any] = merge_outputs(usable, run_dir) if usable else {"total_sessions": 0}
    client_cpu: dict[str, float] = {}
    for lbl, p in gen_local.items():  # what each generator measured of itself at exit (getrusage)
        host = jobs[lbl]["slot"].host
        client_cpu[host] = client_cpu.get(host, 0.0) + sum(float(r.get("cpu_s") or 0.0) for r in _runs_of([p]))
    summary["components"] = component_costs(load_host_samples(run_dir), summary.get("total_tokens"),
                                            {n: f.get("nproc") for n, f in pre["facts"].items()}, client_cpu)
    summary["bottleneck"] = bottleneck(summary["components"])
    if not summary["components"]:
        component_problems.append("no per-process CPU samples: no component costs for this run")
    checks = evaluate_thresholds(summary, opts.thresholds)
    skews = [r.get("start_skew_s") for r in _runs_of(usable) if r.get("start_skew_s") is not None]
    run_rec = {
        "run_id": run_id, "partial": bool(partial_reasons), "partial_reasons": partial_reasons,
        "started": t_begin, "ended": time.time(), "start_at": start_at,
        "start_skew_s": {"max": max(skews, default=None), "min": min(skews, default=None),
                         "spread": (max(skews) - min(skews)) if skews else None, "per_process": skews},
        "clock": {"worst_s": pre["clock_worst_s"], "bound_s": CLOCK_BOUND_S, "ok": pre["clock_ok"],
                  "offsets": pre["clocks"],
                  "note": "" if pre["clock_ok"] else "cross-host delivery latency unreliable: clocks exceed the bound"},
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(opts).items()
                   if k != "thresholds"} | {"thresholds": [t.text for t in opts.thresholds]},
        "slots": [dataclasses.asdict(s) | {"argv": jobs[s.label].get("argv"), "host_start_at": jobs[s.label]["start_at"]}
                  for s in slots],
        "thresholds": checks, "thresholds_passed": all(c["passed"] for c in checks),
        "missing_host_metrics": missing_metrics, "log_problems": log_problems, "stats_problems": stats_problems,
        "service_pids": {n: {prog: pid for prog, (_, pid) in v.items()} for n, v in service_pids.items()},
        "generator_pids": {lbl: j.get("pid") for lbl, j in jobs.items()},
        "component_problems": component_problems,
        "versions": _versions(pre["facts"]),
        "inventory": inv.describe(),
    }
    summary["run"] = run_rec
    summary["partial"] = run_rec["partial"]
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    (run_dir / "run.json").write_text(json.dumps(run_rec, indent=2, default=str) + "\n")
    (run_dir / "inventory.yml").write_text(stripped_inventory(inv))
    from kit.report import write_report
    text = write_report(run_dir)
    tarball = pack_run(run_dir)
    out(text)
    out(f"results: {run_dir}  tarball: {tarball}")
    if partial_reasons:
        out("PARTIAL RUN: " + "; ".join(partial_reasons))
        return 3
    return 0 if run_rec["thresholds_passed"] else 1


@functools.cache
def _kit_service_defaults() -> dict[str, Any]:
    try:
        return yaml.safe_load(KIT_SERVICE_DEFAULTS.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        log.warning("reading %s: %s", KIT_SERVICE_DEFAULTS, exc)
        return {}


def _service_var(h: Host, name: str, fallback: str) -> str:
    """A kit_service role variable as the role sees it: the inventory's value over the role default."""
    return str(h.vars.get(name) or _kit_service_defaults().get(name) or fallback)


#: asks the host's service manager, as ``fab status`` decides it: the kit's supervisord when its
#: config is there, else systemd; prints ``manager=...`` and one ``<program>=<pid or message>`` line each
_SERVICE_PIDS = r"""
f={root}/supervisor/supervisord.conf
if [ -f "$f" ]; then
  echo manager=supervisor
  for p in {programs}; do echo "$p=$({ctl} -c "$f" pid "$p" 2>&1 | tr '
' ' ')"; done
elif command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
  echo manager=systemd
  for p in {programs}; do echo "$p=$(systemctl show -p MainPID --value {prefix}$p.service 2>&1 | tr '
' ' ')"; done
else
  echo manager=none
fi
"""


def resolve_service_pids(c: Any, inv: Inventory) -> tuple[dict[str, tuple[str, int | None]], list[str]]:
    """program -> (component, main PID or None) of the kit services on *c*'s host, and one problem per miss."""
    h = c.inventory_host
    programs = service_programs(inv.roles_of(h.name), int(h.vars.get("wsproxy_instances_per_host") or 1))
    if not programs:
        return {}, []
    res = c.run(_SERVICE_PIDS.format(
        root=shlex.quote(h.kit_root), programs=" ".join(shlex.quote(p) for _, p in programs),
        ctl=shlex.quote(_service_var(h, "kit_service_supervisorctl_bin", "/usr/bin/supervisorctl")),
        prefix=shlex.quote(_service_var(h, "kit_service_unit_prefix", "wsproxy-loadkit-"))), hide=True, warn=True)
    said = dict(line.split("=", 1) for line in res.stdout.splitlines() if "=" in line)
    manager = said.get("manager", "").strip()
    pids: dict[str, tuple[str, int | None]] = {}
    problems = []
    for component, program in programs:
        raw = said.get(program, "").strip()
        pid = int(raw) if raw.isdigit() and int(raw) > 0 else None
        pids[program] = (component, pid)
        if pid is None:
            why = (f"{manager} says {raw!r}" if manager in ("supervisor", "systemd")
                   else f"no kit supervisord.conf and no systemd (exit {res.exited})")
            problems.append(f"{h.name}: no PID for {program}: {why}; its CPU is not counted")
    return pids, problems


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
