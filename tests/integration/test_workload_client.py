"""The workload is the run's: kit.client sends it in each /run, one simulator applies each run's own,
and the run records what ran (real Redis, simulator and wsproxy on loopback)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import httpx
import pytest

from devkit.localstack import Stack

pytestmark = pytest.mark.timeout(180)


def _client(stack: Stack, out: Path, *extra: str, rc: int = 0) -> tuple[subprocess.CompletedProcess, dict]:
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "kit.client",
            "--api-url",
            stack.api_url,
            "--ws-url",
            stack.ws_url,
            "--output-dir",
            str(out),
            "--quiet",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert r.returncode == rc, r.stderr[-3000:]
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    return r, (json.loads((out / "summary.json").read_text()) if rc == 0 else {})


def _queries(out: Path) -> list[dict[str, str]]:
    with open(out / "queries.csv", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture
def one_sim(stack_factory) -> Stack:
    """One deployment: a 5 ms pace and the default response text (about 40 words)."""
    return stack_factory(sim_env={"TOKEN_DELAY_MS": 5})


def test_two_runs_against_one_simulator_get_their_own_pace_and_length(one_sim, tmp_path):
    common = ("--clients", "2", "--queries", "2", "--processes", "1")
    _, fast = _client(one_sim, tmp_path / "fast", *common, "--token-delay", "1", "--tokens", "8")
    _, slow = _client(one_sim, tmp_path / "slow", *common, "--token-delay", "40", "--tokens", "60")
    # length: each run's own, past the response text's end for the long one (the text repeats)
    assert {q["tokens"] for q in _queries(tmp_path / "fast")} == {"8"}
    assert {q["tokens"] for q in _queries(tmp_path / "slow")} == {"60"}
    assert fast["total_tokens"] == 4 * 8 and slow["total_tokens"] == 4 * 60 and slow["lost_tokens"] == 0
    # pace: the gaps between tokens are each run's, not the deployment's 5 ms
    assert fast["inter_token_ms"]["p50"] < 5
    assert 38 <= slow["inter_token_ms"]["p50"] < 60
    # recorded: what the simulator answered it applied, in summary.json and meta.json
    for out, s, delay, tokens in ((tmp_path / "fast", fast, 1.0, 8), (tmp_path / "slow", slow, 40.0, 60)):
        eff = s["workload"]["classes"]["default"]["effective"]
        assert (eff["token_delay_ms"], eff["tokens"], eff["ttft_ms"], eff["token_jitter_ms"]) == (delay, tokens, 0, 0)
        assert json.loads((out / "meta.json").read_text())["workload"] == s["workload"]


def test_a_run_that_sets_nothing_records_the_simulators_deployed_defaults(one_sim, tmp_path):
    _, s = _client(one_sim, tmp_path / "run", "--clients", "2", "--queries", "1", "--processes", "2")
    w = s["workload"]
    assert w["sessions"] == 2 and w["source"] is None
    eff = w["classes"]["default"]["effective"]
    assert eff["token_delay_ms"] == 5.0 and eff["ttft_ms"] == 0.0 and eff["tokens"] == s["total_tokens"] // 2
    assert w["classes"]["default"]["requested"]["token_delay_ms"] is None


def test_a_mix_run_draws_classes_by_weight_and_records_per_class_counts(one_sim, tmp_path):
    wl = tmp_path / "mix.yml"
    wl.write_text(
        "seed: 11\nclasses:\n  short: {weight: 3, tokens: 3, token_delay_ms: 1}\n"
        "  long: {weight: 1, tokens: 50, token_delay_ms: 2, ttft_ms: 20}\n"
    )
    out = tmp_path / "run"
    _, s = _client(one_sim, out, "--clients", "40", "--queries", "1", "--processes", "2", "--workload", str(wl))
    w = s["workload"]
    counts = {n: c["sessions"] for n, c in w["classes"].items()}
    assert sum(counts.values()) == 40 and w["source"] == str(wl) and w["seed"] == 11
    # every session ran its class's workload: the answers' lengths count the classes exactly
    assert Counter(q["tokens"] for q in _queries(out)) == Counter({"3": counts["short"], "50": counts["long"]})
    assert 20 <= counts["short"] <= 38  # weight 3:1 of 40 (expected 30)
    assert w["classes"]["long"]["effective"]["ttft_ms"] == 20 and w["classes"]["short"]["share"] == 0.75
    assert s["successful_sessions"] == 40
    # the same seed draws the same classes
    _, again = _client(
        one_sim, tmp_path / "again", "--clients", "40", "--queries", "1", "--processes", "1", "--workload", str(wl)
    )
    assert {n: c["sessions"] for n, c in again["workload"]["classes"].items()} == counts


def test_the_simulator_refuses_an_out_of_range_workload_naming_field_and_bounds(one_sim):
    with httpx.Client(base_url=one_sim.api_url, timeout=10) as http:
        sid = http.post("/session/create").json()["session_id"]
        r = http.post(f"/session/{sid}/run", json={"query": "q", "token_delay_ms": 60001})
        assert r.status_code == 422 and r.json()["error"] == "invalid_body"
        assert r.json()["detail"].startswith("token_delay_ms must be a number from 0 to 60000")
        ok = http.post(f"/session/{sid}/run", json={"query": "q", "max_tokens": 2})
        assert ok.status_code == 202 and ok.json()["workload"]["token_delay_ms"] == 5.0


def test_the_client_refuses_an_out_of_range_option_or_a_bad_file_before_any_load(one_sim, tmp_path):
    r, _ = _client(one_sim, tmp_path / "a", "--token-delay", "70000", rc=2)
    assert (
        r.stderr.strip()
        .splitlines()[-1]
        .endswith("--token-delay 70000: 70000 is out of range: give from 0 to 60000 (ms between tokens)")
    )
    bad = tmp_path / "bad.yml"
    bad.write_text("classes:\n  a: {weight: 0, tokens: 5}\n  b: {weight: 1, pace: 3}\n")
    r, _ = _client(one_sim, tmp_path / "b", "--workload", str(bad), rc=2)
    assert "class 'a': weight 0 is not a number > 0" in r.stderr and "class 'b': unknown key 'pace'" in r.stderr
