"""Request bodies of the simulator, validated at the edge into frozen dataclasses.

``parse_create`` and ``parse_run`` take the raw body bytes and either return a
value object or raise :class:`BodyError` naming the offending field and the fix;
the app turns that into ``422 {"error": "invalid_body", "detail": ...}``.
Unknown extra fields are ignored (clients may send more than we read).

The workload of a query (``/run``'s ``max_tokens``, ``token_delay_ms``, ``ttft_ms``,
``token_jitter_ms``) is the run's, not the deployment's: :data:`WORKLOAD_BOUNDS` is the one
definition of what a body may ask for (the load client checks its options against it too); a
field left out (or ``null``) takes the simulator's deployed value (TOKEN_DELAY_MS, TTFT_MS,
TOKEN_JITTER_MS, the whole LLM_RESPONSE_TEXT).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

from kit.wire import PACE_FIELDS, WORKLOAD_BOUNDS

__all__ = [
    "BodyError",
    "CreateRequest",
    "RunRequest",
    "DEFAULT_AGENT_ID",
    "WORKLOAD_BOUNDS",
    "PACE_FIELDS",
    "check_workload_value",
    "parse_create",
    "parse_run",
]

DEFAULT_AGENT_ID = "load-test-agent"
#: an agent id becomes a path segment of ws_path: keep it to URL-safe characters
_AGENT_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._~-]{0,127}")


# the bounds of a run's workload are the wire contract's: kit.wire (the client checks them too)


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
    """A query; a workload field that is None takes the simulator's deployed value."""

    query: str
    max_tokens: int | None = None
    token_delay_ms: float | None = None
    ttft_ms: float | None = None
    token_jitter_ms: float | None = None


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
        raise BodyError(
            "agent_id",
            f'agent_id must be a string, got {_kind(agent_id)}: send e.g. {{"agent_id": "load-test-agent"}} or omit it',
        )
    if not _AGENT_ID_RE.fullmatch(agent_id):
        raise BodyError(
            "agent_id",
            "agent_id must be 1-128 characters of letters, digits, '.', '_', '~' "
            "or '-' starting with a letter or digit (it becomes a URL path segment)",
        )
    return CreateRequest(agent_id=agent_id)


def parse_run(raw: bytes) -> RunRequest:
    """``POST /session/{id}/run``: ``{"query": str}`` and, each optional, the workload fields of
    :data:`WORKLOAD_BOUNDS` (``max_tokens`` a whole number, the times numbers of milliseconds)."""
    obj = _object(raw, optional=False, example='{"query": "hello", "max_tokens": 20}')
    assert obj is not None
    if "query" not in obj:
        raise BodyError("query", 'query is missing: send {"query": "<text>"}')
    query = obj["query"]
    if not isinstance(query, str):
        raise BodyError("query", f"query must be a string, got {_kind(query)}")
    got = {name: check_workload_value(name, obj.get(name)) for name in WORKLOAD_BOUNDS}
    return RunRequest(query=query, **got)


def check_workload_value(name: str, value: Any) -> Any:
    """*value* of workload field *name* if it is within :data:`WORKLOAD_BOUNDS` (None stays None);
    BodyError naming the field and its bounds otherwise."""
    if value is None:
        return None
    lo, hi, what = WORKLOAD_BOUNDS[name]
    whole = name == "max_tokens"
    # bool is an int subclass: {"max_tokens": true} is refused
    ok_type = type(value) is int or (not whole and type(value) is float)
    if not ok_type or not lo <= value <= hi:
        kind = "a whole number" if whole else "a number"
        raise BodyError(
            name,
            f"{name} must be {kind} from {lo:g} to {hi:g} ({what}), got {_kind(value)}: "
            "send a value in range or omit it for the simulator's default",
        )
    return value


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
