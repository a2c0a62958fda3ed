"""``fab run``'s preflight: health, limits and clocks of every host, as typed records, before anything starts.

:func:`inspect_hosts` reads every host once (:func:`kit.run._hostops.host_facts` and its clock, in
parallel over the run's connections) and returns a :class:`Preflight`: each host's :class:`Facts`,
its :class:`Clock` offset from the controller, the limits of each balancer (:class:`BalancerCaps`) and
generator (:class:`GeneratorCaps`) against the planned load, what ``fab plan`` says per group, and the
problems that would spoil the run.  It starts nothing remote and raises :class:`RunError` only when a
host cannot be read; the caller refuses a run with problems.  :meth:`Preflight.to_dict` is
``preflight.json`` (:func:`preflight` returns it).

:func:`fan` is :func:`kit.run._remote.fan_out` for the run: it keeps Fabric's ``GroupResult`` (its
``succeeded`` and ``failed``) and, when *strict*, turns a failure into a :class:`RunError` naming
each host.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

from kit import contract
from kit.inventory import Host, Inventory

from . import _hostops as ops
from ._fleet import groups_facts, source_addresses
from ._options import RunError
from ._plan import clock_offset, plan_generators
from ._remote import Conn, GroupException, GroupResult, describe_failures, fan_out
from ._services import settled_health, unhealthy
from ._sizing import size_fleet

__all__ = [
    "Preflight",
    "Facts",
    "Clock",
    "BalancerCaps",
    "GeneratorCaps",
    "inspect_hosts",
    "preflight",
    "fan",
    "system_python",
    "CLOCK_BOUND_S",
    "SERVICES_REQUIRED",
]

log = logging.getLogger(__name__)

#: clocks further apart than this make cross-host token delivery latency unreliable (flagged)
CLOCK_BOUND_S = 0.005
SERVICES_REQUIRED = contract.groups()
#: facts the run records as each host's versions (run.json's ``versions.hosts``)
VERSION_FACTS = ("kit_version", "haproxy_version", "redis_version", "kernel")


def fan(conns: Iterable[Conn], fn: Callable[[Conn], Any], what: str, *, strict: bool = True) -> GroupResult:
    """fan_out; on failure either raise RunError naming each host, or log each and return every host's
    result (``.succeeded`` / ``.failed``)."""
    try:
        return fan_out(conns, fn)
    except GroupException as exc:
        lines = describe_failures(exc)
        if strict:
            raise RunError(f"{what} failed on {len(lines)} host(s):\n  " + "\n  ".join(lines)) from None
        for line in lines:
            log.warning("%s: %s", what, line)
        return exc.result


def system_python(h: Host) -> str:
    """The host's own python3 (``ansible_python_interpreter`` when absolute): for what runs where the
    kit is not installed."""
    interp = str(h.vars.get("ansible_python_interpreter") or "")
    return interp if interp.startswith("/") else "python3"


@dataclasses.dataclass(frozen=True)
class Facts:
    """What one host said of itself (:func:`kit.run._hostops.host_facts`); ``raw`` is all of it, as read."""

    raw: dict[str, Any]

    @property
    def nproc(self) -> int:
        """Cores (``nproc``)."""
        return self.raw["nproc"]

    @property
    def kit_python(self) -> bool:
        """The kit's venv is installed (``fab deploy``)."""
        return bool(self.raw.get("kit_python"))

    @property
    def kit_client(self) -> str | None:
        """The deployed ``kit-client`` wrapper, when there is one."""
        return self.raw.get("kit_client")

    @property
    def port_range(self) -> tuple[int, int]:
        """``ip_local_port_range`` (the kernel's default when unread)."""
        lo, hi = self.raw.get("port_range") or [32768, 60999]
        return lo, hi

    def open_file_limit(self) -> tuple[int, int | None, str]:
        """(open files a kit process gets, sessions one kit process holds or None, where they came from)."""
        return ops.open_file_limit(self.raw)

    def versions(self) -> dict[str, Any]:
        return {k: self.raw.get(k) for k in VERSION_FACTS if self.raw.get(k)}


@dataclasses.dataclass(frozen=True)
class Clock:
    """One host's clock against the controller's (:func:`kit.run._plan.clock_offset`)."""

    offset_s: float
    uncertainty_s: float
    rtt_s: float
    samples: int
    #: the controller itself (``ansible_connection: local``)
    local: bool


