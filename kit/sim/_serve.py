"""Serve ``kit.sim:app``: Uvicorn (uvloop, httptools) in ``FASTAPI_WORKERS`` worker processes, supervised here.

Why Uvicorn (``bench/sim_server_ab.sh``, ``docs/benchmarks.md`` "sim_requests"): at a real run's sparse pace
(a few hundred requests a second, each arriving alone) a session's five requests cost ~1,630 us of the
simulator's CPU under Uvicorn in one thread against ~2,260 under Granian, whose Rust I/O thread hands
every request to the event loop's thread and back.  Under wrk's saturating load, where one wake-up serves
many requests, Granian had won (``bench/asgi_servers.py``); a run never loads the simulator that way.

The supervisor (:func:`serve`, the main process) binds the listening socket once and forks the workers
(the kernel hands each new connection to whichever worker accepts it first).  The supervisor has imported
the app's modules and Uvicorn, so a worker imports nothing again and serves ~0.5 s sooner than a freshly
started interpreter would (a replacement too).  Each worker builds ``kit.sim:app`` from the environment and
runs the ASGI lifespan (Quart's before_serving/after_serving) around serving.

* SIGTERM or SIGINT to the supervisor: each worker is sent SIGTERM, stops accepting, finishes the answers
  in flight (at most :data:`GRACE_S`), runs the lifespan shutdown and exits; one still alive after
  :data:`KILL_AFTER_S` is killed.  Then the supervisor exits 0.
* A worker that exits unasked (a crash, ``kill -9``, the OOM killer) is started again at once; the other
  workers keep serving and publishing their queries throughout, and the dead worker's queries in flight
  are lost (its clients count them lost).  A worker started in a dead one's place that dies again within
  :data:`CRASH_LOOP_S` of its start (a worker that cannot start, or keeps dying) is a crash loop: the
  supervisor stops the others and exits 1, one line on stderr, and the service manager's restart takes over.
* A worker whose supervisor is gone (killed) is sent SIGTERM by the kernel (``PR_SET_PDEATHSIG``), so no
  orphan keeps the port.

Request heads (:class:`._limits.SimLimits`), in the protocol :func:`_protocol_class` makes: a connection that has not
sent a whole head within ``request_header_timeout_secs`` of its accept or of its previous answer (an
idle keep-alive connection too, and one whose head trickles in byte by byte) is closed, checked by one
sweep per worker every :data:`_SWEEP_S` rather than a timer per request; a head over ``max_head_bytes``
is answered 431 and the connection closed.  Bodies are bounded in :mod:`._asgi`.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field

from kit.config import SimSettings

from ._limits import SimLimits

__all__ = ["serve", "CRASH_LOOP_S", "KILL_AFTER_S", "GRACE_S"]

log = logging.getLogger("kit.sim")

#: a replacement worker that dies sooner than this after its start is a crash loop: the simulator stops (exit 1)
CRASH_LOOP_S = 5.5
#: seconds a stopping worker has to finish its answers in flight before they are cancelled
GRACE_S = 8.0
#: seconds after SIGTERM after which a worker still alive is killed
KILL_AFTER_S = 10.0
#: the listening socket's accept queue (the kernel caps it at net.core.somaxconn)
BACKLOG = 4096
#: seconds between two sweeps for heads past their deadline
_SWEEP_S = 0.25
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_PR_SET_PDEATHSIG = 1


# -- the supervisor --------------------------------------------------------------------------------


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


@dataclass
class _Worker:
    pid: int
    started: float  # monotonic
    replacement: bool  # started in a dead worker's place
    returncode: int | None = None  # -N for a signal, as subprocess gives it


@dataclass
class _Workers:
    """The worker processes: forked, replaced, stopped (all by PID, all children of this process)."""

    sock: socket.socket
    count: int
    procs: list[_Worker] = field(default_factory=list)

    def start_one(self, *, replacing: bool = False) -> _Worker:
        supervisor = os.getpid()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the worker: never returns into the supervisor's code
            code = 1
            try:
                _worker(self.sock, supervisor)
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                log.exception("sim worker %d failed", os.getpid())
            finally:
                logging.shutdown()
                os._exit(code)
        worker = _Worker(pid, time.monotonic(), replacing)
        self.procs.append(worker)
        return worker

    def _reap(self) -> list[_Worker]:
        """The workers still running, after collecting the exit status of those that ended."""
        for w in self.procs:
            if w.returncode is None:
                pid, status = os.waitpid(w.pid, os.WNOHANG)
                if pid:
                    w.returncode = os.waitstatus_to_exitcode(status)
        return [w for w in self.procs if w.returncode is None]

    def dead(self) -> list[_Worker]:
        """Workers that exited since the last look; removed from the set."""
        alive = self._reap()
        out = [w for w in self.procs if w.returncode is not None]
        self.procs = alive
        return out

    def stop(self) -> None:
        """SIGTERM to each worker, SIGKILL to any still alive after KILL_AFTER_S; waits for all.  SIGCHLD must
        be blocked (it is while the supervisor runs)."""
        for w in self._reap():
            os.kill(w.pid, signal.SIGTERM)
        deadline = time.monotonic() + KILL_AFTER_S
        while alive := self._reap():
            left = deadline - time.monotonic()
            if left <= 0:
                for w in alive:
                    log.warning("sim worker %d still running %.0f s after SIGTERM: killed", w.pid, KILL_AFTER_S)
                    os.kill(w.pid, signal.SIGKILL)
                    w.returncode = os.waitstatus_to_exitcode(os.waitpid(w.pid, 0)[1])
                break
            signal.sigtimedwait({signal.SIGCHLD}, left)
        self.procs.clear()


def _supervise(workers: _Workers) -> int:
    """Start the workers and keep them running until a stop signal (0) or a crash loop (1)."""
    waited = {signal.SIGCHLD, *_STOP_SIGNALS}
    # the workers unblock these at their start (a forked child inherits the mask)
    signal.pthread_sigmask(signal.SIG_BLOCK, waited)
    try:
        for _ in range(workers.count):
            workers.start_one()
        while True:
            for dead in workers.dead():
                lived = time.monotonic() - dead.started
                if dead.replacement and lived < CRASH_LOOP_S:
                    print(
                        f"kit.sim: worker {dead.pid}, started in a dead worker's place, exited with {dead.returncode} "
                        f"{lived:.1f} s after its start (a crash loop: under {CRASH_LOOP_S} s); stopping the "
                        "simulator, see the workers' log above",
                        file=sys.stderr,
                        flush=True,
                    )
                    workers.stop()
                    return 1
                new = workers.start_one(replacing=True)
                log.warning(
                    "sim worker %d exited with %s after %.0f s; worker %d started in its place",
                    dead.pid,
                    dead.returncode,
                    lived,
                    new.pid,
                )
            info = signal.sigwaitinfo(waited)
            if info.si_signo in _STOP_SIGNALS:
                log.info("%s: stopping %d sim workers", signal.Signals(info.si_signo).name, len(workers.procs))
                workers.stop()
                return 0
    finally:
        workers.stop()
        while signal.sigtimedwait(waited, 0) is not None:
            pass  # a second SIGTERM or SIGINT during the stop: already obeyed, not a death at the unblock
        signal.pthread_sigmask(signal.SIG_UNBLOCK, waited)


def serve(settings: SimSettings, *, log_level: str = "INFO") -> None:
    """Run the simulator's workers under this process until SIGTERM/SIGINT; blocks.  Raises OSError if it
    cannot bind, SystemExit(1) on a crash loop.  The workers read their settings and
    :class:`SimLimits` from this process's environment (``python -m kit.sim`` checked them first)."""
    # the workers' counters meet here for the summed /stats/all and /metrics (kit/sim/_workers.py)
    import uvicorn  # noqa: F401  (imported once here: the forked workers share it)

    from ._workers import STATS_DIR_ENV

    sock = _listen(settings.host, settings.port)
    stats_dir = tempfile.mkdtemp(prefix="kit-sim-stats-")
    os.environ[STATS_DIR_ENV] = stats_dir
    log.info(
        "kit.sim on %s:%d: %d uvicorn workers (loglevel %s)", settings.host, settings.port, settings.workers, log_level
    )
    try:
        rc = _supervise(_Workers(sock, settings.workers))
    finally:
        sock.close()
        shutil.rmtree(stats_dir, ignore_errors=True)
    if rc:
        raise SystemExit(rc)


