"""Pure pieces of a simulated answer: its tokens, when each is due, how each message reads.

No I/O and no clock reads here (the caller passes times in), so all of it is unit-tested.

Timing model (offsets in seconds from the moment ``/run`` was received):
token ``i`` is due at ``TTFT_MS + i * TOKEN_DELAY_MS`` plus a uniform jitter in
``[-TOKEN_JITTER_MS, +TOKEN_JITTER_MS]``, clamped so that no token is due before
the previous one (nor before the submit instant); the ``done`` message is due
with the last token and is always published right after it.

Message bytes are the wire contract's compact JSON, built by ``%`` formatting of
pre-encoded pieces (the token words are JSON-encoded once per process), which is
what lets one process publish tens of thousands of messages per second.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import orjson

from kit import contract
from kit.wire import DONE_CANCELLED

__all__ = [
    "split_tokens",
    "encode_tokens",
    "due_offsets",
    "token_message",
    "done_message",
    "channel_name",
]

_TOKEN_FMT = b'{"type":"token","query_id":"%s","seq":%d,"ts":%d,"text":%s}'
_DONE_FMT = b'{"type":"done","query_id":"%s","seq":%d,"ts":%d,"tokens":%d}'
_CANCELLED_FMT = b'{"type":"done","query_id":"%s","seq":%d,"ts":%d,"tokens":%d,"' + DONE_CANCELLED.encode() + b'":true}'


def split_tokens(text: str, max_tokens: int | None = None) -> list[str]:
    """The whitespace-split words of *text*, the first *max_tokens* of them if given."""
    words = text.split()
    if max_tokens is not None:
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
        del words[max_tokens:]
    return words


def encode_tokens(words: Sequence[str]) -> list[bytes]:
    """Each word as a JSON string literal (quotes and escapes included), ready to splice in."""
    return [orjson.dumps(w) for w in words]


def due_offsets(
    n: int,
    *,
    ttft_ms: float,
    delay_ms: float,
    jitter_ms: float = 0.0,
    rng: random.Random | None = None,
) -> list[float]:
    """Due offsets in seconds of tokens ``0..n-1`` followed by the ``done`` message (n+1 values).

    The list is non-decreasing and starts at or after 0; without jitter token ``i``
    is due exactly at ``ttft + i * delay``.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if ttft_ms < 0 or delay_ms < 0 or jitter_ms < 0:
        raise ValueError("ttft_ms, delay_ms and jitter_ms must be >= 0")
    ttft = ttft_ms / 1000.0
    delay = delay_ms / 1000.0
    out: list[float] = []
    prev = 0.0
    if jitter_ms > 0:
        jitter = jitter_ms / 1000.0
        uniform = (rng or random.Random()).uniform
        for i in range(n):
            t = ttft + i * delay + uniform(-jitter, jitter)
            if t < prev:
                t = prev
            out.append(t)
            prev = t
    else:
        out = [ttft + i * delay for i in range(n)]
        prev = out[-1] if out else ttft
    out.append(prev if n else ttft)
    return out


def channel_name(session_id: str) -> bytes:
    """The Redis channel a session's down messages go to (the contract's kit_pubsub_channel)."""
    return contract.pubsub_channel(session_id)


def token_message(query_id: bytes, seq: int, ts_ns: int, text_json: bytes) -> bytes:
    """``{"type":"token",...}``; *text_json* is a JSON string literal from :func:`encode_tokens`."""
    return _TOKEN_FMT % (query_id, seq, ts_ns, text_json)


def done_message(query_id: bytes, tokens: int, ts_ns: int, *, cancelled: bool = False) -> bytes:
    """``{"type":"done",...}`` with ``seq`` = ``tokens`` = the number of tokens sent; *cancelled* adds
    ``"cancelled":true`` (the query was cancelled after *tokens* tokens: kit.wire)."""
    return (_CANCELLED_FMT if cancelled else _DONE_FMT) % (query_id, tokens, ts_ns, tokens)
