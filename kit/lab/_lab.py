"""The lab: N test hosts on this machine as network namespaces, each with its own sshd.

``lab_up(n)`` builds, in the root namespace, one Linux bridge (the controller's
address, ``.1`` of the lab's /24) and per host: a namespace ``<prefix>-h<i>``,
a veth pair (root side ``<prefix>-h<i>-v`` on the bridge, namespace side
``eth0`` with address ``.(10+i)``), loopback up, a default route via the
bridge, per-namespace kernel network settings (:data:`LAB_SYSCTLS`) and an sshd
started inside the namespace (and its own UTS namespace: ``hostname`` is the host's name) (key-based root login only, listening on the
host's address) with its own config, host key, pidfile and log under the lab
directory.  It then writes an Ansible inventory (``inventory/lab.yml``) that
reaches the hosts over SSH exactly as real hosts.

Ownership: every namespace, link and process is recorded in
``<lab dir>/state.json`` *before* it is created, so :func:`lab_down` removes
all of it (processes by PID and start time, never by name) even after a
partial or crashed ``lab_up``.  ``lab_up`` on an existing lab is a no-op when
the lab is complete, healthy and of the same shape, and refuses otherwise.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import yaml

from kit import contract
from kit.paths import INVENTORIES, LAB

from ._layout import assign_groups, default_layout
from ._netns import (
    LabError,
    ip,
    kill_pid,
    link_exists,
    netns_exists,
    netns_pids,
    pid_matches,
    proc_start_time,
    route_covering,
    sh,
    wait_port,
)

__all__ = ["LabConfig", "LabHost", "lab_up", "lab_down", "load_state", "LAB_SYSCTLS"]

log = logging.getLogger(__name__)

#: Kernel network settings set inside every lab namespace: the contract's per-namespace kit_sysctl
#: (what the tuning role sets on real hosts), plus a shorter FIN timeout for the lab's churn.
LAB_SYSCTLS: dict[str, str] = {**contract.sysctls(netns_only=True), "net.ipv4.tcp_fin_timeout": "15"}

SSHD = "/usr/sbin/sshd"
SFTP_SERVER = "/usr/lib/openssh/sftp-server"
PRIVSEP_DIR = Path("/run/sshd")
SSHD_READY_TIMEOUT = 20.0


@dataclasses.dataclass(frozen=True, kw_only=True)
class LabConfig:
    """Where the lab lives and which names and addresses it owns."""

    root: Path = LAB
    prefix: str = "lk"
    subnet: str = "10.213.0.0/24"
    inventory_path: Path = INVENTORIES / "lab.yml"
    python_interpreter: str = "/usr/bin/python3"
    #: addresses each generator host has (its own and extra ones from .211 up): the generators'
    #: connections leave from each in turn (``generator_source_addresses``), each with its own ports
    source_addresses: int = 1

    @property
    def state_path(self) -> Path:
        return self.root / "state.json"

    @property
    def key_path(self) -> Path:
        return self.root / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.root / "known_hosts"

    @property
    def bridge(self) -> str:
        return f"{self.prefix}-br"

    def address(self, i: int) -> str:
        net = ipaddress.ip_network(self.subnet)
        return str(net.network_address + (1 if i == 0 else 10 + i))

    def extra_address(self, k: int) -> str:
        """The *k*-th extra address handed to generator hosts (``.211`` up); LabError past the subnet."""
        net = ipaddress.ip_network(self.subnet)
        if 211 + k >= net.num_addresses - 1:
            raise LabError(
                f"--source-addresses: the lab's {self.subnet} has {net.num_addresses - 212} extra "
                "addresses for generator hosts: ask for fewer"
            )
        return str(net.network_address + 211 + k)

    def host_name(self, i: int) -> str:
        return f"{self.prefix}-h{i}"


@dataclasses.dataclass
class LabHost:
    index: int
    name: str
    address: str
    veth: str
    groups: list[str]
    #: extra addresses on eth0 (generator hosts with several source addresses)
    extra: list[str] = dataclasses.field(default_factory=list)
    sshd_pid: int | None = None
    sshd_start: int | None = None


# -- state -------------------------------------------------------------------------------------


def load_state(cfg: LabConfig) -> dict[str, Any] | None:
    try:
        return json.loads(cfg.state_path.read_text())
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise LabError(f"{cfg.state_path} is not valid JSON ({exc}); inspect it, then remove it by hand") from None


def _save_state(cfg: LabConfig, state: dict[str, Any]) -> None:
    tmp = cfg.state_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    os.replace(tmp, cfg.state_path)


# -- up ------------------------------------------------------------------------------------------


def _preflight(cfg: LabConfig, n: int) -> None:
    if os.geteuid() != 0:
        raise LabError("the lab needs root (network namespaces, links, sshd): run as root")
    for tool in ("ip", "ssh-keygen", "sysctl", SSHD):
        if shutil.which(tool) is None:
            raise LabError(f"{tool} not found: install iproute2 and openssh-server (./loadkit setup does)")
    taken = [name for name in [cfg.bridge] + [f"{cfg.host_name(i)}-v" for i in range(1, n + 1)] if link_exists(name)]
    taken += [cfg.host_name(i) for i in range(1, n + 1) if netns_exists(cfg.host_name(i))]
    if taken:
        raise LabError(
            f"{', '.join(taken)} already exist but no lab state records them: "
            "remove them by hand (ip link del / ip netns del) or choose another lab prefix"
        )
    clash = route_covering(cfg.subnet)
    if clash:
        raise LabError(f"the lab subnet {cfg.subnet} clashes with existing route(s) {clash}: choose another subnet")


def _keygen(path: Path, comment: str) -> None:
    if not path.exists():
        sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])
    path.chmod(0o600)


def _sshd_config(cfg: LabConfig, host: LabHost, hdir: Path) -> Path:
    conf = hdir / "sshd_config"
    conf.write_text(
        f"# sshd of lab host {host.name} (written by kit.lab; removed by lab-down)\n"
        f"ListenAddress {host.address}\nPort 22\n"
        f"HostKey {hdir / 'ssh_host_ed25519_key'}\nPidFile {hdir / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {cfg.root / 'authorized_keys'}\n"
        "PermitRootLogin prohibit-password\nPubkeyAuthentication yes\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nUsePAM no\n"
        # lab files live in a root-owned 0700 directory that may sit under /tmp in tests
        "StrictModes no\n"
        "MaxStartups 200:30:400\nMaxSessions 200\nLogLevel INFO\nPrintMotd no\nAcceptEnv LANG LC_*\n"
        f"Subsystem sftp {SFTP_SERVER}\n"
    )
    conf.chmod(0o600)
    return conf


def _start_sshd(cfg: LabConfig, host: LabHost, state: dict[str, Any]) -> None:
    hdir = cfg.root / host.name
    hdir.mkdir(mode=0o700, exist_ok=True)
    _keygen(hdir / "ssh_host_ed25519_key", f"lab host {host.name}")
    conf = _sshd_config(cfg, host, hdir)
    sh([SSHD, "-t", "-f", str(conf)])
    log_path = hdir / "sshd.log"
    pidfile = hdir / "sshd.pid"
    pidfile.unlink(missing_ok=True)
    # `ip netns exec` enters the namespace and execs sshd, which daemonizes (so it is not our
    # child) and writes its PID file; we wait for that file, then record PID and start time.
    # inside its own UTS namespace too, so `hostname` on the lab host answers its name
    sh(
        [
            "ip",
            "netns",
            "exec",
            host.name,
            "unshare",
            "--uts",
            "sh",
            "-c",
            'hostname "$0" && exec "$@"',
            host.name,
            SSHD,
            "-f",
            str(conf),
            "-E",
            str(log_path),
        ]
    )
    deadline = time.monotonic() + SSHD_READY_TIMEOUT
    delay = 0.005
    while not pidfile.exists() or not pidfile.read_text().strip():
        if time.monotonic() > deadline:
            raise LabError(f"sshd of {host.name} wrote no PID file in {SSHD_READY_TIMEOUT:.0f} s; see {log_path}")
        time.sleep(delay)  # poll for the PID file, bounded by the deadline
        delay = min(delay * 2, 0.1)
    pid = int(pidfile.read_text().split()[0])
    host.sshd_pid = pid
    host.sshd_start = proc_start_time(pid)
    _record_host(state, host)
    _save_state(cfg, state)


def _record_host(state: dict[str, Any], host: LabHost) -> None:
    hosts = state["hosts"]
    for i, h in enumerate(hosts):
        if h["name"] == host.name:
            hosts[i] = dataclasses.asdict(host)
            return
    hosts.append(dataclasses.asdict(host))


def _make_host(cfg: LabConfig, host: LabHost, state: dict[str, Any]) -> None:
    _record_host(state, host)
    _save_state(cfg, state)  # recorded before it exists: lab-down removes a half-made host too
    ns = host.name
    ip("netns", "add", ns)
    ip("link", "add", host.veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
    ip("link", "set", host.veth, "master", cfg.bridge, "up")
    prefixlen = ipaddress.ip_network(cfg.subnet).prefixlen
    ip("-n", ns, "link", "set", "lo", "up")
    ip("-n", ns, "addr", "add", f"{host.address}/{prefixlen}", "dev", "eth0")
    for extra in host.extra:
        ip("-n", ns, "addr", "add", f"{extra}/{prefixlen}", "dev", "eth0")
    ip("-n", ns, "link", "set", "eth0", "up")
    ip("-n", ns, "route", "add", "default", "via", cfg.address(0))
    sh(["ip", "netns", "exec", ns, "sysctl", "-q", "-w", *(f"{k}={v}" for k, v in LAB_SYSCTLS.items())])
    _start_sshd(cfg, host, state)


def _healthy(cfg: LabConfig, state: dict[str, Any]) -> list[str]:
    problems = []
    if not link_exists(state["bridge"]["name"]):
        problems.append(f"bridge {state['bridge']['name']} is missing")
    for h in state["hosts"]:
        if not netns_exists(h["name"]):
            problems.append(f"namespace {h['name']} is missing")
        if not pid_matches(h.get("sshd_pid"), h.get("sshd_start")):
            problems.append(f"sshd of {h['name']} (pid {h.get('sshd_pid')}) is not running")
    return problems


def lab_up(n: int, layout: dict[str, int] | None = None, cfg: LabConfig | None = None) -> dict[str, Any]:
    """Build the lab (or confirm an identical healthy one); return its state.  Raises LabError."""
    cfg = cfg or LabConfig()
    layout = layout or default_layout(n)
    assignment = assign_groups(n, layout)
    existing = load_state(cfg)
    if existing is not None:
        same = (
            existing.get("complete")
            and len(existing["hosts"]) == n
            and existing.get("layout") == layout
            and existing.get("source_addresses", 1) == cfg.source_addresses
        )
        problems = _healthy(cfg, existing) if same else []
        if same and not problems:
            log.info("lab: %d hosts already up; inventory rewritten to %s", n, cfg.inventory_path)
            write_inventory(cfg, existing)
            return existing
        why = (
            "; ".join(problems)
            if problems
            else (
                f"it has {len(existing['hosts'])} host(s), layout {existing.get('layout')}"
                + ("" if existing.get("complete") else ", and its lab-up did not finish")
            )
        )
        raise LabError(f"a lab already exists ({cfg.state_path}: {why}): run `fab lab-down` first")
    _preflight(cfg, n)
    cfg.root.mkdir(mode=0o700, parents=True, exist_ok=True)
    cfg.root.chmod(0o700)
    state: dict[str, Any] = {
        "version": 1,
        "complete": False,
        "created_at": time.time(),
        "prefix": cfg.prefix,
        "subnet": cfg.subnet,
        "layout": layout,
        "source_addresses": cfg.source_addresses,
        "groups": {g: [cfg.host_name(i) for i in idx] for g, idx in assignment.items()},
        "bridge": {"name": cfg.bridge, "address": cfg.address(0)},
        "privsep_dir_created": False,
        "inventory": str(cfg.inventory_path),
        "hosts": [],
    }
    _save_state(cfg, state)
    try:
        _keygen(cfg.key_path, "wsproxy-loadkit lab")
        (cfg.root / "authorized_keys").write_text(cfg.key_path.with_suffix(".pub").read_text())
        (cfg.root / "authorized_keys").chmod(0o600)
        if not PRIVSEP_DIR.exists():  # sshd's own directory: lab_down leaves it (see there)
            state["privsep_dir_created"] = True
            _save_state(cfg, state)
            PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
        ip("link", "add", cfg.bridge, "type", "bridge")
        ip("addr", "add", f"{cfg.address(0)}/{ipaddress.ip_network(cfg.subnet).prefixlen}", "dev", cfg.bridge)
        ip("link", "set", cfg.bridge, "up")
        extras = 0
        for i in range(1, n + 1):
            name = cfg.host_name(i)
            groups = [g for g, idx in assignment.items() if i in idx]
            more = cfg.source_addresses - 1 if "generators" in groups else 0
            extra = [cfg.extra_address(extras + k) for k in range(more)]
            extras += more
            _make_host(
                cfg,
                LabHost(index=i, name=name, address=cfg.address(i), veth=f"{name}-v", groups=groups, extra=extra),
                state,
            )
        for h in state["hosts"]:
            wait_port(h["address"], 22, timeout=SSHD_READY_TIMEOUT)
        lines = []
        for h in state["hosts"]:
            pub = (cfg.root / h["name"] / "ssh_host_ed25519_key.pub").read_text().split()
            lines.append(f"{h['address']} {pub[0]} {pub[1]}\n")
        cfg.known_hosts.write_text("".join(lines))
        write_inventory(cfg, state)
        state["complete"] = True
        _save_state(cfg, state)
    except BaseException as exc:
        log.error("lab-up failed (%s); removing what it made", exc)
        try:
            lab_down(cfg)
        except LabError as down_exc:
            log.error("lab-down after the failed lab-up also failed: %s (state kept in %s)", down_exc, cfg.state_path)
        raise
    log.info("lab: %d hosts up on %s (bridge %s), inventory %s", n, cfg.subnet, cfg.bridge, cfg.inventory_path)
    return state


#: where `fab run` serves its live figures in a lab with a monitoring host (README 'Prometheus')
CONTROLLER_METRICS_PORT = 9464


def write_inventory(cfg: LabConfig, state: dict[str, Any]) -> Path:
    common = (
        f"-o UserKnownHostsFile={cfg.known_hosts} -o StrictHostKeyChecking=yes "
        "-o IdentitiesOnly=yes -o ConnectTimeout=10"
    )
    inv = {
        "all": {
            "vars": {
                "ansible_user": "root",
                "ansible_port": 22,
                "ansible_ssh_private_key_file": str(cfg.key_path),
                "ansible_ssh_common_args": common,
                "ansible_python_interpreter": cfg.python_interpreter,
            },
            "hosts": {
                h["name"]: {
                    "ansible_host": h["address"],
                    "lab_netns": h["name"],
                    # Prometheus scrapes `fab run`'s live figures on the bridge (the controller)
                    **(
                        {"monitoring_controller_target": f"{cfg.address(0)}:{CONTROLLER_METRICS_PORT}"}
                        if h["name"] in state["groups"].get("monitoring", [])
                        else {}
                    ),
                    **({"generator_source_addresses": [h["address"], *h["extra"]]} if h.get("extra") else {}),
                }
                for h in state["hosts"]
            },
            "children": {g: {"hosts": {name: None for name in names}} for g, names in state["groups"].items()},
        }
    }
    cfg.inventory_path.parent.mkdir(parents=True, exist_ok=True)
    header = (
        f"# Lab inventory written by `fab lab-up` (kit.lab) for {len(state['hosts'])} network-namespace hosts\n"
        f"# on {state['subnet']}; git-ignored, rewritten by every lab-up.  Layout: {state['layout']}\n"
    )
    cfg.inventory_path.write_text(header + yaml.safe_dump(inv, sort_keys=False, default_flow_style=False))
    return cfg.inventory_path


# -- down ----------------------------------------------------------------------------------------


def lab_down(cfg: LabConfig | None = None) -> list[str]:
    """Remove every process, namespace and link the lab state records; return what was removed.

    Processes still inside a lab namespace (services deployed there through its sshd)
    are stopped by PID before the namespace goes.  Raises LabError listing what could
    not be removed (the state file is then kept so a second lab-down can retry).
    """
    cfg = cfg or LabConfig()
    state = load_state(cfg)
    if state is None:
        return []
    removed: list[str] = []
    failures: list[str] = []
    for h in state["hosts"]:
        pid, start = h.get("sshd_pid"), h.get("sshd_start")
        if pid and start is not None:
            if kill_pid(pid, start):
                removed.append(f"sshd pid {pid} ({h['name']})")
            else:
                failures.append(f"sshd pid {pid} of {h['name']} did not exit")
        if netns_exists(h["name"]):
            for p in netns_pids(h["name"]):
                st = proc_start_time(p)
                if st is not None and kill_pid(p, st):
                    removed.append(f"pid {p} in {h['name']}")
                elif st is not None:
                    failures.append(f"pid {p} in {h['name']} did not exit")
        if link_exists(h["veth"]):
            res = ip("link", "del", h["veth"], check=False)
            (removed if res.returncode == 0 else failures).append(
                f"link {h['veth']}" + ("" if res.returncode == 0 else f": {res.stderr.strip()}")
            )
        if netns_exists(h["name"]):
            res = ip("netns", "del", h["name"], check=False)
            (removed if res.returncode == 0 else failures).append(
                f"netns {h['name']}" + ("" if res.returncode == 0 else f": {res.stderr.strip()}")
            )
    bridge = state["bridge"]["name"]
    if link_exists(bridge):
        res = ip("link", "del", bridge, check=False)
        (removed if res.returncode == 0 else failures).append(
            f"bridge {bridge}" + ("" if res.returncode == 0 else f": {res.stderr.strip()}")
        )
    # /run/sshd stays even when this lab created it: it is the privilege-separation directory of every sshd on
    # the machine, another lab's (a second test shard's) among them, whose new connections are reset without
    # it; Debian's own sshd creates the same directory, and /run is emptied at boot
    if failures:
        raise LabError("lab-down could not remove: " + "; ".join(failures) + f" (state kept in {cfg.state_path})")
    for h in state["hosts"]:
        shutil.rmtree(cfg.root / h["name"], ignore_errors=True)
    for f in (cfg.known_hosts, cfg.root / "authorized_keys"):
        f.unlink(missing_ok=True)
    inv = Path(state.get("inventory", cfg.inventory_path))
    if inv.exists() and inv.read_text().startswith("# Lab inventory written by `fab lab-up`"):
        inv.unlink()
    cfg.state_path.unlink()
    log.info("lab: removed %d item(s)", len(removed))
    return removed
