"""One long-lived watcher per host that reports its background jobs' state whenever it changes.

Why: ``fab run`` used to ask each generator host for its jobs' state once a second, one remote command
each time (:func:`kit.run._hostops.job_state`).  Over SSH every command is a new session: sshd forks,
the user's login shell starts and reads its start-up files.  On a host whose ``~/.bashrc`` initialises a
toolchain (pyenv, conda, nvm: common on benchmark machines) that is 0.1 s of CPU or more per command;
measured on this project's machine (``pyenv init`` in root's ``.bashrc``), 0.12 s: 12 % of a core for
each generator host, on the very hosts whose CPU the run measures, and 13 % of the whole 2-core lab
machine in a 10,000-session lab run (``perf record -a``, 2026-12-05).

Now one process per host (the host's own python3, started once over one channel) looks at its jobs every
:data:`LOOK_S` and writes a round whenever a job's liveness, exit status or status file changed, and at
least every :data:`BEAT_S` (so the controller can tell a quiet watcher from a dead one).  It ends by itself
once every job it watches has ended (after reporting that), or at its time bound, or when the controller
closes the channel (its next write fails).

The controller reads rounds in a thread per host (:class:`JobWatch`); :meth:`JobWatch.latest` gives the
last round, or None when the watcher is not (or no longer) reporting: the caller then asks the host
itself with :func:`~kit.run._hostops.job_state`, as before, so a host without python3 or a broken channel
costs what it always did, nothing more.  A round's states are the same dicts as ``job_state`` returns.

The stream: :data:`HELLO` first, then per job ``job <index> <alive 0|1> <rc or -> <bytes>\\n``, that many
bytes of the status file and ``\\n``; ``end\\n`` closes the round.  Whatever comes before :data:`HELLO` is
skipped (up to :data:`MAX_PREAMBLE` bytes): a login shell whose start-up files print (a banner, ``conda``'s
notice) writes to the same channel before the watcher starts, and must not cost the host its watcher.
"""

from __future__ import annotations

import logging
import shlex
import subprocess
import threading
import time
from typing import IO, Any

from ._hostops import job_ended, job_record

__all__ = ["JobWatch", "LOOK_S", "BEAT_S", "STALE_S", "HELLO", "MAX_PREAMBLE"]

log = logging.getLogger(__name__)

#: seconds between the watcher's looks at its jobs: how late a change can be reported
LOOK_S = 0.2
#: seconds without a change after which the watcher writes a round anyway
BEAT_S = 2.0
#: a watcher silent this long is taken for dead (its last round is no longer used)
STALE_S = 3 * BEAT_S
#: seconds to wait for the first round when the watcher starts
FIRST_ROUND_S = 10.0
#: the watcher's first line: the stream starts after it
HELLO = b"loadkit-jobwatch 1\n"
#: bytes of a login shell's own output skipped before :data:`HELLO` (more: the stream is not the watcher's)
MAX_PREAMBLE = 65536

#: the watcher (python3 -c; argv: seconds to run, status file relative to a job's folder, job folders).
#: Liveness is read before the exit status, as job_state does: a job seen dead has its rc on disk.
_WATCHER = (
    r"""
import os, sys, time
until = time.monotonic() + float(sys.argv[1])
rel, dirs = sys.argv[2], sys.argv[3:]
out = sys.stdout.buffer
out.write(HELLO)
def alive(d):
    try:
        with open(d + "/pid") as f:
            pid = int(f.read())
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("State:"):
                    return line.split()[1] != "Z"
    except (OSError, ValueError):
        pass
    return False
def read(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""
last, beat = None, 0.0
while time.monotonic() < until:
    now = time.monotonic()
    seen = []
    for d in dirs:
        a = alive(d)
        rc = read(d + "/rc").strip()
        try:
            st = os.stat(d + "/" + rel)
            sig = (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError:
            sig = None
        seen.append((a, rc, sig))
    ended = all(rc or not a for a, rc, _ in seen)
    if seen != last or now - beat >= BEAT or ended:
        parts = []
        for i, (d, (a, rc, sig)) in enumerate(zip(dirs, seen)):
            body = read(d + "/" + rel) if sig else b""
            parts.append(b"job %d %d %s %d\n%s\n" % (i, a, rc or b"-", len(body), body))
        parts.append(b"end\n")
        out.write(b"".join(parts))
        out.flush()
        last, beat = seen, now
    if ended:
        break
    time.sleep(LOOK)
""".replace("BEAT", repr(BEAT_S))
    .replace("LOOK", repr(LOOK_S))
    .replace("HELLO", repr(HELLO))
)