@dataclasses.dataclass(frozen=True)
class BalancerCaps:
    """What one balancer holds against its share of the planned sessions."""

    nofile: int
    nofile_source: str
    max_sessions: int | None
    planned_sessions: int | None
    note: str
    role: ClassVar[str] = "haproxy"

    def to_dict(self) -> dict[str, Any]:
        return {"role": self.role} | dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class GeneratorCaps:
    """What one generator host holds against its slots of the planned clients."""

    clients: int
    processes: int
    clients_per_process: int
    nofile: int
    nofile_source: str
    max_clients_per_process_by_nofile: int | None
    local_ports: int
    source_addresses: int
    max_clients_per_balancer_by_ports: int
    role: ClassVar[str] = "generator"

    def to_dict(self) -> dict[str, Any]:
        return {"role": self.role} | dataclasses.asdict(self)


@dataclasses.dataclass
class Preflight:
    """Everything the preflight learned; ``problems`` are what would spoil the run (it is refused)."""

    health: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    facts: dict[str, Facts] = dataclasses.field(default_factory=dict)
    clocks: dict[str, Clock] = dataclasses.field(default_factory=dict)
    caps: dict[str, BalancerCaps | GeneratorCaps] = dataclasses.field(default_factory=dict)
    #: group -> hosts needed, had and the limit per host (fab plan's figures), with a planned load
    plan: dict[str, dict[str, Any]] | None = None
    problems: list[str] = dataclasses.field(default_factory=list)
    clock_bound_s: float = CLOCK_BOUND_S

    @property
    def clock_worst_s(self) -> float:
        """The largest offset plus its uncertainty over every host."""
        return max((abs(c.offset_s) + c.uncertainty_s for c in self.clocks.values()), default=0.0)

    @property
    def clock_ok(self) -> bool:
        return self.clock_worst_s <= self.clock_bound_s

    def offsets(self) -> dict[str, dict[str, Any]]:
        """host -> its clock, as preflight.json and run.json write it."""
        return {n: dataclasses.asdict(c) for n, c in self.clocks.items()}

    def to_dict(self) -> dict[str, Any]:
        """``preflight.json``."""
        caps = {n: c.to_dict() for n, c in self.caps.items()}
        return {
            # per group, what fab plan says (hosts needed and had); beside the per-host caps, not among them
            **({} if self.plan is None else {"plan": self.plan}),
            "health": self.health,
            "facts": {n: f.raw for n, f in self.facts.items()},
            "clocks": self.offsets(),
            "clock_worst_s": self.clock_worst_s,
            "clock_bound_s": self.clock_bound_s,
            "clock_ok": self.clock_ok,
            "caps": caps,
            "problems": self.problems,
        }


def inspect_hosts(
    inv: Inventory, conns: Mapping[str, Conn], plan_clients: int | None = None, skip_health: bool = False
) -> Preflight:
    """Health, limits and clocks of every host; RunError when a host cannot be read."""
    inv.require_groups(*SERVICES_REQUIRED)
    health = [] if skip_health else settled_health(inv)
    pre = Preflight(
        health=health,
        facts=_read_facts(list(conns.values())),
        clocks=_read_clocks(list(conns.values())),
        problems=[f"unhealthy: {x}" for x in unhealthy(health)],
    )
    pre.problems += [x for n, f in pre.facts.items() if (x := ops.shell_preamble_problem(n, f.raw))]
    gens = inv.groups["generators"]
    for name in gens:
        if not pre.facts[name].kit_python:
            pre.problems.append(f"{name}: {inv.hosts[name].kit_python} is missing: run `fab deploy` first")
    # sessions one process holds: the tuning role's figure (computed there only; without a report unknown)
    lbs = inv.group("haproxy")
    slots = (
        []
        if plan_clients is None
        else plan_generators(plan_clients, {n: pre.facts[n].nproc for n in gens}, [h.name for h in lbs])
    )
    for h in lbs:  # each balancer against the sessions the plan sends it
        share = None if plan_clients is None else sum(s.clients for s in slots if s.haproxy == h.name)
        caps = pre.caps[h.name] = _balancer_caps(pre.facts[h.name], share)
        if share is not None and caps.max_sessions is not None and share > caps.max_sessions:
            pre.problems.append(
                f"{h.name}: the plan sends {share} sessions to this balancer but one HAProxy "
                f"process holds ~{caps.max_sessions} (nofile {caps.nofile}): add haproxy hosts"
            )
    if plan_clients is not None:
        for name in gens:
            _generator_caps(pre, inv.hosts[name], [s for s in slots if s.host == name])
        # per group, what fab plan says: hosts the run needs against the inventory's
        needs = size_fleet(plan_clients, groups_facts(inv, {n: f.raw for n, f in pre.facts.items()}))
        pre.plan = {n.group: {"needed": n.needed, "have": n.have, "limit": n.limit} for n in needs}
        pre.problems += [
            f"the inventory cannot hold {plan_clients} sessions: {n.line()} (fab plan)" for n in needs if not n.ok
        ]
    return pre


