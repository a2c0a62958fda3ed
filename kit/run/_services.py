"""Health and server-side stats of the deployed services, asked from the controller.

Where things are comes from the inventory as the playbooks see it (the kit's
contract under the inventory's overrides, :mod:`kit.inventory`) and the secrets
the roles keep on the controller in ``<repo>/.secrets/`` (0600).  Secrets are read from files
and sent only to the service that owns them; they never reach argv or logs.

Every check returns a record ``{host, service, target, ok, detail}`` rather
than raising, so ``fab status`` and the preflight report every unhealthy
service at once.
"""

from __future__ import annotations

import csv
import io
import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import httpx
import redis

from kit import contract
from kit.inventory import Host, Inventory
from kit.paths import REPO
from kit.paths import SECRETS as SECRETS_DIR

__all__ = [
    "service_targets",
    "check_health",
    "settled_health",
    "SETTLE_S",
    "collect_server_stats",
    "read_secret",
    "SECRETS_DIR",
    "secrets_dir",
    "tls_ca_file",
    "haproxy_urls",
]

log = logging.getLogger(__name__)

HTTP_TIMEOUT = 5.0


def secrets_dir(inv: Inventory) -> Path:
    """The controller's secrets directory (``kit_secrets_dir``, else ``<repo>/.secrets``)."""
    any_host = next(iter(inv.hosts.values()), None)
    base = Path(any_host.vars.get("kit_secrets_dir") or SECRETS_DIR) if any_host else SECRETS_DIR
    return base if base.is_absolute() else REPO / base


def read_secret(inv: Inventory, which: str) -> str | None:
    """The secret *which* (its file's name, one of the contract's kit_secrets), None when it is missing."""
    if which not in contract.secret_files():
        raise KeyError(f"{which!r} is not one of the contract's kit_secrets")
    p = secrets_dir(inv) / which
    return p.read_text().strip() if p.exists() else None


def tls_ca_file(inv: Inventory) -> Path:
    """The kit CA's certificate the haproxy role made (``haproxy_tls``): what ``fab run --tls`` trusts."""
    return secrets_dir(inv) / contract.contract()["kit_tls_ca_cert"]


def haproxy_urls(host: Host, tls: bool = False) -> tuple[str, str]:
    """(API url, WebSocket url) of one balancer, as generators reach it (``https``/``wss`` with *tls*)."""
    http, ws = int(host.vars["haproxy_http_port"]), int(host.vars["haproxy_ws_port"])
    s = "s" if tls else ""
    return f"http{s}://{host.service_address}:{http}", f"ws{s}://{host.service_address}:{ws}"


def service_targets(inv: Inventory) -> list[dict[str, Any]]:
    """Every service instance the inventory deploys: host, service, address, port."""
    out: list[dict[str, Any]] = []
    for h in inv.group("redis"):
        out.append(
            {"host": h.name, "service": "redis", "address": h.service_address, "port": int(h.vars["redis_port"])}
        )
    for h in inv.group("haproxy"):
        out.append(
            {
                "host": h.name,
                "service": "haproxy",
                "address": h.service_address,
                "port": int(h.vars["haproxy_stats_port"]),
            }
        )
    for h in inv.group("wsproxy"):
        for program, port in h.wsproxy_programs():
            out.append({"host": h.name, "service": program, "address": h.service_address, "port": port})
    for h in inv.group("sim"):
        out.append({"host": h.name, "service": "sim", "address": h.service_address, "port": int(h.vars["sim_port"])})
    return out


def _stats_url(host: Host, t: dict[str, Any]) -> str:
    return f"http://{t['address']}:{t['port']}{host.vars['haproxy_stats_uri']};csv"


def _stats_auth(inv: Inventory, host: Host) -> tuple[str, str] | None:
    pw = read_secret(inv, "haproxy_stats_password")
    return None if pw is None else (str(host.vars["haproxy_stats_user"]), pw)


def _redis_client(inv: Inventory, t: dict[str, Any]) -> redis.Redis:
    host = inv.hosts[t["host"]]
    return redis.Redis(
        host=t["address"],
        port=t["port"],
        username=str(host.vars["redis_admin_user"]),
        password=read_secret(inv, "redis_admin_password"),
        socket_timeout=HTTP_TIMEOUT,
        socket_connect_timeout=HTTP_TIMEOUT,
    )


