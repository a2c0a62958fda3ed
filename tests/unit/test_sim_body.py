"""kit.sim._body: request bodies validated at the edge, errors naming the field."""

from __future__ import annotations

import pytest

import kit.sim
from kit.sim import BodyError, CreateRequest, RunRequest, parse_create, parse_run


def test_package_exports_what_it_means_to_and_importing_builds_no_app():
    assert set(kit.sim.__all__) >= {"create_app", "Publisher", "parse_create", "parse_run", "app_from_env"}
    assert "app" not in vars(kit.sim)  # built lazily, only when an ASGI server asks for it


@pytest.mark.parametrize("raw", [b"", b"  ", b"{}", b'{"other": 1}'])
def test_create_accepts_an_empty_body_and_defaults_the_agent(raw):
    assert parse_create(raw) == CreateRequest(agent_id="load-test-agent")


def test_create_takes_the_agent_id():
    assert parse_create(b'{"agent_id": "agent-7.b_c"}').agent_id == "agent-7.b_c"


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b"{not json", "body"),
        (b"[1, 2]", "body"),
        (b'"text"', "body"),
        (b'{"agent_id": 5}', "agent_id"),
        (b'{"agent_id": null}', "agent_id"),
        (b'{"agent_id": ["a"]}', "agent_id"),
        (b'{"agent_id": ""}', "agent_id"),
        (b'{"agent_id": "a/b"}', "agent_id"),
        (b'{"agent_id": "x' + b"y" * 200 + b'"}', "agent_id"),
    ],
)
def test_create_refuses_malformed_bodies_naming_the_field(raw, field):
    with pytest.raises(BodyError) as info:
        parse_create(raw)
    assert info.value.field == field
    assert field in info.value.detail or field == "body"


def test_run_takes_query_and_optional_max_tokens():
    assert parse_run(b'{"query": "hi"}') == RunRequest(query="hi", max_tokens=None)
    assert parse_run(b'{"query": "", "max_tokens": 3, "extra": true}') == RunRequest(query="", max_tokens=3)
    assert parse_run(b'{"query": "x", "max_tokens": null}').max_tokens is None


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b"", "body"),
        (b"nope", "body"),
        (b"[]", "body"),
        (b"{}", "query"),
        (b'{"query": 1}', "query"),
        (b'{"query": null}', "query"),
        (b'{"query": "x", "max_tokens": 0}', "max_tokens"),
        (b'{"query": "x", "max_tokens": -3}', "max_tokens"),
        (b'{"query": "x", "max_tokens": 2.5}', "max_tokens"),
        (b'{"query": "x", "max_tokens": "5"}', "max_tokens"),
        (b'{"query": "x", "max_tokens": true}', "max_tokens"),
    ],
)
def test_run_refuses_malformed_bodies_naming_the_field(raw, field):
    with pytest.raises(BodyError) as info:
        parse_run(raw)
    assert info.value.field == field
    if field != "body":
        assert field in info.value.detail