def preflight(
    inv: Inventory, conns: Mapping[str, Conn], plan_clients: int | None = None, skip_health: bool = False
) -> dict[str, Any]:
    """:func:`inspect_hosts` as ``preflight.json`` holds it."""
    return inspect_hosts(inv, conns, plan_clients, skip_health).to_dict()


def _read_facts(conns: list[Conn]) -> dict[str, Facts]:
    got = fan(conns, ops.host_facts, "reading host facts")
    return {c.inventory_host.name: Facts(v) for c, v in got.items()}


def _read_clocks(conns: list[Conn]) -> dict[str, Clock]:
    got = fan(conns, lambda c: ops.clock_samples(c, python=system_python(c.inventory_host)), "measuring clocks")
    clocks = {}
    for c, samples in got.items():
        o = clock_offset(samples)
        clocks[c.inventory_host.name] = Clock(
            offset_s=o["offset_s"],
            uncertainty_s=o["uncertainty_s"],
            rtt_s=o["rtt_s"],
            samples=int(o["samples"]),
            local=c.inventory_host.local,
        )
    return clocks


def _balancer_caps(f: Facts, share: int | None) -> BalancerCaps:
    nofile, cap, source = f.open_file_limit()
    return BalancerCaps(
        nofile=nofile,
        nofile_source=source,
        max_sessions=cap,
        planned_sessions=share,
        note=f"one HAProxy process holds at most ~{cap} proxied sessions with nofile {nofile}"
        if cap is not None
        else f"sessions per process unknown: {source}",
    )


def _generator_caps(pre: Preflight, h: Host, mine: list[Any]) -> None:
    """*h*'s caps against its slots *mine*; a problem for each limit the slots exceed."""
    clients = sum(s.clients for s in mine)
    procs = max(1, sum(s.processes for s in mine))
    per_proc = -(-clients // procs)
    nofile, fd_cap, source = pre.facts[h.name].open_file_limit()
    lo, hi = pre.facts[h.name].port_range
    per_lb: dict[str, int] = {}
    for s in mine:
        per_lb[s.haproxy] = per_lb.get(s.haproxy, 0) + s.clients
    addresses = max(1, len(source_addresses(h)))
    port_cap = (hi - lo + 1) * addresses  # each source address has the whole range
    pre.caps[h.name] = GeneratorCaps(
        clients=clients,
        processes=procs,
        clients_per_process=per_proc,
        nofile=nofile,
        nofile_source=source,
        max_clients_per_process_by_nofile=fd_cap,
        local_ports=port_cap,
        source_addresses=addresses,
        max_clients_per_balancer_by_ports=port_cap,
    )
    if fd_cap is not None and per_proc > fd_cap:
        pre.problems.append(
            f"{h.name}: {per_proc} clients per process but a process holds ~{fd_cap} with its "
            f"{nofile} open files ({source}): add generator hosts or cores"
        )
    for lb, n in per_lb.items():
        if n > port_cap:  # one local port per WebSocket toward the balancer's WebSocket address:port
            pre.problems.append(
                f"{h.name}: {n} clients to {lb} need {n} local ports toward its WebSocket port but "
                f"ip_local_port_range gives {hi - lo + 1} per source address and the host "
                f"has {addresses}: widen the range (tuning role), add source addresses "
                "(generator_source_addresses) or add generator hosts"
            )
