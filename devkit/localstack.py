"""Real processes on loopback: a kit-owned redis-server, the simulator, the wsproxy.

Used by the tests and the benchmarks only (``make run`` deploys the real stack with Ansible;
this module is not part of the shipped ``kit`` package).  Every process is started by us, tracked by PID and stopped by that PID; every
wait is a readiness check (a TCP connect, a Redis PING, an HTTP /health) bounded
by a deadline, never a bare sleep.

Ownership: :class:`Proc` owns its child; ``stop()`` (or leaving the ``with``
block) terminates it, waits, and kills it if it does not exit in time.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kit import contract

__all__ = [
    "Proc",
    "RedisServer",
    "Stack",
    "free_port",
    "wait_tcp",
    "wait_http_ok",
    "start_redis",
    "start_sim",
    "start_wsproxy",
    "local_stack",
]

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
READY_TIMEOUT = 20.0


class StartError(RuntimeError):
    """A process did not become ready; the message carries the tail of its log."""


def free_port(host: str = LOOPBACK) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _poll(check, what: str, deadline: float, proc: Proc | None = None) -> None:
    delay = 0.005
    last: Exception | None = None
    while True:
        if proc is not None and proc.popen.poll() is not None:
            raise StartError(f"{what}: process exited with {proc.popen.returncode}\n{proc.log_tail()}")
        try:
            if check():
                return
        except OSError as exc:
            last = exc
        if time.monotonic() > deadline:
            tail = proc.log_tail() if proc else ""
            raise StartError(f"{what}: not ready in time ({last})\n{tail}")
        time.sleep(delay)  # poll interval of a readiness check, bounded by the deadline
        delay = min(delay * 2, 0.2)


def wait_tcp(host: str, port: int, *, timeout: float = READY_TIMEOUT, proc: Proc | None = None) -> None:
    def check() -> bool:
        with socket.create_connection((host, port), timeout=1.0):
            return True

    _poll(check, f"tcp {host}:{port}", time.monotonic() + timeout, proc)


def wait_http_ok(
    host: str, port: int, path: str | None = None, *, timeout: float = READY_TIMEOUT, proc: Proc | None = None
) -> None:
    path = path or contract.health_path()

    def check() -> bool:
        conn = http.client.HTTPConnection(host, port, timeout=2.0)
        try:
            conn.request("GET", path)
            return conn.getresponse().status == 200
        finally:
            conn.close()

    _poll(check, f"http://{host}:{port}{path}", time.monotonic() + timeout, proc)


@dataclass
class Proc:
    """A child process we started, with its log file."""

    name: str
    popen: subprocess.Popen
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 10.0) -> int | None:
        """Terminate the child (SIGTERM, then SIGKILL after *timeout*); return its exit code."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout)
        return self.popen.returncode

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(10)


