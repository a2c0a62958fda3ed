"""How many hosts per group a run needs, against what the inventory has (pure): ``fab plan`` and the preflight.

A run of *clients* concurrent sessions needs, per group (:func:`size_fleet`):

* **generators**: one client process per core, each holding at most the sessions its open files allow
  (the tuning report's ``sessions_max``); toward one balancer's WebSocket address:port a generator host
  has its ephemeral ports (``ip_local_port_range``) per source address, one per session (the kernel
  reuses a local port toward another destination, so the HTTP keep-alive connections, toward the
  balancer's other port and bounded per process, do not take from them);
* **haproxy**: one HAProxy process per host, ``sessions_max`` proxied sessions each;
* **wsproxy**: ``wsproxy_instances_per_host`` instances per host, ``sessions_max`` WebSockets each;
* **CPU** (when a previous run's cost per token is known, ``--from-run``): each component's cores at the
  offered token rate, at most :data:`CPU_TARGET` of each host's cores, and one core for a single-threaded
  process (Redis, each wsproxy instance).

Hosts of a group are taken as alike (the first host's facts stand for the group; a host with smaller
limits is named in the preflight's own checks).  Every :class:`Need` says what limits it and what to add.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["Need", "HostFacts", "size_fleet", "offered_tokens_per_s", "CPU_TARGET", "format_plan"]

#: the share of a host's cores a plan lets the kit's and the system's processes use together
CPU_TARGET = 0.7
#: local ports one session holds toward its balancer's WebSocket address:port
PORTS_PER_SESSION = 1
#: which group's hosts carry each component's CPU
COMPONENT_GROUP = {"client": "generators", "sim": "sim", "wsproxy": "wsproxy", "haproxy": "haproxy", "redis": "redis"}


@dataclasses.dataclass(frozen=True)
class HostFacts:
    """What the preflight measured of one host (``ops.host_facts`` and the tuning report)."""

    name: str
    cores: int
    #: sessions one kit process holds under its open-file limit (tuning report), None when unknown
    sessions_max: int | None
    #: (first, last) of ip_local_port_range
    port_range: tuple[int, int] = (32768, 60999)
    wsproxy_instances: int = 1
    source_addresses: int = 1


@dataclasses.dataclass(frozen=True)
class Need:
    """One group's need: *needed* hosts against *have*, limited by *limit*."""

    group: str
    needed: int | None
    have: int
    limit: str
    #: what to do when more hosts would not help (default: add hosts to the group)
    fix: str | None = None

    @property
    def ok(self) -> bool:
        return self.needed is None or self.needed <= self.have

    def line(self) -> str:
        if self.needed is None:
            return f"{self.group}: unknown ({self.limit})"
        verdict = (
            "enough" if self.ok else (self.fix or f"add {self.needed - self.have} host(s) to the {self.group} group")
        )
        return f"{self.group}: needs {self.needed} host(s), has {self.have}: {verdict} ({self.limit})"


def offered_tokens_per_s(
    clients: int, tokens: int, token_delay_ms: float, ttft_ms: float = 0.0, think_time_s: float = 0.0
) -> float:
    """Tokens per second *clients* sessions ask for in a steady state: each asks a query of *tokens*
    tokens, waits for it (TTFT + tokens x delay), thinks, and asks again."""
    cycle = (ttft_ms + max(0, tokens - 1) * token_delay_ms) / 1000.0 + think_time_s
    return clients * tokens / cycle if cycle > 0 else float("inf")


def _ceil(a: float, b: float) -> int:
    return max(1, math.ceil(a / b))


