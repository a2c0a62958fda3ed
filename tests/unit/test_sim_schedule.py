"""kit.sim._schedule: tokens, due times and message bytes, without I/O."""

from __future__ import annotations

import random

import orjson
import pytest

from kit.sim._schedule import (
    channel_name,
    done_message,
    due_offsets,
    encode_tokens,
    split_tokens,
    token_message,
)


def test_split_tokens_uses_whitespace_words_and_truncates_to_max_tokens():
    assert split_tokens("  a b\tc\nd  ") == ["a", "b", "c", "d"]
    assert split_tokens("a b c d", 2) == ["a", "b"]
    assert split_tokens("a b", 10) == ["a", "b"]


def test_split_tokens_refuses_max_tokens_below_one():
    with pytest.raises(ValueError, match="max_tokens"):
        split_tokens("a b", 0)


def test_due_offsets_without_jitter_are_ttft_plus_i_times_delay_and_done_follows_last():
    offs = due_offsets(4, ttft_ms=100, delay_ms=20)
    assert offs == pytest.approx([0.100, 0.120, 0.140, 0.160, 0.160])
    assert len(offs) == 5


def test_due_offsets_for_zero_tokens_is_done_at_ttft():
    assert due_offsets(0, ttft_ms=30, delay_ms=5) == pytest.approx([0.030])


def test_jitter_never_reorders_tokens_nor_goes_before_submit():
    rng = random.Random(1234)
    for _ in range(200):
        offs = due_offsets(50, ttft_ms=0, delay_ms=1, jitter_ms=25, rng=rng)
        assert all(b >= a for a, b in zip(offs, offs[1:]))
        assert offs[0] >= 0.0
        assert offs[-1] == offs[-2]


def test_jitter_stays_within_its_bound_of_the_nominal_time_when_it_cannot_reorder():
    # jitter smaller than half the delay can never need clamping
    rng = random.Random(7)
    offs = due_offsets(100, ttft_ms=50, delay_ms=10, jitter_ms=4, rng=rng)
    for i, t in enumerate(offs[:-1]):
        assert abs(t - (0.050 + i * 0.010)) <= 0.004 + 1e-12
    # and it does move things: not every token sits on its nominal time
    assert any(abs(t - (0.050 + i * 0.010)) > 1e-6 for i, t in enumerate(offs[:-1]))


def test_due_offsets_refuses_negative_inputs():
    with pytest.raises(ValueError):
        due_offsets(3, ttft_ms=-1, delay_ms=1)
    with pytest.raises(ValueError):
        due_offsets(-1, ttft_ms=0, delay_ms=1)


def test_token_and_done_messages_are_the_wire_contracts_compact_json():
    texts = encode_tokens(['he said "hi"', "naïve", "back\\slash"])
    for seq, text in enumerate(texts):
        raw = token_message(b"q1", seq, 1700000000123456789, text)
        assert b" " not in raw.replace(text, b"")  # compact: no spaces outside the text itself
        assert orjson.loads(raw) == {
            "type": "token",
            "query_id": "q1",
            "seq": seq,
            "ts": 1700000000123456789,
            "text": orjson.loads(text),
        }
    assert orjson.loads(texts[0]) == 'he said "hi"'
    assert orjson.loads(done_message(b"q1", 3, 5)) == {"type": "done", "query_id": "q1", "seq": 3, "ts": 5, "tokens": 3}


def test_channel_name_is_session_down():
    assert channel_name("abc") == b"session:abc:down"
