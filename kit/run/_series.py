"""What the host monitors ask the kit's services every second, and what a run's server side adds up to.

Every host monitor (:mod:`kit.hostmon`, ``--scrape``) asks its host's kit services once a second what
they say of themselves: each wsproxy instance's ``/stats``, the simulator's ``/stats/all`` (every
worker summed), HAProxy's Prometheus exporter (sessions per backend server, queues, server
states) and Redis's ``INFO`` (clients, commands, pub/sub channels, memory).  :func:`scrape_lines` writes a host's list;
:func:`kit._charts.server_series` draws the
samples per second; :func:`server_totals` adds up what the services counted from the first sample of
the run to the last (the counters' growth), which a run compares with what its clients received.
Redis's ``INFO`` is asked as the read-only monitor user (its password file is on the Redis host, 0600).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from kit.inventory import Host, Inventory

from ._balancer import haproxy_flag, haproxy_var

__all__ = ["scrape_lines", "server_totals", "HAPROXY_PREFIXES"]

#: the families of HAProxy's exporter a monitor keeps (the rest stay on the balancer)
HAPROXY_PREFIXES = (
    "haproxy_server_current_sessions",
    "haproxy_backend_current_queue",
    "haproxy_server_status",
    "haproxy_backend_current_sessions",
)
#: the counters server_totals adds up: (service kind, /stats key)
TOTALS = (
    ("wsproxy", "messages_forwarded"),
    ("wsproxy", "slow_client_drops"),
    ("wsproxy", "redis_lost_drops"),
    ("sim", "tokens_published"),
    ("sim", "done_published"),
    ("sim", "messages_dropped"),
)


def scrape_lines(inv: Inventory, h: Host) -> str:
    """The ``--scrape`` file of host *h*: ``NAME URL [PREFIX ...]`` per kit service it runs."""
    roles, addr, lines = inv.roles_of(h.name), h.service_address, []
    if "wsproxy" in roles:
        lines += [f"{program} http://{addr}:{port}/stats" for program, port in h.wsproxy_programs()]
    if "sim" in roles:
        lines.append(f"sim http://{addr}:{h.vars['sim_port']}/stats/all")
    if "redis" in roles:
        lines.append(
            f"redis redis://{h.vars['redis_monitor_user']}@{addr}:{h.vars['redis_port']} "
            f"{h.vars['redis_monitor_password_file']}"
        )
    if "haproxy" in roles and haproxy_flag(h, "haproxy_prometheus_exporter"):
        lines.append(
            f"haproxy http://{addr}:{h.vars['haproxy_stats_port']}{haproxy_var(h, 'haproxy_prometheus_path')} "
            + " ".join(HAPROXY_PREFIXES)
        )
    return "".join(line + "\n" for line in lines)


def server_totals(hosts: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, float]:
    """``{"<kind>_<counter>": growth}`` over every instance: last sample minus first (a counter that went
    down, a restarted service, adds what it counted after its restart)."""
    last: dict[tuple[str, str], Mapping[str, Any]] = {}
    grown: dict[tuple[str, str, str], float] = {}
    for host, samples in hosts.items():
        for s in samples:
            services = s.get("services")
            if not isinstance(services, Mapping):
                continue
            for name, figures in services.items():
                if not isinstance(figures, Mapping) or "error" in figures:
                    continue
                key = (host, name)
                prev = last.get(key)
                if prev is not None:
                    for kind, counter in TOTALS:
                        if name.split("-")[0] == kind and counter in figures and counter in prev:
                            d = figures[counter] - prev[counter]
                            k = (host, name, counter)
                            grown[k] = grown.get(k, 0.0) + (d if d >= 0 else figures[counter])
                last[key] = figures
    out: dict[str, float] = {f"{kind}_{counter}": 0.0 for kind, counter in TOTALS}
    for (_host, name, counter), v in grown.items():
        out[f"{name.split('-')[0]}_{counter}"] += v
    return out
