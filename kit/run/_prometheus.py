"""After a run, the run's window from the monitoring host's Prometheus, into the tarball's ``prometheus/``.

With a host in the inventory's ``monitoring`` group (the monitoring role: Debian's Prometheus
scraping every kit service, node and Redis exporters, and the controller's ``--metrics-listen``
each second), :func:`export_window` asks Prometheus's HTTP API for the kit's series over the run
(``query_range`` from a few seconds before the agreed start to the end, 1 s step) and writes one
JSON file per query (:data:`EXPORT_QUERIES`, Prometheus's own ``matrix`` result) plus the
targets' state at the end (``targets.json``) and ``index.json`` (what was asked, the window, the
series count per file, problems).  A Prometheus that does not answer is a problem line in the run
record, never a failed run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

from kit.inventory import Inventory

__all__ = ["EXPORT_QUERIES", "export_window", "prometheus_url"]

#: file name -> PromQL selector of the series a run's tarball keeps
EXPORT_QUERIES: Mapping[str, str] = {
    "up": "up",
    "loadkit": '{job="loadkit"}',
    "wsproxy": '{job="wsproxy", __name__=~"wsproxy_.*"}',
    "sim": '{job="sim", __name__=~"sim_.*"}',
    "haproxy": '{job="haproxy", __name__=~"haproxy_(server|backend)_(current_sessions|current_queue|status|'
    'sessions_total|connection_errors_total|check_failures_total)"}',
    "redis": '{job="redis", __name__=~"redis_(up|connected_clients|commands_processed_total|pubsub_channels|'
    'memory_used_bytes|net_(input|output)_bytes_total|cpu_(sys|user)_seconds_total|rejected_connections_total)"}',
    "node": '{job="node", __name__=~"node_(cpu_seconds_total|memory_MemAvailable_bytes|memory_MemTotal_bytes|load1|'
    'network_(receive|transmit)_bytes_total|sockstat_TCP_(inuse|mem_bytes|tw)|filefd_allocated)"}',
}
#: seconds of context before the agreed start and after the end
MARGIN_S = 5.0
#: the last scrape of the run lands at most one interval after its end: wait this long before asking
SETTLE_S = 2.0
HTTP_TIMEOUT = 30.0


def prometheus_url(inv: Inventory) -> str | None:
    """``http://<monitoring host>:<prometheus_port>``, or None without a monitoring host."""
    h = inv.monitoring
    return None if h is None else f"http://{h.service_address}:{h.vars['prometheus_port']}"


def export_window(inv: Inventory, start: float, end: float, out_dir: Path) -> list[str]:
    """Write the run's window (*start*..*end*, epoch seconds) into *out_dir*; return the problems."""
    base = prometheus_url(inv)
    if base is None:
        return []
    wait = end + SETTLE_S - time.time()
    if wait > 0:
        time.sleep(wait)
    out_dir.mkdir(parents=True, exist_ok=True)
    window = {"start": start - MARGIN_S, "end": end + MARGIN_S, "step": 1}
    index: dict[str, Any] = {"prometheus": base, "window": window, "queries": {}, "problems": []}
    problems: list[str] = index["problems"]
    with httpx.Client(base_url=base, timeout=HTTP_TIMEOUT) as client:
        for name, query in EXPORT_QUERIES.items():
            try:
                r = client.get("/api/v1/query_range", params={"query": query, **window})
                doc = r.json()
            except (httpx.HTTPError, ValueError) as exc:
                problems.append(f"prometheus {name}: {type(exc).__name__}: {exc}")
                continue
            if doc.get("status") != "success":
                problems.append(f"prometheus {name}: {doc.get('errorType', r.status_code)}: {doc.get('error', '')}")
                continue
            (out_dir / f"{name}.json").write_text(json.dumps(doc["data"]) + "\n")
            index["queries"][name] = {"query": query, "series": len(doc["data"].get("result", []))}
        try:
            targets = client.get("/api/v1/targets", params={"state": "active"}).json()
            (out_dir / "targets.json").write_text(json.dumps(targets.get("data", {}), indent=1) + "\n")
        except (httpx.HTTPError, ValueError) as exc:
            problems.append(f"prometheus targets: {type(exc).__name__}: {exc}")
    (out_dir / "index.json").write_text(json.dumps(index, indent=2) + "\n")
    return problems
