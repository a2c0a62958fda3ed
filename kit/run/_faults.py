"""Executing ``--chaos`` faults over SSH at their time, and undoing them on every exit path.

:class:`ChaosRunner` owns one thread and one connection per fault: the thread waits until
``start_at + at_s`` (the controller's clock, the one ``start_at`` was agreed in), applies the
fault, waits ``for_s`` and undoes it.  :meth:`ChaosRunner.stop` (called from the run's single
``finally``) wakes every thread, undoes whatever is still applied, joins them (bounded) and
closes the connections; every fault is recorded as an event, failures included (``ok: false``
with the reason).  Faults that change a host's network also leave a safety timer on the host
(``sleep; undo``) so a controller that dies by SIGKILL does not leave a partition behind.

Mechanisms (commands run as root, through ``sudo -n`` when the SSH user is not root):

- kill: ``kill -KILL`` of the program's main PID from its service manager (the supervisor or
  systemd restarts it); restart: ``supervisorctl restart`` / ``systemctl restart``;
  pause: ``kill -STOP``, then ``kill -CONT``;
- partition: one nftables table on the target dropping packets to and from every other
  inventory host's address (SSH to the target itself stays open, so the undo can reach it);
- delay: ``tc qdisc replace dev D root netem delay ARG`` on the devices routing to the other
  hosts where the kernel has netem; else an iptables ``NFQUEUE`` rule and a small verdict
  loop (``_nfqdelay.py``, copied over) that releases each outgoing packet ARG ms after it was
  queued.  Measured in the lab: see tests/lab/test_chaos_lab.py.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shlex
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kit.inventory import Inventory

from . import _hostops as ops
from ._chaos import ChaosSpec, FaultTarget
from ._remote import connect
from ._svcmgr import resolve_service_pids, service_action

__all__ = ["Fault", "ChaosRunner", "NFQDELAY_SRC"]

log = logging.getLogger(__name__)

NFQDELAY_SRC = Path(__file__).with_name("_nfqdelay.py")
#: seconds a host's safety timer waits past a fault's end before undoing it itself
SAFETY_S = 30.0
#: seconds stop() waits for each fault thread
JOIN_S = 30.0
#: first NFQUEUE number the kit uses (one per delay fault)
QUEUE_BASE = 4242
_ROOT = 'S=; [ "$(id -u)" = 0 ] || S="sudo -n"; '


@dataclasses.dataclass
class Fault:
    """One fault on one unit, and what happened to it."""

    spec: ChaosSpec
    target: FaultTarget
    index: int
    started_at: float | None = None
    ended_at: float | None = None
    ok: bool | None = None
    detail: str = ""
    undo: Callable[[], str] | None = None
    undo_problem: str = ""
    #: seconds from the planned instant to the fault being in place (the commands that apply it)
    apply_s: float | None = None
    #: what was looked up and copied before the fault's instant (a delay's devices and helper)
    prepared: dict[str, Any] = dataclasses.field(default_factory=dict)

    def event(self, start_at: float) -> dict[str, Any]:
        at = None if self.started_at is None else round(self.started_at - start_at, 3)
        dur = (
            round(self.ended_at - self.started_at, 3)
            if self.started_at is not None and self.ended_at is not None
            else None
        )
        return {
            "action": self.spec.action,
            "target": self.spec.text.split(":", 1)[1].split("@", 1)[0],
            "host": self.target.host,
            "program": self.target.program,
            "spec": self.spec.text,
            "planned_at_s": self.spec.at_s,
            "planned_for_s": self.spec.for_s,
            "at_s": at,
            "for_s": dur,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "apply_s": self.apply_s,
            "ok": bool(self.ok) and not self.undo_problem,
            "detail": "; ".join(x for x in (self.detail, self.undo_problem) if x),
        }


def _sh(c: Any, cmd: str, timeout: float = ops.CMD_TIMEOUT) -> str:
    res = c.run(_ROOT + cmd, hide=True, warn=True, timeout=timeout)
    if res.exited != 0:
        raise RuntimeError(f"`{cmd[:120]}` exited {res.exited}: {(res.stderr or res.stdout).strip()[-300:]}")
    return res.stdout.strip()


def _safety(c: Any, marker: str, after_s: float, cmd: str) -> str:
    """A timer on the host that runs *cmd* after *after_s* s unless the fault's undo removed *marker* first.

    Returns the shell words that disarm it (put them before the undo): without the marker a timer
    left by one run cannot undo a later run's fault of the same name on that host."""
    m = shlex.quote(marker)
    inner = f"sleep {after_s:.0f}; [ -e {m} ] && rm -f {m} && {cmd}"
    _sh(
        c,
        f"mkdir -p $(dirname {m}) && : > {m} && (setsid $S sh -c {shlex.quote(inner)} < /dev/null > /dev/null 2>&1 &)",
    )
    return f"rm -f {m}; "


