"""kit.client._workload: the workload file (one line per problem), the seeded weighted draw, and the
record of what ran (counts merged across processes, the simulator's echo kept)."""

from __future__ import annotations

from collections import Counter

import pytest
import yaml

from kit.client._session import SessionConfig
from kit.client._workload import (
    Workload,
    WorkloadError,
    WorkloadRecord,
    draw,
    load_workload,
    merge_workload,
    parse_workload,
    workload_summary,
)

MIX = """
seed: 7
classes:
  short: {weight: 80, tokens: 20, think_time_s: 10}
  long: {weight: 20, tokens: 400, token_delay_ms: 30, ttft_ms: 250, queries: 2}
"""


def test_a_mix_file_gives_its_classes_in_order_with_their_overrides():
    w = parse_workload(yaml.safe_load(MIX), "mix.yml")
    assert w.seed == 7 and w.source == "mix.yml"
    assert [(c.name, c.weight) for c in w.classes] == [("short", 80.0), ("long", 20.0)]
    base = SessionConfig(api_url="http://a", ws_url="ws://b", think_time=1.0, token_delay_ms=5.0, queries=10)
    short, long = (c.apply(base) for c in w.classes)
    assert (short.max_tokens, short.think_time, short.token_delay_ms, short.queries) == (20, 10.0, 5.0, 10)
    assert (long.max_tokens, long.think_time, long.token_delay_ms, long.ttft_ms, long.queries) == (
        400,
        1.0,
        30.0,
        250.0,
        2,
    )
    assert (short.workload_class, long.workload_class) == ("short", "long")


def test_every_problem_of_a_file_is_one_line():
    bad = {
        "classes": {
            "a": {"weight": 0, "tokens": 5},
            "b": {"weight": -1},
            "c": {"pace": 3, "weight": 1},
            "d": {"weight": 1, "token_delay_ms": 70000, "tokens": 2.5, "think_time_s": "x"},
            "e": {"tokens": 3},
        },
        "colour": "red",
        "seed": -2,
    }
    with pytest.raises(WorkloadError) as info:
        parse_workload(bad, "w.yml")
    lines = str(info.value).splitlines()
    assert lines == [
        "w.yml: unknown key 'colour': use seed, classes",
        "w.yml: seed -2 is not a whole number >= 0",
        "w.yml: class 'a': weight 0 is not a number > 0",
        "w.yml: class 'b': weight -1 is not a number > 0",
        "w.yml: class 'c': unknown key 'pace': use weight, tokens, token_delay_ms, ttft_ms, token_jitter_ms, "
        "think_time_s, query_timeout_s, queries",
        "w.yml: class 'd': token_delay_ms: 70000 is out of range: give from 0 to 60000 (ms between tokens)",
        "w.yml: class 'd': tokens: 2.5 is not a whole number (tokens in each answer)",
        "w.yml: class 'd': think_time_s: 'x' is not a number (s between a session's queries)",
        "w.yml: class 'e': weight is missing: give a number > 0 (classes are drawn in proportion)",
    ]


@pytest.mark.parametrize(
    "doc, says",
    [
        ("- a\n- b\n", "must be a mapping"),
        ("classes: {}\n", "at least one class"),
        ("classes:\n  a: 3\n", "class 'a': give its settings as a mapping"),
    ],
)
def test_a_file_of_the_wrong_shape_says_what_to_write(tmp_path, doc, says):
    p = tmp_path / "w.yml"
    p.write_text(doc)
    with pytest.raises(WorkloadError, match=says):
        load_workload(p)


def test_unreadable_or_invalid_yaml_is_one_line(tmp_path):
    with pytest.raises(WorkloadError, match="cannot read it"):
        load_workload(tmp_path / "missing.yml")
    p = tmp_path / "w.yml"
    p.write_text("classes: [a\n")
    with pytest.raises(WorkloadError) as info:
        load_workload(p)
    assert "not valid YAML at line" in str(info.value) and "\n" not in str(info.value)


def test_the_draw_follows_the_weights_and_the_seed():
    weights = [80, 20]
    counts = Counter(draw(weights, 7, g) for g in range(10_000))
    assert abs(counts[0] - 8000) < 4 * (10_000 * 0.8 * 0.2) ** 0.5  # within 4 standard deviations
    assert [draw(weights, 7, g) for g in range(200)] == [draw(weights, 7, g) for g in range(200)]
    assert [draw(weights, 7, g) for g in range(200)] != [draw(weights, 8, g) for g in range(200)]
    assert {draw([1, 1, 1], 3, g) for g in range(300)} == {0, 1, 2}


def test_a_session_draws_the_same_class_whichever_process_runs_it():
    w = parse_workload(yaml.safe_load(MIX))
    base = SessionConfig(api_url="http://a", ws_url="ws://b")
    one = WorkloadRecord(w, base, 7)
    alone = [one.config_for(g).workload_class for g in range(100)]
    two = [WorkloadRecord(w, base, 7) for _ in range(2)]
    split = [two[g % 2].config_for(g).workload_class for g in range(100)]
    assert split == alone
    merged = workload_summary(merge_workload([r.state() for r in two]))
    assert {n: c["sessions"] for n, c in merged["classes"].items()} == dict(Counter(alone))
    assert merged["sessions"] == 100 and merged["classes"]["short"]["share"] == 0.8


def test_the_summary_has_the_complete_effective_workload():
    base = SessionConfig(
        api_url="http://a", ws_url="ws://b", think_time=0.5, query_timeout=30.0, queries=3, ttft_ms=100.0
    )
    rec = WorkloadRecord(Workload(), base, 1)
    rec.config_for(0)
    rec.observe("default", 42, {"token_delay_ms": 50.0, "ttft_ms": 100.0, "token_jitter_ms": 0.0})
    rec.observe("default", 7, {"token_delay_ms": 1.0, "ttft_ms": 1.0, "token_jitter_ms": 1.0})  # first one kept
    c = workload_summary(merge_workload([rec.state(), None]))["classes"]["default"]
    assert c["effective"] == {
        "think_time_s": 0.5,
        "query_timeout_s": 30.0,
        "queries": 3,
        "tokens": 42,
        "token_delay_ms": 50.0,
        "ttft_ms": 100.0,
        "token_jitter_ms": 0.0,
    }
    assert c["requested"]["token_delay_ms"] is None and c["requested"]["ttft_ms"] == 100.0
    assert c["simulator_answered"] is True and c["sessions"] == 1