def size_fleet(
    clients: int,
    groups: Mapping[str, Sequence[HostFacts]],
    us_per_token: Mapping[str, float] | None = None,
    tokens_per_s: float | None = None,
    idle_us_per_session: Mapping[str, float] | None = None,
) -> list[Need]:
    """Per group, the hosts a run of *clients* sessions needs against the inventory's (see the module
    docstring).  *us_per_token* (component -> CPU microseconds per delivered token, summed over its
    hosts) and *tokens_per_s* add the CPU needs; *idle_us_per_session* (component -> CPU microseconds
    per second per connected session) adds what the *clients* sessions cost while connected."""
    out: list[Need] = []
    gens = list(groups.get("generators") or [])
    balancers = max(1, len(groups.get("haproxy") or []))
    if gens:
        g = gens[0]
        if g.sessions_max is None:
            out.append(Need("generators", None, len(gens), f"{g.name} has no tuning report: run `fab deploy`"))
        else:
            ports = (g.port_range[1] - g.port_range[0] + 1) * g.source_addresses // PORTS_PER_SESSION
            by_fd, by_ports = g.cores * g.sessions_max, ports * balancers
            per_host = min(by_fd, by_ports)
            why = (
                f"{g.cores} processes x {g.sessions_max:,} sessions by open files"
                if by_fd <= by_ports
                else f"{ports:,} sessions per balancer by local ports ({g.source_addresses} source address(es)) x "
                f"{balancers} balancer(s)"
            )
            out.append(
                Need("generators", _ceil(clients, per_host), len(gens), f"{per_host:,} sessions per host: {why}")
            )
    for group, per in (
        ("haproxy", lambda h: h.sessions_max),
        ("wsproxy", lambda h: None if h.sessions_max is None else h.sessions_max * h.wsproxy_instances),
    ):
        hosts = list(groups.get(group) or [])
        if not hosts:
            continue
        cap = per(hosts[0])
        if cap is None:
            out.append(Need(group, None, len(hosts), f"{hosts[0].name} has no tuning report: run `fab deploy`"))
        else:
            what = "one HAProxy process" if group == "haproxy" else f"{hosts[0].wsproxy_instances} instance(s)"
            out.append(Need(group, _ceil(clients, cap), len(hosts), f"{cap:,} sessions per host ({what})"))
    if us_per_token and tokens_per_s:
        for component, us in us_per_token.items():
            comp_group = COMPONENT_GROUP.get(component)
            hosts = list(groups.get(comp_group or "") or [])
            if not hosts or not us:
                continue
            cores = us * tokens_per_s / 1e6
            cpu_per_host = hosts[0].cores * CPU_TARGET
            limit = f"{component} {us:g} us/token x {tokens_per_s:,.0f} tokens/s"
            idle = (idle_us_per_session or {}).get(component)
            if idle:
                cores += idle * clients / 1e6
                limit += f" + {idle:g} us/s x {clients:,} sessions"
            limit += f" = {cores:.2f} cores"
            if component == "redis":  # the kit's one Redis process uses one core, whatever the host has
                over = cores > CPU_TARGET
                out.append(
                    Need(
                        "redis",
                        2 if over else 1,
                        1,
                        limit + f", one core usable ({CPU_TARGET:.0%})",
                        fix="one Redis process uses one core: lower the token rate" if over else None,
                    )
                )
                continue
            if component == "wsproxy":  # each instance is single-threaded
                cpu_per_host = min(cpu_per_host, hosts[0].wsproxy_instances * CPU_TARGET)
            out.append(
                Need(
                    comp_group or component,
                    _ceil(cores, cpu_per_host),
                    len(hosts),
                    limit + f", {cpu_per_host:.2f} usable per host (CPU)",
                )
            )
    return _worst_per_group(out)


def _worst_per_group(needs: list[Need]) -> list[Need]:
    """Keep, per group, the need that asks for the most hosts (unknowns first: they must be seen)."""
    best: dict[str, Need] = {}
    for n in needs:
        cur = best.get(n.group)
        if cur is None or n.needed is None or (cur.needed is not None and n.needed > cur.needed):
            best[n.group] = n
    return list(best.values())


def format_plan(clients: int, needs: Sequence[Need], extra: Mapping[str, Any] | None = None) -> str:
    """``fab plan``'s table: per group what it needs, what it has and the verdict."""
    lines = [f"plan for {clients:,} concurrent sessions" + "".join(f", {k} {v}" for k, v in (extra or {}).items())]
    width = max((len(n.group) for n in needs), default=5)
    for n in needs:
        need = "?" if n.needed is None else str(n.needed)
        verdict = "ok" if n.ok and n.needed is not None else ("UNKNOWN" if n.needed is None else "TOO FEW")
        lines.append(f"  {n.group:<{width}}  needs {need:>4}  has {n.have:>4}  {verdict:<8} {n.limit}")
    short = [n for n in needs if not n.ok]
    unknown = [n for n in needs if n.needed is None]
    if short:
        lines.append("the inventory cannot hold this run: " + "; ".join(n.line() for n in short))
    elif unknown:
        lines.append("cannot tell yet: " + "; ".join(n.line() for n in unknown))
    else:
        lines.append("the inventory holds this run")
    return "\n".join(lines)