# -- a worker ----------------------------------------------------------------------------------------


def _protocol_class(limits: SimLimits) -> type:
    """Uvicorn's httptools protocol with the request head bounded in time and in size (module docstring)."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    head_timeout = limits.request_header_timeout_secs
    max_head = limits.max_head_bytes
    too_large = (
        f"the request head is over {max_head} bytes (SIM_MAX_HEAD_BYTES): send a smaller one or raise it\n"
    ).encode()
    answer_431 = (
        b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain; charset=utf-8\r\n"
        b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(too_large), too_large)
    )
    waiting: set[HeadBounded] = set()  # connections waiting for a head, of this worker
    sweeping = False

    def sweep(loop) -> None:
        now = time.monotonic()
        for conn in [c for c in waiting if now - c.head_since > head_timeout]:
            waiting.discard(conn)
            conn.transport.close()
        loop.call_later(_SWEEP_S, sweep, loop)

    class HeadBounded(HttpToolsProtocol):
        head_since = 0.0
        head_bytes = 0
        tail = b""

        def _await_head(self) -> None:
            self.head_since = time.monotonic()
            self.head_bytes = 0
            self.tail = b""
            waiting.add(self)

        def connection_made(self, transport) -> None:
            nonlocal sweeping
            super().connection_made(transport)
            if not sweeping:
                sweeping = True
                self.loop.call_later(_SWEEP_S, sweep, self.loop)
            self._await_head()

        def connection_lost(self, exc: Exception | None) -> None:
            waiting.discard(self)
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self in waiting:
                # the head's bytes in this piece: up to its blank line, or all of it
                end = (self.tail + data).find(b"\r\n\r\n")
                self.head_bytes += len(data) if end < 0 else end + 4 - len(self.tail)
                if self.head_bytes > max_head:
                    waiting.discard(self)
                    self.transport.write(answer_431)
                    self.transport.close()
                    return
                self.tail = (self.tail + data)[-3:]
            super().data_received(data)

        def on_headers_complete(self) -> None:
            waiting.discard(self)
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            pipelined = bool(self.pipeline)  # the next request's head is in: it starts now
            super().on_response_complete()
            if not pipelined and not self.transport.is_closing():
                self._await_head()

    return HeadBounded


def _worker(sock: socket.socket, supervisor: int) -> None:
    """One worker, forked from the supervisor (which imported the app's modules, so nothing is imported again):
    builds ``kit.sim:app`` and serves it on *sock* until SIGTERM."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD, *_STOP_SIGNALS})
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: the supervisor's stop still reaches the workers
    if os.getppid() != supervisor:  # it died before the line above
        raise SystemExit(1)
    import uvicorn

    from kit.sim import app

    from ._workers import mark_start

    mark_start()
    limits = SimLimits.from_env()
    config = uvicorn.Config(
        app,
        loop="uvloop",
        http=_protocol_class(limits),
        ws="none",
        lifespan="on",
        access_log=False,
        log_config=None,
        server_header=False,
        # nothing reads the client's address; uvicorn would rewrite it from X-Forwarded-For per request
        proxy_headers=False,
        # the head sweep closes idle connections at the header timeout; this is only uvicorn's own bound
        timeout_keep_alive=int(limits.request_header_timeout_secs) + 1,
        timeout_graceful_shutdown=int(GRACE_S),
        backlog=BACKLOG,
    )
    uvicorn.Server(config).run(sockets=[sock])