def _check(inv: Inventory, t: dict[str, Any], client: httpx.Client) -> dict[str, Any]:
    rec = {**t, "target": f"{t['address']}:{t['port']}", "ok": False, "detail": ""}
    try:
        if t["service"] == "redis":
            r = _redis_client(inv, t)
            try:
                rec["ok"] = bool(r.ping())
                rec["detail"] = "PONG"
            finally:
                r.close()
        elif t["service"] == "haproxy":
            auth = _stats_auth(inv, inv.hosts[t["host"]])
            resp = client.get(_stats_url(inv.hosts[t["host"]], t), auth=auth)
            rec["ok"] = resp.status_code == 200
            if rec["ok"]:
                rows = list(csv.DictReader(io.StringIO(resp.text.lstrip("# "))))
                down = [
                    f"{r['pxname']}/{r['svname']}"
                    for r in rows
                    if r.get("svname") not in ("FRONTEND", "BACKEND") and r.get("status", "").startswith("DOWN")
                ]
                rec["detail"] = f"{len(rows)} stats rows" + (f"; servers DOWN: {', '.join(down)}" if down else "")
                rec["ok"] = not down
            else:
                rec["detail"] = f"stats page answered HTTP {resp.status_code}" + (
                    "" if auth else " (no stats password found in .secrets/)"
                )
        else:
            resp = client.get(f"http://{t['address']}:{t['port']}{inv.hosts[t['host']].vars['kit_deep_health_path']}")
            rec["ok"] = resp.status_code == 200
            rec["detail"] = resp.text.strip()[:200]
    except (OSError, httpx.HTTPError, redis.RedisError) as exc:
        rec["detail"] = f"{type(exc).__name__}: {exc}"
    return rec


def check_health(inv: Inventory) -> list[dict[str, Any]]:
    """Health of every service instance in the inventory (redis PING, haproxy stats, the services'
    deep check kit_deep_health_path: their own state and a Redis round trip)."""
    with httpx.Client(timeout=HTTP_TIMEOUT) as client:
        return [_check(inv, t, client) for t in service_targets(inv)]


#: how long the preflight waits for HAProxy to mark UP servers that are healthy themselves (just deployed or
#: restarted: the haproxy role's defaults take rise 2 x downinter 2 s after the first good check)
SETTLE_S = 20.0
#: seconds between two looks while it waits
SETTLE_POLL_S = 0.5


def settled_health(
    inv: Inventory,
    settle_s: float = SETTLE_S,
    check: Callable[[Inventory], list[dict[str, Any]]] = check_health,
) -> list[dict[str, Any]]:
    """:func:`check_health`, looked at again until HAProxy has caught up, for at most *settle_s*.

    Right after ``fab deploy`` (or a restart) every wsproxy may answer its own deep check while HAProxy still
    marks some DOWN until its checks rise: a run then would start on a balancer with too few servers.  When
    the only problems are servers HAProxy marks DOWN, the check is repeated until they are UP or *settle_s*
    has passed; any other problem (a service's own check failing) is returned at once.
    """
    deadline = time.monotonic() + settle_s
    while True:
        health = check(inv)
        bad = [r for r in health if not r["ok"]]
        lagging = bool(bad) and all(r["service"] == "haproxy" and "servers DOWN" in r["detail"] for r in bad)
        if not lagging or time.monotonic() >= deadline:
            return health
        time.sleep(SETTLE_POLL_S)


def collect_server_stats(inv: Inventory, out_dir: Path) -> list[str]:
    """Write HAProxy stats CSV, Redis INFO, wsproxy and sim /stats under *out_dir*; return problems."""
    out_dir.mkdir(parents=True, exist_ok=True)
    problems: list[str] = []
    with httpx.Client(timeout=HTTP_TIMEOUT) as client:
        for t in service_targets(inv):
            name = f"{t['host']}-{t['service']}"
            try:
                if t["service"] == "redis":
                    r = _redis_client(inv, t)
                    try:
                        info = r.info("all")
                    finally:
                        r.close()
                    (out_dir / f"{name}-info.json").write_text(_json(info))
                elif t["service"] == "haproxy":
                    resp = client.get(_stats_url(inv.hosts[t["host"]], t), auth=_stats_auth(inv, inv.hosts[t["host"]]))
                    resp.raise_for_status()
                    (out_dir / f"{name}-stats.csv").write_text(resp.text)
                else:  # the simulator's every worker summed (its /stats is the answering worker's)
                    path = "/stats/all" if t["service"] == "sim" else "/stats"
                    resp = client.get(f"http://{t['address']}:{t['port']}{path}")
                    resp.raise_for_status()
                    (out_dir / f"{name}-stats.json").write_text(resp.text)
            except (OSError, httpx.HTTPError, redis.RedisError) as exc:
                problems.append(f"{name}: {type(exc).__name__}: {exc}")
    return problems


def _json(data: Any) -> str:
    import json

    return json.dumps(data, indent=2, default=str) + "\n"


def unhealthy(records: Iterable[dict[str, Any]]) -> list[str]:
    return [f"{r['host']} {r['service']} ({r['target']}): {r['detail']}" for r in records if not r["ok"]]