class JobWatch:
    """The watcher of *jobs* (label -> job folder) on *c*'s host, run with *python* for at most *seconds*.

    ``c`` is a ``fabric.Connection`` (one SSH channel) or a :class:`~kit.run._remote.LocalConnection` (a
    child process).  Start failures are not raised: :meth:`latest` then returns None and the caller polls.
    """

    def __init__(self, c: Any, python: str, jobs: dict[str, str], status_file: str, seconds: float) -> None:
        self.host = c.inventory_host.name
        self._labels = list(jobs)
        self._lock = threading.Lock()
        self._latest: dict[str, dict[str, Any]] | None = None
        self._at = 0.0
        self._ended = False
        self._first = threading.Event()
        self._chan: Any = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._thread: threading.Thread | None = None
        argv = [python, "-c", _WATCHER, f"{seconds:.0f}", status_file, *jobs.values()]
        try:
            stream = self._start(c, argv)
        except Exception as exc:  # noqa: BLE001 - any failure to start means: poll this host as before
            log.warning("%s: could not start the job watcher (%s); polling the host instead", self.host, exc)
            self._ended = True
            self._first.set()
            return
        self._thread = threading.Thread(target=self._pump, args=(stream,), name=f"jobwatch-{self.host}", daemon=True)
        self._thread.start()

    def _start(self, c: Any, argv: list[str]) -> IO[bytes]:
        if not hasattr(c, "client"):  # this machine
            self._proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
            )
            assert self._proc.stdout is not None
            return self._proc.stdout
        c.open()
        chan = c.client.get_transport().open_session(timeout=15)
        chan.exec_command(" ".join(shlex.quote(a) for a in argv))
        self._chan = chan
        return chan.makefile("rb")

    def wait_first(self, timeout: float = FIRST_ROUND_S) -> bool:
        """Wait for the first round (or the watcher's end); whether a round came."""
        self._first.wait(timeout)
        with self._lock:
            return self._latest is not None

    def _pump(self, stream: IO[bytes]) -> None:
        try:
            skipped = 0
            # a preamble whose last line has no newline ends on the greeting's line
            while not (line := stream.readline(MAX_PREAMBLE)).endswith(HELLO):
                skipped += len(line)
                if not line or skipped > MAX_PREAMBLE:
                    raise ValueError("no watcher greeting" + (f" in the first {skipped} bytes" if line else ""))
            skipped += len(line) - len(HELLO)
            if skipped:
                log.info("%s: skipped %d bytes the login shell printed before the job watcher", self.host, skipped)
            while True:
                got: dict[str, dict[str, Any]] = {}
                while (line := stream.readline()) != b"end\n":
                    if not line:
                        return
                    _, index, alive, rc, size = line.split()
                    body = stream.read(int(size) + 1)[:-1]
                    got[self._labels[int(index)]] = job_record(alive == b"1", rc.decode("ascii", "replace"), body)
                with self._lock:
                    self._latest, self._at = got, time.monotonic()
                self._first.set()
        except Exception as exc:  # noqa: BLE001 - a broken stream means: poll this host as before
            log.warning("%s: the job watcher's stream broke (%s); polling the host instead", self.host, exc)
        finally:
            with self._lock:
                self._ended = True
            self._first.set()

    def latest(self) -> dict[str, dict[str, Any]] | None:
        """The last round (label -> ``{"rc", "alive", "status"}``), or None when it cannot be trusted: no round
        yet, none for :data:`STALE_S`, or the watcher ended before every job had."""
        with self._lock:
            got = self._latest
            if got is None:
                return None
            if self._ended:
                done = len(got) == len(self._labels) and all(job_ended(s) for s in got.values())
                return got if done else None
            return got if time.monotonic() - self._at <= STALE_S else None

    def close(self) -> None:
        """Stop the watcher (it would end by itself within :data:`BEAT_S` of its next write failing)."""
        if self._chan is not None:
            try:
                self._chan.close()
            except Exception:  # noqa: BLE001 - closing a dead channel
                pass
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._thread is not None:
            self._thread.join(timeout=5)  # the stream's end (EOF) ends it
        if self._proc is not None and self._proc.stdout is not None:
            self._proc.stdout.close()
