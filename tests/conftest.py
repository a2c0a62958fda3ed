"""Shared fixtures: real processes on loopback, started here and stopped here."""

from __future__ import annotations

from pathlib import Path

import pytest

from devkit.localstack import RedisServer, Stack, local_stack, start_redis


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> RedisServer:
    """A kit-owned redis-server with a password, on a free loopback port, for the whole session."""
    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.proc.stop()


@pytest.fixture
def stack_factory(tmp_path: Path):
    """Start Redis + simulator + wsproxy with chosen settings: ``stack_factory(sim_env={...})``."""
    import contextlib

    with contextlib.ExitStack() as es:

        def make(*, sim_env=None, wsproxy_env=None) -> Stack:
            workdir = tmp_path / f"stack{len(es._exit_callbacks)}"
            return es.enter_context(local_stack(workdir, sim_env=sim_env, wsproxy_env=wsproxy_env))

        yield make


@pytest.fixture
def stack(stack_factory) -> Stack:
    """Redis + simulator + wsproxy with a fast token pace (5 ms)."""
    return stack_factory(sim_env={"TOKEN_DELAY_MS": 5})
