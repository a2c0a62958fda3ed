"""Thin wrappers over iproute2, sysctl and /proc used by the lab (root only).

Every function runs one command with a bounded timeout and raises
:class:`LabError` carrying the command and its stderr when it fails; nothing
here decides what to create, it only does what it is told (``_lab`` owns the
bookkeeping).  Processes are identified by PID *and* start time so a PID that
the kernel has reused is never signalled.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence

__all__ = [
    "wait_port",
    "LabError",
    "sh",
    "ip",
    "netns_exists",
    "link_exists",
    "route_covering",
    "proc_start_time",
    "pid_matches",
    "kill_pid",
    "netns_pids",
]

log = logging.getLogger(__name__)

CMD_TIMEOUT = 30.0


class LabError(RuntimeError):
    """Building or removing the lab failed; the message names the step and the fix."""


def sh(argv: Sequence[str], *, check: bool = True, timeout: float = CMD_TIMEOUT) -> subprocess.CompletedProcess:
    log.debug("lab: %s", " ".join(argv))
    try:
        res = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise LabError(f"{argv[0]} not found: install iproute2/openssh-server (./loadkit setup does)") from None
    except subprocess.TimeoutExpired:
        raise LabError(f"`{' '.join(argv)}` did not finish in {timeout:.0f} s") from None
    if check and res.returncode != 0:
        raise LabError(f"`{' '.join(argv)}` failed ({res.returncode}): {res.stderr.strip() or res.stdout.strip()}")
    return res


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return sh(["ip", *args], check=check)


def netns_exists(name: str) -> bool:
    return os.path.exists(f"/run/netns/{name}")


def link_exists(name: str) -> bool:
    return os.path.exists(f"/sys/class/net/{name}")


def route_covering(subnet: str) -> list[str]:
    """Routes of the root namespace for *subnet* (a clash check before the lab takes it)."""
    res = ip("-j", "route", "show", "table", "all", "match", subnet, check=False)
    try:
        routes = json.loads(res.stdout or "[]")
    except ValueError:
        return []
    return [f"{r.get('dst')} dev {r.get('dev')}" for r in routes if r.get("dst") not in (None, "default")]


def proc_start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat), or None."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            data = fh.read()
    except OSError:
        return None
    fields = data[data.rfind(")") + 2 :].split()
    # fields[0] is field 3 (state); start time is field 22
    if fields and fields[0] == "Z":
        return None
    return int(fields[19])


def pid_matches(pid: int | None, start: int | None) -> bool:
    return pid is not None and pid != 0 and start is not None and proc_start_time(pid) == start


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def kill_pid(pid: int, start: int | None, *, timeout: float = 10.0) -> bool:
    """SIGTERM the process if it is still the one we started, SIGKILL after *timeout*; True if it is gone."""
    if start is None or proc_start_time(pid) != start:
        return True
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, timeout)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return True
        deadline = time.monotonic() + wait
        delay = 0.005
        while time.monotonic() < deadline:
            _reap(pid)
            if proc_start_time(pid) != start:
                return True
            time.sleep(delay)  # poll for exit, bounded by the deadline
            delay = min(delay * 2, 0.1)
    return proc_start_time(pid) != start


def netns_pids(name: str) -> list[int]:
    res = ip("netns", "pids", name, check=False)
    return [int(x) for x in res.stdout.split() if x.strip().isdigit()]


def wait_port(address: str, port: int, *, timeout: float) -> None:
    """Return once *address*:*port* accepts a TCP connection; LabError naming it after *timeout* s."""
    deadline = time.monotonic() + timeout
    delay, last = 0.01, None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((address, port), timeout=1.0):
                return
        except OSError as exc:
            last = exc
        time.sleep(delay)  # a readiness poll, bounded by the deadline
        delay = min(delay * 2, 0.2)
    raise LabError(f"{address}:{port} did not accept a connection within {timeout:g} s ({last})")
