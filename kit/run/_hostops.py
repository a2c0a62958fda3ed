"""Commands ``fab run`` sends to one host: facts, clock samples, background jobs, fetching folders.

Each function takes one connection (``fabric.Connection`` or
:class:`~kit.run._remote.LocalConnection`) and runs plain shell on it, so the
same code drives SSH hosts and this machine.  Background jobs are started under
``setsid`` with their PID, exit status and output in files of their own
folder; the caller owns the job and stops it with :func:`stop_job` (process
group, by PID).  Failures raise (the fan-out reports them per host).

Every command carries a timeout (:data:`CMD_TIMEOUT`, longer for copying
folders), and every file copy a bound on each of its reads and writes
(``SFTP_TIMEOUT``, kit/run/_remote.py): a host that stops answering fails its
command or copy instead of hanging the run.  A job that survives
:func:`stop_job` raises :class:`JobSurvived` naming what is left, so the
caller reports it.
"""

from __future__ import annotations

import json
import logging
import secrets
import shlex
import tarfile
import time
from pathlib import Path
from typing import Any

__all__ = [
    "run",
    "host_facts",
    "open_file_limit",
    "FROM_SSH_LIMIT",
    "clock_samples",
    "start_job",
    "job_state",
    "job_record",
    "job_ended",
    "stop_job",
    "fetch_dir",
    "CLOCK_SAMPLES",
    "CMD_TIMEOUT",
    "FETCH_TIMEOUT",
    "JobSurvived",
]

log = logging.getLogger(__name__)

CLOCK_SAMPLES = 5
#: seconds any one remote command may take (a host that stops answering fails the command)
CMD_TIMEOUT = 60.0
#: seconds to pack a run folder on a host (raw CSVs of a big run)
FETCH_TIMEOUT = 600.0


class JobSurvived(RuntimeError):
    """A background job (or a process of its session) is still alive after SIGKILL."""


def run(c: Any, command: str, *, warn: bool = False, timeout: float = CMD_TIMEOUT) -> Any:
    """*command* on *c*'s host, output captured, within *timeout* seconds (``invoke.CommandTimedOut`` past it).

    The way for any module to send a one-off command without forgetting its bound; raises
    ``invoke.UnexpectedExit`` on a non-zero exit unless *warn*.
    """
    return c.run(command, hide=True, warn=warn, timeout=timeout)


#: the facts script's first line: whatever a host prints before it is its login shell's own output
FACTS_BEGIN = "facts=begin"

_FACTS = r"""
echo "{begin}"
echo "nproc=$(nproc)"
echo "nofile_hard=$(ulimit -Hn)"
echo "nofile_soft=$(ulimit -Sn)"
echo "port_range=$(cat /proc/sys/net/ipv4/ip_local_port_range | tr '\t' ' ')"
echo "somaxconn=$(cat /proc/sys/net/core/somaxconn)"
echo "file_max=$(cat /proc/sys/fs/file-max)"
echo "hostname=$(hostname)"
echo "netns=$(ip netns identify $$ 2>/dev/null)"
echo "kernel=$(uname -r)"
if [ -x {py} ]; then echo "kit_python=yes"; echo "kit_version=$({py} -c 'import kit,sys; print(kit.__version__, sys.version.split()[0])' 2>&1 | tr '\n' ' ')"; else echo "kit_python=no"; fi
if [ -x {wrapper} ]; then echo "kit_client={wrapper}"; fi
if command -v haproxy >/dev/null; then echo "haproxy_version=$(haproxy -v 2>&1 | head -1)"; fi
if command -v redis-server >/dev/null; then echo "redis_version=$(redis-server --version 2>&1 | head -1)"; fi
if [ -r {report} ]; then echo "tuning=$(tr -d '\n' < {report})"; fi
"""  # noqa: E501 (a shell script sent as is: the long line is one command)


