"""Fetching the services' log files from every host (``fab logs`` and each run).

The Ansible roles write service logs under ``<kit_root>/log`` on each host;
supervisord's own log lives there too.  Only
files are fetched (tail-limited to :data:`MAX_LOG_BYTES` each), into
``<dest>/<host>/``.  Problems are returned per host, not raised.
"""

from __future__ import annotations

import logging
import shlex
from pathlib import Path
from typing import Any

from kit.inventory import Host, Inventory

from . import _hostops as ops
from ._remote import GroupException, describe_failures, fan_out

__all__ = ["log_dir", "fetch_logs", "MAX_LOG_BYTES"]

log = logging.getLogger(__name__)

MAX_LOG_BYTES = 20 * 1024 * 1024


def log_dir(host: Host) -> str:
    return host.log_dir


def _fetch(c: Any, dest: Path) -> list[str]:
    h: Host = c.inventory_host
    src = shlex.quote(log_dir(h))
    tmp = f"/tmp/wsproxy-loadkit-logs-{h.name}"
    q = shlex.quote(tmp)
    res = ops.run(c, f"test -d {src}", warn=True)
    if not res.ok:
        return []
    # copying the tails is bounded like packing a folder (ops.FETCH_TIMEOUT): many big logs take a while
    ops.run(
        c,
        f"rm -rf {q} && mkdir -p {q} && cd {src} && find . -type f -name '*log*' | while read -r f; do "
        f'mkdir -p {q}/$(dirname "$f") && tail -c {MAX_LOG_BYTES} "$f" > {q}/"$f"; done',
        timeout=ops.FETCH_TIMEOUT,
    )
    try:
        return ops.fetch_dir(c, tmp, dest / h.name)
    finally:
        ops.run(c, f"rm -rf {q}", warn=True)


def fetch_logs(inv: Inventory, conns: dict[str, Any], dest: Path) -> list[str]:
    """Copy every host's service logs to ``dest/<host>/``; return one line per host that failed."""
    dest.mkdir(parents=True, exist_ok=True)
    try:
        fan_out(list(conns.values()), lambda c: _fetch(c, dest))
    except GroupException as exc:
        return describe_failures(exc)
    return []
