"""Facts of the wire contract that both sides check: what a ``POST /session/{id}/run`` may ask for, and
how a query's stream ends.

The simulator (``kit.sim._body``, ``kit.sim._app``) refuses a body outside these bounds with 422 and the
load client (``kit.client._workload``) refuses the same options before a run starts: one definition, in a
module that imports nothing, so the client does not load the simulator's web framework to read it.

Bounds of one query: each field of :data:`WORKLOAD_BOUNDS`, and the whole query's length,
:func:`query_duration_ms` (TTFT + (tokens - 1) x token delay + jitter, when its ``done`` is due at the
latest), at most :data:`MAX_QUERY_MS`: every field at its maximum would be a 69-day query, and a query
must end within minutes.  :func:`query_duration_problem` is the check both sides call.

The end of a query's stream (down messages, DESIGN.md's wire contract): the last message of every query
is ``{"type": "done", "query_id", "seq", "ts", "tokens"}``, ``seq`` = ``tokens`` = the number of token
messages published.  A query cancelled before its end (``POST /session/{id}/close`` cancels the session's
queries in flight) ends with the same ``done`` carrying ``"cancelled": true`` (:data:`DONE_CANCELLED`);
``tokens`` is then what was published before the cancel, fewer than ``/run`` announced.  A reader that
does not know the field reads a complete, shorter answer (nothing lost); the kit's client counts the
tokens ``/run`` announced and never published as cancelled, not lost, and the query's status is
``cancelled``.  Tokens published before the cancel that did not arrive are lost as ever.
"""

from __future__ import annotations

__all__ = [
    "WORKLOAD_BOUNDS",
    "PACE_FIELDS",
    "MAX_QUERY_MS",
    "DONE_CANCELLED",
    "query_duration_ms",
    "query_duration_problem",
]

#: ``/run`` workload field -> (minimum, maximum, what it is), inclusive.  max_tokens is the answer's
#: length in tokens (the response text's words, repeated when it asks for more than the text has);
#: the times are milliseconds.  Upper bounds keep one query's schedule small (100,000 due times); a
#: query's length as a whole is bounded by MAX_QUERY_MS.  Pace and TTFT of a real model are far inside them.
WORKLOAD_BOUNDS: dict[str, tuple[float, float, str]] = {
    "max_tokens": (1, 100_000, "tokens in the answer"),
    "token_delay_ms": (0.0, 60_000.0, "milliseconds between tokens"),
    "ttft_ms": (0.0, 600_000.0, "milliseconds before the first token"),
    "token_jitter_ms": (0.0, 60_000.0, "milliseconds of uniform jitter on each token"),
}
#: the timing fields of a query (max_tokens is its length)
PACE_FIELDS = ("token_delay_ms", "ttft_ms", "token_jitter_ms")

#: the longest a query may last, first token to done (15 minutes: the longest TTFT plus five minutes of
#: tokens; a real model's answer of 4,000 tokens at 50 ms is 200 s)
MAX_QUERY_MS = 900_000.0

#: the field of a ``done`` message that marks a query cancelled before its end (value ``true``)
DONE_CANCELLED = "cancelled"


def query_duration_ms(max_tokens: int, token_delay_ms: float, ttft_ms: float, token_jitter_ms: float = 0.0) -> float:
    """The latest a query's ``done`` is due, in ms after ``/run``: its TTFT, the gaps between its tokens,
    and its last token's jitter."""
    return ttft_ms + max(0, max_tokens - 1) * token_delay_ms + token_jitter_ms


def query_duration_problem(
    max_tokens: int | None, token_delay_ms: float | None, ttft_ms: float | None, token_jitter_ms: float | None = None
) -> str | None:
    """One line saying why a query of this workload would last longer than :data:`MAX_QUERY_MS`, or None.

    A field that is None (left to the simulator's deployed value) counts as the least it can be (1 token,
    0 ms): the client, which does not know the deployment's values, checks what it was given; the
    simulator calls this with the effective values.  The fields must each be within WORKLOAD_BOUNDS.
    """
    n = 1 if max_tokens is None else max_tokens
    delay = token_delay_ms or 0.0
    ttft = ttft_ms or 0.0
    jitter = token_jitter_ms or 0.0
    total = query_duration_ms(n, delay, ttft, jitter)
    if total <= MAX_QUERY_MS:
        return None
    return (
        f"the query would last {_duration(total)} (ttft_ms {ttft:g} + ({n} tokens - 1) x token_delay_ms "
        f"{delay:g} + token_jitter_ms {jitter:g}), more than the {_duration(MAX_QUERY_MS)} a query may "
        "last: ask for fewer tokens or a shorter delay"
    )


def _duration(ms: float) -> str:
    s = ms / 1000.0
    if s < 120:
        return f"{s:g} s"
    if s < 7200:
        return f"{s / 60:.3g} min"
    if s < 172_800:
        return f"{s / 3600:.3g} h"
    return f"{s / 86_400:.3g} days"