def host_facts(c: Any) -> dict[str, Any]:
    """Cores, open-file limits, port range, versions, the deployed kit-client wrapper (the inventory host's
    ``kit_client_wrapper``) and the tuning role's report (its ``kit_tuning_report``), read with its kit python."""
    h = c.inventory_host
    kit_python, client_wrapper, tuning_report = h.kit_python, h.client_wrapper, h.tuning_report
    res = c.run(
        _FACTS.format(
            begin=FACTS_BEGIN,
            py=shlex.quote(kit_python),
            wrapper=shlex.quote(client_wrapper),
            report=shlex.quote(tuning_report),
        ),
        hide=True,
        warn=True,
        timeout=CMD_TIMEOUT,
    )
    facts: dict[str, Any] = {}
    preamble, sep, out = res.stdout.partition(FACTS_BEGIN + "\n")
    if sep and preamble:  # the login shell's start-up files print (see shell_preamble_problem)
        facts["shell_preamble"] = preamble[:200]
    for line in (out if sep else res.stdout).splitlines():
        key, sep, value = line.partition("=")
        if sep:
            facts[key.strip()] = value.strip()
    if "nproc" not in facts:
        raise RuntimeError(f"host facts unreadable (exit {res.exited}): {res.stderr.strip()[-300:]}")
    for k in ("nproc", "nofile_hard", "nofile_soft", "somaxconn", "file_max"):
        try:
            facts[k] = int(facts[k])
        except (KeyError, ValueError):
            facts[k] = None if facts.get(k) != "unlimited" else 1 << 30
    lo, _, hi = facts.get("port_range", "").partition(" ")
    facts["port_range"] = [int(lo), int(hi)] if lo.isdigit() and hi.strip().isdigit() else None
    facts["kit_python"] = facts.get("kit_python") == "yes"
    try:  # what Ansible's tuning role found this host allows (kit_tuning_report), when deployed
        facts["tuning"] = json.loads(facts["tuning"]) if facts.get("tuning") else None
    except ValueError:
        facts["tuning"] = None
    facts["tuning_report"] = tuning_report
    return facts


def shell_preamble_problem(host: str, facts: dict[str, Any]) -> str | None:
    """The preflight's line for a host whose login shell prints before every command, or None.

    The kit reads what its remote commands print (a job's PID, its state, the hosts' figures); a start-up file
    that prints (``~/.bashrc``, which bash reads for commands over SSH too) puts its text first, and the PID
    of a generator it starts would read as that text.  Refused with what was printed and how to silence it.
    """
    text = facts.get("shell_preamble")
    if not text:
        return None
    shown = text.strip()
    first = shown.splitlines()[0][:80] if shown else text[:20]  # blank lines only: shown as they are
    return (
        f"{host}: its shell prints before every command ({first!r}, {len(text)} bytes), from a start-up file such "
        "as ~/.bashrc; the kit reads what its commands print: make that file print only in interactive shells "
        "(after `[[ $- == *i* ]] || return`, or to stderr)"
    )


#: where :func:`open_file_limit`'s figures came from without a tuning report
FROM_SSH_LIMIT = "ulimit -Hn over SSH (no tuning report: run fab deploy)"


def open_file_limit(facts: dict[str, Any]) -> tuple[int, int | None, str]:
    """(open files a kit process gets, sessions one kit process holds or None, where they came from).

    The tuning role's report is the authority where the host was deployed: it knows what the service
    manager grants (systemd's LimitNOFILE may exceed an SSH login's hard limit), and it carries the
    sessions one proxy or generator process holds with that limit, computed there and only there
    (the kit_service role: open files less the contract's kit_fd_reserve, over kit_fds_per_session).
    Without a report, the SSH login's hard limit is the best guess for the open files and the
    sessions are unknown (None).
    """
    nofile = (facts.get("tuning") or {}).get("nofile") or {}
    if isinstance(nofile.get("effective"), int) and nofile["effective"] > 0:
        sessions = nofile.get("sessions_max")
        where = facts.get("tuning_report") or "the tuning report"
        return nofile["effective"], sessions if isinstance(sessions, int) else None, f"{where} (Ansible's tuning role)"
    return int(facts.get("nofile_hard") or 0), None, FROM_SSH_LIMIT


