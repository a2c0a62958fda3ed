"""Which wsproxy build a run measured: command, artifact checksum, version string.

The wsproxy role runs the reference wsproxy, or the inventory's ``wsproxy_command`` (a command
already on the host) or ``wsproxy_artifact`` (a file on the controller, copied to
the contract's ``kit_wsproxy_artifact_path`` and run).  :func:`record_build` writes down, for the run
record (``summary["run"]["build"]``), what the inventory asked for and what each wsproxy host
actually has: the SHA-256 of the controller's artifact and of the copy on each host (they differ
when the build changed after the last deploy), the SHA-256 of the executable a command starts,
and what each instance says of itself over HTTP (a ``version`` field of ``/health`` or a 200
``/version``, and its ``Server`` header).  Nothing here raises: what cannot be read is recorded
as a ``problem`` string.  No secret is read (no service environment, no config file).
"""

from __future__ import annotations

import hashlib
import logging
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

from kit import contract
from kit.inventory import Host, Inventory
from kit.paths import REPO

from . import _hostops as ops

__all__ = ["record_build", "build_label", "file_sha256"]

log = logging.getLogger(__name__)

HTTP_TIMEOUT = 3.0
#: what a version answer may be at most (a build string, not a page)
VERSION_MAX = 200


def file_sha256(path: Path) -> str | None:
    try:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()
    except OSError:
        return None


def _kind(h: Host) -> str:
    if h.vars.get("wsproxy_command"):
        return "command"
    return "artifact" if h.vars.get("wsproxy_artifact") else "reference"


def _on_host(c: Any, h: Host, kind: str) -> dict[str, Any]:
    """Checksum of what the host would run, asked over its connection."""
    if kind == "artifact":
        path = h.wsproxy_artifact_path
    elif kind == "command":
        words = shlex.split(str(h.vars["wsproxy_command"]))
        path = f"$(command -v {shlex.quote(words[0])})" if words else ""
    else:
        return {}  # the reference wsproxy is the kit's: its version is the run's kit_version
    # a checksum of a big artifact over a slow disk: bounded like copying a folder
    res = ops.run(c, f'p={path}; [ -n "$p" ] && sha256sum "$p" && echo "path=$p"', warn=True, timeout=ops.FETCH_TIMEOUT)
    lines = res.stdout.split("\n")
    if res.exited != 0 or not lines or len(lines[0].split()) < 2:
        return {"problem": f"cannot checksum {path}: exit {res.exited} {res.stderr.strip()[-200:]}"}
    out = {"sha256": lines[0].split()[0]}
    out.update(line.split("=", 1) for line in lines[1:] if line.startswith("path="))
    return out


def _ask_version(address: str, port: int) -> dict[str, Any]:
    """What one instance says about itself: ``version`` in /health or a 200 /version, and Server."""
    out: dict[str, Any] = {}
    base = f"http://{address}:{port}"
    try:
        with httpx.Client(timeout=HTTP_TIMEOUT) as client:
            r = client.get(f"{base}{contract.health_path()}")
            out["server"] = r.headers.get("server")
            try:
                body = r.json()
            except ValueError:
                body = {}
            if isinstance(body, Mapping) and body.get("version"):
                out["version"] = str(body["version"])[:VERSION_MAX]
            if "version" not in out:
                v = client.get(f"{base}/version")
                if v.status_code == 200 and v.text.strip():
                    try:
                        j = v.json()
                        text = str(j.get("version", j)) if isinstance(j, Mapping) else str(j)
                    except ValueError:
                        text = v.text.strip()
                    out["version"] = text[:VERSION_MAX]
    except httpx.HTTPError as exc:
        out["problem"] = f"{base}: {type(exc).__name__}: {exc}"
    return out


def record_build(inv: Inventory, conns: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The wsproxy build per wsproxy host (see the module docstring); *conns* maps host name -> connection."""
    hosts: dict[str, Any] = {}
    for h in inv.group("wsproxy"):
        kind = _kind(h)
        rec: dict[str, Any] = {"kind": kind}
        if kind == "command":
            rec["command"] = str(h.vars["wsproxy_command"])
        elif kind == "artifact":
            art = Path(str(h.vars["wsproxy_artifact"])).expanduser()
            art = art if art.is_absolute() else REPO / art
            rec["artifact"] = str(art)
            rec["artifact_sha256"] = file_sha256(art)
            rec["command"] = h.wsproxy_artifact_path
        else:
            rec["command"] = f"{h.kit_python} -m kit.wsproxy"
        c = (conns or {}).get(h.name)
        if c is not None:
            try:
                rec["on_host"] = _on_host(c, h, kind)
            except Exception as exc:  # recorded, never fatal: the run goes on without it
                rec["on_host"] = {"problem": f"{type(exc).__name__}: {exc}"}
            deployed = rec["on_host"].get("sha256")
            if kind == "artifact" and deployed and rec.get("artifact_sha256") and deployed != rec["artifact_sha256"]:
                rec["problem"] = (
                    "the artifact on the host differs from the controller's: redeploy "
                    "(`fab deploy --playbook wsproxy.yml`) to measure the current build"
                )
        rec["instances"] = {program: _ask_version(h.service_address, port) for program, port in h.wsproxy_programs()}
        hosts[h.name] = rec
    versions = sorted({i.get("version") for r in hosts.values() for i in r["instances"].values() if i.get("version")})
    sums = sorted(
        {r.get("artifact_sha256") or (r.get("on_host") or {}).get("sha256") or "" for r in hosts.values()} - {""}
    )
    kinds = sorted({r["kind"] for r in hosts.values()})
    return {
        "wsproxy": {
            "kind": ",".join(kinds),
            "commands": sorted({r["command"] for r in hosts.values()}),
            "sha256": sums,
            "versions": versions,
            "servers": sorted(
                {i.get("server") for r in hosts.values() for i in r["instances"].values() if i.get("server")}
            ),
            "hosts": hosts,
        }
    }


def build_label(run_record: Mapping[str, Any]) -> str:
    """One line naming a run's wsproxy build, for tables: kind, version, short checksum."""
    w = (run_record.get("build") or {}).get("wsproxy") or {}
    if not w:
        return "not recorded"
    parts = [w.get("kind") or "?"]
    if w.get("versions"):
        parts.append(" ".join(w["versions"]))
    if w.get("sha256"):
        parts.append("sha256:" + ",".join(s[:12] for s in w["sha256"]))
    if w.get("kind") == "command" and w.get("commands"):
        parts.append(" | ".join(w["commands"]))
    if not w.get("versions") and w.get("servers"):
        parts.append("server " + " ".join(w["servers"]))
    return " ".join(parts)