def _addresses(inv: Inventory, host: str) -> list[str]:
    """IPv4 addresses of every other inventory host (resolved here), without the target's own."""

    def resolve(name: str) -> str:
        return socket.gethostbyname(inv.hosts[name].address)

    mine = resolve(host)
    return sorted({resolve(n) for n in inv.hosts if n != host} - {mine})


class ChaosRunner:
    """The run's faults; ``start()`` before the watch, ``stop()`` in the run's ``finally``."""

    def __init__(
        self,
        faults: list[Fault],
        inv: Inventory,
        start_at: float,
        remote_root: dict[str, str],
        say: Callable[[str], None],
    ) -> None:
        self.faults = faults
        self.inv = inv
        self.start_at = start_at
        self.remote_root = remote_root
        self.say = say
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    # -------------------------------------------------------------- lifecycle

    def start(self) -> None:
        for f in self.faults:
            t = threading.Thread(target=self._one, args=(f,), name=f"chaos-{f.index}", daemon=True)
            self._threads.append(t)
            t.start()

    def stop(self) -> list[str]:
        """Cancel faults not yet applied, undo those applied, join; return one line per problem."""
        self._stop.set()
        problems = []
        for t in self._threads:
            t.join(JOIN_S)
            if t.is_alive():
                problems.append(f"chaos thread {t.name} did not finish in {JOIN_S:g} s")
        for f in self.faults:
            if f.undo is not None:  # its thread could not undo it: try once more from here
                self._undo(f)
            if f.undo_problem:
                problems.append(f"{f.spec.text} on {f.target.label()}: {f.undo_problem}")
        return problems

    def events(self) -> list[dict[str, Any]]:
        return [f.event(self.start_at) for f in self.faults]

    # -------------------------------------------------------------- one fault

    def _one(self, f: Fault) -> None:
        c = connect(self.inv.hosts[f.target.host])
        try:
            try:
                c.open()  # the SSH handshake now, not at the fault's instant
            except Exception as exc:  # recorded on the event; the run goes on
                f.ok, f.detail = False, f"cannot reach {f.target.host}: {exc}"
                return
            try:
                self._prepare(c, f)
            except Exception as exc:  # recorded on the event; the run goes on
                f.ok, f.detail = False, f"cannot prepare {f.spec.action} on {f.target.host}: {exc}"
                return
            if self._stop.wait(max(0.0, self.start_at + f.spec.at_s - time.time())):
                f.detail = "not applied: the run ended first"
                return
            t0 = time.time()
            try:
                f.detail, f.undo = self._apply(c, f)
                f.ok = True
            except Exception as exc:  # recorded on the event; the run goes on
                f.ok, f.detail = False, f"{type(exc).__name__}: {exc}"
                f.started_at = t0
                f.ended_at = time.time()
                log.warning("chaos %s on %s failed: %s", f.spec.text, f.target.label(), exc)
                self.say(f"  chaos: {f.spec.text} on {f.target.label()} FAILED: {exc}")
                return
            # in place from here: the commands that applied it have returned (a loaded host can take seconds)
            f.started_at = time.time()
            f.apply_s = round(f.started_at - t0, 3)
            self.say(f"  chaos: t={f.started_at - self.start_at:.1f}s {f.spec.action} {f.target.label()}: {f.detail}")
            if f.undo is None:
                f.ended_at = f.started_at
                return
            self._stop.wait(max(0.0, f.started_at + f.spec.for_s - time.time()))
            self._undo(f)
        finally:
            try:
                c.close()
            except Exception:  # closing is best effort
                pass

    def _undo(self, f: Fault) -> None:
        with self._lock:
            undo, f.undo = f.undo, None
        if undo is None:
            return
        try:
            f.detail += f"; undone: {undo()}"
            f.undo_problem = ""
        except Exception as exc:  # reported: a fault left in place must be visible
            f.undo_problem = f"UNDO FAILED: {type(exc).__name__}: {exc}"
            log.error("chaos %s on %s: undo failed: %s", f.spec.text, f.target.label(), exc)
        f.ended_at = time.time()

    def _apply(self, c: Any, f: Fault) -> tuple[str, Callable[[], str] | None]:
        action = f.spec.action
        if action == "restart":
            return service_action(c, f.target.program or "", "restart"), None
        if action in ("kill", "pause"):
            return self._signal(c, f)
        if action == "partition":
            return self._partition(c, f)
        return self._delay(c, f)

    def _dir(self, f: Fault) -> str:
        """The fault's own folder in the run's directory on its host (its helper, its safety timer's marker)."""
        return f"{self.remote_root[f.target.host]}/chaos-{f.index}"

    def _marker(self, f: Fault) -> str:
        """The file whose presence arms the fault's safety timer."""
        return f"{self._dir(f)}/armed"

    def _pid(self, c: Any, program: str) -> int:
        pids, problems = resolve_service_pids(c, self.inv, only=[program])
        pid = pids.get(program, ("", None))[1]
        if pid is None:
            raise RuntimeError(problems[0] if problems else f"{program} is not a kit service of this host")
        return pid

    def _signal(self, c: Any, f: Fault) -> tuple[str, Callable[[], str] | None]:
        program = f.target.program or ""
        pid = self._pid(c, program)
        if f.spec.action == "kill":
            _sh(c, f"$S kill -KILL {pid}")
            return f"SIGKILL {program} pid {pid}", None
        _sh(c, f"$S kill -STOP {pid}")
        disarm = _safety(c, self._marker(f), f.spec.for_s + SAFETY_S, f"kill -CONT {pid}")

        def cont() -> str:
            _sh(c, f"{disarm}$S kill -CONT {pid}")
            return f"SIGCONT pid {pid}"

        return f"SIGSTOP {program} pid {pid}", cont

    def _partition(self, c: Any, f: Fault) -> tuple[str, Callable[[], str] | None]:
        others = _addresses(self.inv, f.target.host)
        if not others:
            raise RuntimeError("no other host address to partition from")
        port = self.inv.hosts[f.target.host].port
        table = f"wsproxy_loadkit_chaos{f.index}"
        addrs = ", ".join(others)
        ruleset = (
            f"table inet {table} {{\n"
            f"  chain input {{ type filter hook input priority -10; policy accept;\n"
            f"    tcp dport {port} accept\n    ip saddr {{ {addrs} }} drop\n  }}\n"
            f"  chain output {{ type filter hook output priority -10; policy accept;\n"
            f"    tcp sport {port} accept\n    ip daddr {{ {addrs} }} drop\n  }}\n}}\n"
        )
        _sh(
            c,
            "command -v nft >/dev/null || { echo 'nft not found: deploy the tuning role "
            "(installs nftables) or apt-get install nftables' >&2; exit 127; }; "
            f"printf %s {shlex.quote(ruleset)} | $S nft -f -",
        )
        drop = f"nft delete table inet {table}"
        disarm = _safety(c, self._marker(f), f.spec.for_s + SAFETY_S, drop + " 2>/dev/null")

        def heal() -> str:
            _sh(c, f"{disarm}$S {drop}")
            return f"table {table} deleted"

        return f"nftables table {table} drops traffic to/from {addrs}", heal

    def _prepare(self, c: Any, f: Fault) -> None:
        """What a fault needs that can be done before its instant, so that applying it is one command.

        A delay: the other hosts' addresses, the devices routing to them, and the NFQUEUE helper copied
        into the run's directory (used only where the kernel has no netem)."""
        if f.spec.action != "delay":
            return
        h = self.inv.hosts[f.target.host]
        others = _addresses(self.inv, f.target.host)
        if not others:
            raise RuntimeError("no other host address to delay traffic to")
        devs = sorted(
            {
                d
                for d in _sh(
                    c,
                    "for a in " + " ".join(others) + "; do ip -o route get $a | "
                    "sed -n 's/.* dev \\([^ ]*\\).*/\\1/p'; done",
                ).split()
                if d != "lo"
            }
        )
        if not devs:
            raise RuntimeError(f"no route from {h.name} to {', '.join(others)}")
        d = self._dir(f)
        c.run(f"mkdir -p {shlex.quote(d)}", hide=True, timeout=ops.CMD_TIMEOUT)
        c.put(str(NFQDELAY_SRC), f"{d}/nfqdelay.py")
        f.prepared = {"others": others, "devs": devs}

    def _delay(self, c: Any, f: Fault) -> tuple[str, Callable[[], str] | None]:
        others, devs = f.prepared["others"], f.prepared["devs"]
        ms = f.spec.arg_ms or 0.0
        probe = c.run(
            _ROOT + f"$S tc qdisc replace dev {devs[0]} root netem delay {ms:g}ms 2>&1",
            hide=True,
            warn=True,
            timeout=ops.CMD_TIMEOUT,
        )
        if probe.exited == 0:
            for d in devs[1:]:
                _sh(c, f"$S tc qdisc replace dev {d} root netem delay {ms:g}ms")
            dels = "; ".join(f"tc qdisc del dev {d} root" for d in devs)
            disarm = _safety(c, self._marker(f), f.spec.for_s + SAFETY_S, "{ " + dels + "; } 2>/dev/null")

            def no_netem() -> str:
                _sh(c, disarm + "$S sh -c " + shlex.quote(dels))
                return f"netem removed from {', '.join(devs)}"

            return f"netem delay {ms:g}ms on {', '.join(devs)}", no_netem
        why = probe.stdout.strip().splitlines()[-1] if probe.stdout.strip() else f"exit {probe.exited}"
        return self._nfq_delay(c, f, others, ms, f"netem unavailable ({why})")

    def _nfq_delay(
        self, c: Any, f: Fault, others: list[str], ms: float, why: str
    ) -> tuple[str, Callable[[], str] | None]:
        h = self.inv.hosts[f.target.host]
        d = self._dir(f)
        py = str(h.vars.get("ansible_python_interpreter") or "")
        py = py if py.startswith("/") else "python3"
        argv = [
            "sh",
            "-c",
            _ROOT + 'exec $S "$@"',
            "nfqdelay",
            py,
            f"{d}/nfqdelay.py",
            "--delay-ms",
            f"{ms:g}",
            "--duration",
            f"{f.spec.for_s + SAFETY_S:g}",
            "--queue",
            str(QUEUE_BASE + f.index),
            "--dest",
            ",".join(others),
        ]
        ops.start_job(c, d, argv)
        deadline = time.monotonic() + 15
        while True:
            st = ops.job_state(c, d)
            text = c.run(
                f"cat {shlex.quote(d)}/out.log 2>/dev/null", hide=True, warn=True, timeout=ops.CMD_TIMEOUT
            ).stdout
            if '"ready": true' in text:
                break
            if st["rc"] is not None or not st["alive"] or time.monotonic() > deadline:
                ops.stop_job(c, d, grace=2)
                raise RuntimeError(f"{why}; NFQUEUE delay did not start: {text.strip()[-300:] or 'no output'}")
            time.sleep(0.1)  # waiting for the verdict loop to bind its queue, bounded

        def release() -> str:
            ops.stop_job(c, d, grace=5)
            last = c.run(f"tail -1 {shlex.quote(d)}/out.log", hide=True, warn=True, timeout=ops.CMD_TIMEOUT)
            try:
                stats = json.loads(last.stdout)
            except ValueError:
                return "NFQUEUE delay stopped"
            if not stats.get("rule_removed", False):
                raise RuntimeError(f"NFQUEUE rule not removed: {stats.get('rule_error', stats)}")
            return f"NFQUEUE delay stopped after {stats.get('packets', 0)} packets"

        return f"{why}: NFQUEUE delay {ms:g}ms on packets to {', '.join(others)}", release