_CLOCK_ECHO = (
    "import sys, time\nfor _ in sys.stdin:\n    sys.stdout.write('%d\\n' % time.time_ns()); sys.stdout.flush()"
)


def clock_samples(c: Any, n: int = CLOCK_SAMPLES, python: str = "python3") -> list[tuple[int, int, int]]:
    """(local send ns, remote clock ns, local receive ns) for *n* round trips.

    One remote process answers each newline with its clock over a single SSH channel, so a
    round trip costs one network exchange (not a command start); a local host reads this clock.
    """
    if not hasattr(c, "client"):  # LocalConnection: the controller's own clock
        return [(t, t, t) for t in (time.time_ns() for _ in range(n))]
    c.open()
    chan = c.client.get_transport().open_session(timeout=15)
    try:
        chan.settimeout(15)
        chan.exec_command(f"{shlex.quote(python)} -u -c {shlex.quote(_CLOCK_ECHO)}")
        buf = b""
        out = []
        for i in range(n + 1):
            t0 = time.time_ns()
            chan.sendall(b"\n")
            while b"\n" not in buf:
                chunk = chan.recv(4096)
                if not chunk:
                    raise RuntimeError(f"clock echo ended early: {chan.recv_stderr(4096).decode(errors='replace')}")
                buf += chunk
            t1 = time.time_ns()
            line, buf = buf.split(b"\n", 1)
            if i:  # the first exchange includes the interpreter's start-up
                out.append((t0, int(line), t1))
        return out
    finally:
        chan.close()


def start_job(c: Any, job_dir: str, argv: list[str], *, env: dict[str, str] | None = None) -> int:
    """Start *argv* in the background in *job_dir* (its own session); return its PID (= process group)."""
    envs = " ".join(f"{k}={shlex.quote(v)}" for k, v in (env or {}).items())
    inner = (
        f"echo $$ > pid; ulimit -n $(ulimit -Hn) 2>/dev/null; {envs} {' '.join(shlex.quote(a) for a in argv)}"
        " > out.log 2>&1; echo $? > rc"
    )
    d = shlex.quote(job_dir)
    c.run(
        f"mkdir -p {d} && cd {d} && rm -f pid rc && (setsid sh -c {shlex.quote(inner)} < /dev/null > /dev/null 2>&1 &)",
        hide=True,
        timeout=CMD_TIMEOUT,
    )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        res = c.run(f"cat {d}/pid 2>/dev/null", hide=True, warn=True, timeout=CMD_TIMEOUT)
        if res.stdout.strip().isdigit():
            return int(res.stdout.strip())
        time.sleep(0.1)  # the job writes its PID first thing; poll for it, bounded
    raise RuntimeError(f"job in {job_dir} did not start (no pid file after 15 s)")


#: shell test: the process exists and is not a zombie (an orphan's zombie lingers until init reaps it)
_ALIVE = """awk '/^State:/ {{ exit ($2 == "Z") }}' /proc/{pid}/status 2>/dev/null"""


def job_state(c: Any, job_dir: str, status_file: str | None = None) -> dict[str, Any]:
    """``{"rc": int|None, "alive": bool, "status": dict|None}`` of a job started by :func:`start_job`."""
    d = shlex.quote(job_dir)
    status = f"cat {d}/{shlex.quote(status_file)} 2>/dev/null;" if status_file else ""
    # liveness first, then rc: the job's shell writes rc and only then exits, so a job seen dead has its rc
    # on disk.  Read the other way round, a job ending between the two reads looked dead without an rc
    # (a 10,000-session lab run was marked partial: "generator exited with status None" after it passed).
    res = c.run(
        f"cd {d} && if {_ALIVE.format(pid='$(cat pid)')}; then echo alive=1; else echo alive=0; fi; "
        f'echo "rc=$(cat rc 2>/dev/null)"; echo ---; {status} true',
        hide=True,
        warn=True,
        timeout=CMD_TIMEOUT,
    )
    head, _, body = res.stdout.partition("---\n")
    kv = dict(line.split("=", 1) for line in head.splitlines() if "=" in line)
    return job_record(kv.get("alive") == "1", kv.get("rc", ""), body)