def spawn(name: str, argv: Sequence[str], *, env: Mapping[str, str] | None, log_dir: Path) -> Proc:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    fh = open(log_path, "ab")
    try:
        popen = subprocess.Popen(
            list(argv),
            env=dict(env) if env is not None else None,
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    finally:
        fh.close()
    return Proc(name, popen, log_path)


@dataclass
class RedisServer:
    proc: Proc
    host: str
    port: int
    password: str = field(repr=False)

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@{self.host}:{self.port}/0"


def start_redis(
    workdir: Path,
    *,
    host: str = LOOPBACK,
    port: int | None = None,
    password: str | None = None,
    extra: Sequence[str] = (),
) -> RedisServer:
    """Start a kit-owned redis-server (no persistence) and wait for PING."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise StartError("redis-server not found: install Debian's redis-server (make setup does)")
    port = port or free_port(host)
    password = password or secrets.token_urlsafe(24)
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / f"redis-{port}.conf"
    # the password goes into a 0600 file, never onto a command line
    fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(
            f'bind {host}\nport {port}\nrequirepass {password}\nsave ""\nappendonly no\n'
            f"dir {workdir}\ndaemonize no\nprotected-mode yes\nmaxclients 10000\n"
            "client-output-buffer-limit pubsub 64mb 16mb 60\n" + "".join(f"{x}\n" for x in extra)
        )
    proc = spawn(f"redis-{port}", [exe, str(conf)], env=None, log_dir=workdir)

    def ping() -> bool:
        with socket.create_connection((host, port), timeout=1.0) as s:
            s.sendall(f"AUTH {password}\r\nPING\r\n".encode())
            data = b""
            while data.count(b"\r\n") < 2:
                chunk = s.recv(256)
                if not chunk:
                    return False
                data += chunk
            return b"+PONG" in data

    try:
        _poll(ping, f"redis {host}:{port}", time.monotonic() + READY_TIMEOUT, proc)
    except BaseException:
        proc.stop()
        raise
    return RedisServer(proc, host, port, password)


def _service_env(base: Mapping[str, str] | None, **values: object) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    env.update({k: str(v) for k, v in values.items() if v is not None})
    return env


def _start_service(module: str, log_dir: Path, port: int, check_host: str, env: dict[str, str]) -> tuple[Proc, int]:
    proc = spawn(f"{module.rpartition('.')[2]}-{port}", [sys.executable, "-m", module], env=env, log_dir=log_dir)
    try:
        wait_http_ok(check_host, port, proc=proc)
    except BaseException:
        proc.stop()
        raise
    return proc, port


def start_sim(
    log_dir: Path,
    *,
    redis_url: str,
    jwt_secret: str,
    host: str = LOOPBACK,
    port: int | None = None,
    env: Mapping[str, str] | None = None,
    **settings: object,
) -> tuple[Proc, int]:
    """Start ``python -m kit.sim``; *settings* are extra environment variables (TOKEN_DELAY_MS=...)."""
    port = port or free_port(host)
    penv = _service_env(
        env, REDIS_URL=redis_url, JWT_SECRET=jwt_secret, FASTAPI_HOST=host, FASTAPI_PORT=port, **settings
    )
    return _start_service("kit.sim", log_dir, port, host, penv)


def start_wsproxy(
    log_dir: Path,
    *,
    redis_url: str,
    jwt_secret: str,
    host: str = LOOPBACK,
    port: int | None = None,
    env: Mapping[str, str] | None = None,
    **settings: object,
) -> tuple[Proc, int]:
    """Start ``python -m kit.wsproxy``; *settings* are extra environment variables."""
    port = port or free_port(host)
    penv = _service_env(env, REDIS_URL=redis_url, JWT_SECRET=jwt_secret, HOST=host, PORT=port, **settings)
    return _start_service("kit.wsproxy", log_dir, port, host, penv)


@dataclass
class Stack:
    """Redis + simulator + wsproxy on loopback, as the tests and the benchmarks use them."""

    workdir: Path
    redis: RedisServer
    jwt_secret: str = field(repr=False)
    sim: Proc
    sim_port: int
    wsproxy: Proc
    wsproxy_port: int

    @property
    def api_url(self) -> str:
        return f"http://{LOOPBACK}:{self.sim_port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{LOOPBACK}:{self.wsproxy_port}"


@contextlib.contextmanager
def local_stack(
    workdir: Path | None = None,
    *,
    sim_env: Mapping[str, object] | None = None,
    wsproxy_env: Mapping[str, object] | None = None,
) -> Iterator[Stack]:
    """Start Redis, the simulator and the wsproxy; stop all three on exit."""
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="wsproxy-loadkit-")
        workdir = Path(tmp.name)
    secret = secrets.token_urlsafe(48)
    procs: list[Proc] = []
    try:
        redis = start_redis(workdir)
        procs.append(redis.proc)
        sim, sim_port = start_sim(workdir, redis_url=redis.url, jwt_secret=secret, **dict(sim_env or {}))
        procs.append(sim)
        ws, ws_port = start_wsproxy(workdir, redis_url=redis.url, jwt_secret=secret, **dict(wsproxy_env or {}))
        procs.append(ws)
        yield Stack(workdir, redis, secret, sim, sim_port, ws, ws_port)
    finally:
        for p in reversed(procs):
            p.stop()
        if tmp is not None:
            tmp.cleanup()
