"""Both services started with a well-formed REDIS_URL where no Redis answers.

Each logs one line at start naming the host:port (never the password) and the fix, keeps
running with /health at 503, and recovers (one more line, /health 200) when Redis comes.
Every wait is a poll with a deadline.
"""

from __future__ import annotations

import http.client
import os
import secrets
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from devkit.localstack import Proc, free_port, spawn, start_redis

pytestmark = pytest.mark.timeout(120)

SECRET = "redis-unreachable-secret-" + "x" * 32
LINE = "REDIS_URL is not usable at start-up"


def _health(port: int) -> int | None:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            conn.request("GET", "/health")
            return conn.getresponse().status
        finally:
            conn.close()
    except OSError:
        return None


def _wait(predicate: Callable[[], object], what: str, proc: Proc, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.01
    while not predicate():
        assert proc.alive(), (
            f"{proc.name} exited with {proc.popen.returncode} while waiting for {what}:\n{proc.log_tail()}"
        )
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}:\n{proc.log_tail()}")
        time.sleep(delay)  # poll interval, bounded by the deadline
        delay = min(delay * 2, 0.2)


def _start(service: str, tmp_path: Path, redis_url: str) -> tuple[Proc, int]:
    port = free_port()
    env = dict(os.environ, REDIS_URL=redis_url, JWT_SECRET=SECRET, LOG_LEVEL="INFO")
    if service == "wsproxy":
        env.update(HOST="127.0.0.1", PORT=str(port))
    else:
        env.update(FASTAPI_HOST="127.0.0.1", FASTAPI_PORT=str(port))
    return spawn(f"{service}-{port}", [sys.executable, "-m", f"kit.{service}"], env=env, log_dir=tmp_path), port


@pytest.mark.parametrize("service", ["wsproxy", "sim"])
def test_unreachable_redis_is_one_log_line_at_start_then_health_recovers(service: str, tmp_path: Path) -> None:
    dead = free_port()
    password = "pw-" + secrets.token_hex(12)
    proc, port = _start(service, tmp_path, f"redis://:{password}@127.0.0.1:{dead}/0")
    redis_server = None
    try:
        _wait(lambda: _health(port) is not None, "/health to answer", proc)
        assert _health(port) == 503
        _wait(lambda: LINE in proc.log_path.read_text(errors="replace"), "the start-up line", proc)
        log = proc.log_path.read_text(errors="replace")
        line = next(x for x in log.splitlines() if LINE in x)
        assert f"127.0.0.1:{dead}" in line and "fix REDIS_URL" in line and "redis-server" in line
        assert proc.alive() and _health(port) == 503

        redis_server = start_redis(tmp_path / "redis", port=dead, password=password)
        _wait(lambda: _health(port) == 200, "/health 200 once Redis is up", proc, timeout=60)
        _wait(
            lambda: f"Redis at 127.0.0.1:{dead} answers now" in proc.log_path.read_text(errors="replace"),
            "the recovery line",
            proc,
            timeout=60,
        )
        log = proc.log_path.read_text(errors="replace")
        assert log.count(LINE) == 1, "the start-up line was repeated"
        assert password not in log
        assert "Traceback" not in log
        t0 = time.monotonic()
        assert proc.stop() == 0
        assert time.monotonic() - t0 < 8
    finally:
        proc.stop()
        if redis_server is not None:
            redis_server.proc.stop()


@pytest.mark.parametrize("service", ["wsproxy", "sim"])
def test_wrong_redis_password_is_named_at_start_without_the_password(
    service: str, tmp_path: Path, redis_server
) -> None:
    wrong = "wrong-" + secrets.token_hex(12)
    proc, port = _start(service, tmp_path, f"redis://:{wrong}@{redis_server.host}:{redis_server.port}/0")
    try:
        _wait(lambda: LINE in proc.log_path.read_text(errors="replace"), "the start-up line", proc)
        assert _health(port) == 503
        log = proc.log_path.read_text(errors="replace")
        line = next(x for x in log.splitlines() if LINE in x)
        assert f"{redis_server.host}:{redis_server.port}" in line
        assert wrong not in log and redis_server.password not in log
        t0 = time.monotonic()
        assert proc.stop() == 0, proc.log_tail()
        assert time.monotonic() - t0 < 8, "a retrying probe held the shutdown up"
    finally:
        proc.stop()