def job_record(alive: bool, rc: str, status_text: str | bytes) -> dict[str, Any]:
    """A job's state as :func:`job_state` gives it, from what was read on its host: liveness, the ``rc`` file's
    text (empty while it runs), the status file's text (its JSON, None when empty or being replaced)."""
    status = None
    if status_text.strip():
        try:
            status = json.loads(status_text)
        except ValueError:
            status = None  # being replaced right now; the next look reads it
    rc = rc.strip()
    return {"rc": int(rc) if rc.lstrip("-").isdigit() else None, "alive": alive, "status": status}


def job_ended(state: dict[str, Any]) -> bool:
    """Whether a job whose state is *state* (:func:`job_state`, :func:`job_record`) has ended: it left an exit
    status, or it is gone."""
    return state["rc"] is not None or not state["alive"]


#: the processes of a job's session (a job is started by setsid: session id = its PID) that are not zombies
_SESSION_LEFT = "ps -o pid=,stat= -s {sid} 2>/dev/null | awk '$2 !~ /^Z/ {{print $1}}' | tr '\\n' ' '"


def stop_job(c: Any, job_dir: str, *, grace: float = 5.0) -> list[int]:
    """SIGTERM the job's process group, SIGKILL it (and anything left of its session) after *grace* s.

    Returns the PIDs that were still alive when SIGKILL went out (empty: it stopped on SIGTERM,
    or had already ended).  A job that never wrote its PID has nothing to stop.  Raises
    :class:`JobSurvived` when a process of the job is alive after SIGKILL.
    """
    d = shlex.quote(job_dir)
    left = _SESSION_LEFT.format(sid="$p")
    res = c.run(
        f'cd {d} 2>/dev/null || exit 0; p=$(cat pid 2>/dev/null); [ -n "$p" ] || exit 0; '
        f"kill -TERM -- -$p 2>/dev/null; "
        f'i=0; while [ -n "$({left})" ] && [ $i -lt {int(grace * 10)} ]; do sleep 0.1; i=$((i+1)); done; '
        f'k=$({left}); echo "killed=$k"; if [ -n "$k" ]; then kill -KILL -- -$p 2>/dev/null; '
        f'kill -KILL $k 2>/dev/null; sleep 0.2; fi; echo "left=$({left})"',
        hide=True,
        warn=True,
        timeout=grace + CMD_TIMEOUT,
    )
    kv = dict(line.split("=", 1) for line in res.stdout.splitlines() if "=" in line)
    if res.exited != 0:
        raise JobSurvived(
            f"stopping the job in {job_dir} failed (exit {res.exited}): {(res.stderr or res.stdout).strip()[-300:]}"
        )
    left_pids = [int(x) for x in kv.get("left", "").split() if x.isdigit()]
    if left_pids:
        raise JobSurvived(f"job in {job_dir}: process(es) {' '.join(map(str, left_pids))} still alive after SIGKILL")
    return [int(x) for x in kv.get("killed", "").split() if x.isdigit()]


def fetch_dir(c: Any, remote_dir: str, local_dir: Path) -> list[str]:
    """Copy a remote folder's files into *local_dir* (one tar stream through a temporary file)."""
    local_dir.mkdir(parents=True, exist_ok=True)
    tmp = f"/tmp/wsproxy-loadkit-fetch-{secrets.token_hex(8)}.tar.gz"
    c.run(f"tar -czf {tmp} -C {shlex.quote(remote_dir)} .", hide=True, timeout=FETCH_TIMEOUT)
    try:
        local_tar = local_dir / ".fetch.tar.gz"
        c.get(tmp, str(local_tar))
    finally:
        c.run(f"rm -f {tmp}", hide=True, warn=True, timeout=CMD_TIMEOUT)
    with tarfile.open(local_tar) as tf:
        tf.extractall(local_dir, filter="data")
        names = [m.name for m in tf.getmembers() if m.isfile()]
    local_tar.unlink()
    return names
