"""Request bodies of the simulator, validated at the edge into frozen dataclasses.

``parse_create`` and ``parse_run`` take the raw body bytes and either return a
value object or raise :class:`BodyError` naming the offending field and the fix;
the app turns that into ``422 {"error": "invalid_body", "detail": ...}``.
Unknown extra fields are ignored (clients may send more than we read).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

__all__ = ["BodyError", "CreateRequest", "RunRequest", "DEFAULT_AGENT_ID", "parse_create", "parse_run"]

DEFAULT_AGENT_ID = "load-test-agent"
#: an agent id becomes a path segment of ws_path: keep it to URL-safe characters
_AGENT_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._~-]{0,127}")


class BodyError(ValueError):
    """The body is malformed; ``field`` names what was wrong (``"body"`` for the whole)."""

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(detail)
        self.field = field
        self.detail = detail


@dataclass(frozen=True, slots=True)
class CreateRequest:
    agent_id: str = DEFAULT_AGENT_ID


@dataclass(frozen=True, slots=True)
class RunRequest:
    query: str
    max_tokens: int | None = None


def _object(raw: bytes, *, optional: bool, example: str) -> dict[str, Any] | None:
    if not raw.strip():
        if optional:
            return None
        raise BodyError("body", f"the body is empty: send a JSON object such as {example}")
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BodyError("body", f"the body is not valid JSON: send a JSON object such as {example}") from None
    if not isinstance(value, dict):
        raise BodyError("body", f"the body is a JSON {type(value).__name__}, not an object: send {example}")
    return value


def parse_create(raw: bytes) -> CreateRequest:
    """``POST /session/create``: an empty body or ``{"agent_id": str}``."""
    obj = _object(raw, optional=True, example='{"agent_id": "load-test-agent"}')
    if obj is None or "agent_id" not in obj:
        return CreateRequest()
    agent_id = obj["agent_id"]
    if not isinstance(agent_id, str):
        raise BodyError("agent_id", f"agent_id must be a string, got {_kind(agent_id)}: "
                                    'send e.g. {"agent_id": "load-test-agent"} or omit it')
    if not _AGENT_ID_RE.fullmatch(agent_id):
        raise BodyError("agent_id", "agent_id must be 1-128 characters of letters, digits, '.', '_', '~' "
                                    "or '-' starting with a letter or digit (it becomes a URL path segment)")
    return CreateRequest(agent_id=agent_id)


def parse_run(raw: bytes) -> RunRequest:
    """``POST /session/{id}/run``: ``{"query": str, "max_tokens": int >= 1 (optional)}``."""
    obj = _object(raw, optional=False, example='{"query": "hello", "max_tokens": 20}')
    assert obj is not None
    if "query" not in obj:
        raise BodyError("query", 'query is missing: send {"query": "<text>"}')
    query = obj["query"]
    if not isinstance(query, str):
        raise BodyError("query", f"query must be a string, got {_kind(query)}")
    max_tokens = obj.get("max_tokens")
    if max_tokens is not None:
        # bool is an int subclass: {"max_tokens": true} is refused
        if type(max_tokens) is not int or max_tokens < 1:
            raise BodyError("max_tokens", f"max_tokens must be a whole number >= 1, got {_kind(max_tokens)}: "
                                          "send e.g. 20 or omit it for the whole response")
    return RunRequest(query=query, max_tokens=max_tokens)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    if isinstance(value, str):
        return "a string"
    return f"a JSON {'array' if isinstance(value, list) else 'object'}"
