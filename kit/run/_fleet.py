"""``fab plan``: what a run of N sessions needs per group, read from the inventory's hosts, and the
preflight's refusal of a run the inventory cannot hold (both through :func:`kit.run._sizing.size_fleet`).

Facts come from each host over SSH (:func:`kit.run._hostops.host_facts`: cores, ``ip_local_port_range``
and the tuning role's report of the sessions one kit process holds) and from the inventory
(``wsproxy_instances_per_host``, ``generator_source_addresses``).  ``--from-run`` adds the CPU per
token per component that a previous run measured, at the token rate the planned workload offers, and, when
that run had an idle window, the CPU each connected session costs while it idles (pings, timers), times
the planned sessions.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from kit.inventory import Host, Inventory

from . import _hostops as ops
from ._sizing import HostFacts, Need, format_plan, offered_tokens_per_s, size_fleet

__all__ = ["host_facts_of", "groups_facts", "plan_needs", "source_addresses", "run_costs", "plan"]

#: the components whose idle work grows with the sessions they hold (pings, per-connection timers): a run's
#: idle window gives them a per-session cost for the plan
PER_SESSION_IDLE = ("client", "wsproxy", "haproxy")
#: the simulator's default answer when the plan is given no workload (43 tokens, 50 ms apart)
DEFAULT_TOKENS, DEFAULT_DELAY_MS = 43, 50.0


def source_addresses(h: Host) -> list[str]:
    """The addresses a generator host's connections leave from (``generator_source_addresses``; none:
    the kernel's choice, one address)."""
    raw = h.vars.get("generator_source_addresses") or []
    return [str(a) for a in (raw if isinstance(raw, list) else str(raw).replace(",", " ").split())]


def host_facts_of(h: Host, facts: Mapping[str, Any]) -> HostFacts:
    """What :func:`size_fleet` needs of host *h*, from its SSH facts."""
    _, sessions, _ = ops.open_file_limit(dict(facts))
    pr = facts.get("port_range") or [32768, 60999]
    return HostFacts(
        h.name,
        int(facts.get("nproc") or 1),
        sessions,
        (int(pr[0]), int(pr[1])),
        wsproxy_instances=int(h.vars.get("wsproxy_instances_per_host") or 1),
        source_addresses=max(1, len(source_addresses(h))),
    )


def groups_facts(inv: Inventory, facts: Mapping[str, Mapping[str, Any]]) -> dict[str, list[HostFacts]]:
    """group -> its hosts' :class:`HostFacts` (hosts whose facts could not be read are left out)."""
    return {
        g: [host_facts_of(h, facts[h.name]) for h in inv.group(g) if h.name in facts]
        for g in ("generators", "haproxy", "wsproxy", "sim", "redis")
    }


def run_costs(run_dir: Path) -> tuple[dict[str, float], dict[str, float], dict[str, Any]]:
    """(component -> CPU us per token summed over its hosts, component -> CPU us per second per connected
    session summed over its hosts, the run's workload settings) of a recorded run.

    A run with an idle window (summary.json's ``idle_window``: every session connected, no token) splits
    the cost of the components whose idle work grows with their sessions (:data:`PER_SESSION_IDLE`) in
    two: per token ``us_per_token_net`` (the idle sessions' share taken off) and per session
    ``idle_us_per_session_s``.  That figure is the window's CPU over the sessions the run held, so each
    process's fixed idle work (timers, samplers) is in it too: a plan for many more sessions than the run
    held overestimates it a little, never the other way.  The other components (the simulator's publisher
    tick, Redis's cron: no per-session idle work), and every component of a run without a window, give
    ``us_per_token`` and no per-session cost (the idle CPU is then in the per-token figure, at that run's
    ratio of sessions to tokens)."""
    summary = json.loads((Path(run_dir) / "summary.json").read_text())
    per_token: dict[str, float] = {}
    per_session: dict[str, float] = {}
    for c in summary.get("components") or []:
        split = (
            c.get("component") in PER_SESSION_IDLE
            and c.get("us_per_token_net") is not None
            and c.get("idle_us_per_session_s") is not None
        )
        us = c.get("us_per_token_net") if split else c.get("us_per_token")
        if us:
            per_token[c["component"]] = per_token.get(c["component"], 0.0) + float(us)
        if split:
            per_session[c["component"]] = per_session.get(c["component"], 0.0) + float(c["idle_us_per_session_s"])
    config = (summary.get("run") or {}).get("config") or {}
    return per_token, per_session, config


def plan_needs(
    inv: Inventory,
    facts: Mapping[str, Mapping[str, Any]],
    clients: int,
    *,
    costs: Mapping[str, float] | None = None,
    idle_costs: Mapping[str, float] | None = None,
    tokens: int | None = None,
    token_delay_ms: float | None = None,
    ttft_ms: float | None = None,
    think_time: float | None = None,
) -> tuple[list[Need], float | None]:
    """The needs per group and the offered token rate (None without *costs*)."""
    rate = None
    if costs:
        rate = offered_tokens_per_s(
            clients,
            tokens or DEFAULT_TOKENS,
            DEFAULT_DELAY_MS if token_delay_ms is None else token_delay_ms,
            ttft_ms or 0.0,
            think_time or 0.0,
        )
    return size_fleet(clients, groups_facts(inv, facts), costs, rate, idle_costs), rate


def plan(
    inventory: Path, clients: int, *, out: Callable[[str], None], from_run: Path | None = None, **workload: Any
) -> int:
    """``fab plan``: read every host's facts over SSH, print the table; 0 when the inventory holds the
    run, 1 when it does not (the same exit as a failed threshold: a script can gate on it), 2 when a
    host's limits are unknown (not deployed: no tuning report)."""
    from kit.inventory import load_inventory

    from ._remote import GroupException, close_all, connect, describe_failures, fan_out

    inv = load_inventory(inventory)
    conns = {n: connect(h) for n, h in inv.hosts.items()}
    try:
        try:
            got = fan_out(conns.values(), ops.host_facts)
        except GroupException as exc:
            raise RuntimeError("reading host facts failed: " + "; ".join(describe_failures(exc))) from None
    finally:
        close_all(conns.values())
    facts = {c.inventory_host.name: v for c, v in got.items()}
    costs = idle = None
    extra: dict[str, Any] = {}
    if from_run is not None:
        costs, idle, config = run_costs(from_run)
        for key in ("tokens", "token_delay_ms", "ttft_ms", "think_time"):
            if workload.get(key) is None and config.get(key) is not None:
                workload[key] = config[key]
        extra["CPU per token" + (" and per idle session" if idle else "") + " from"] = str(from_run)
    needs, rate = plan_needs(inv, facts, clients, costs=costs, idle_costs=idle, **workload)
    if rate is not None:
        extra["offered"] = f"{rate:,.0f} tokens/s"
    out(format_plan(clients, needs, extra))
    if not all(n.ok for n in needs):
        return 1
    return 2 if any(n.needed is None for n in needs) else 0
