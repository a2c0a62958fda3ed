"""The client's verdict (summary.json ``status``), its exit codes, and its never-overwrite output rule."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from kit.client.__main__ import EXIT_BY_STATUS, build_parser
from kit.client._accounting import Recorder
from kit.client._output import (
    RESULT_FILES,
    build_summary,
    check_output_dir,
    claim_output_dir,
    merge_states,
    run_status,
    write_outputs,
)
from kit.config import ClientSettings, ConfigError


def _summary(ok: int, failed: int = 0, cancelled: int = 0) -> dict:
    return {
        "total_sessions": ok + failed,
        "successful_sessions": ok,
        "failed_sessions": failed,
        "cancelled_sessions": cancelled,
    }


@pytest.mark.parametrize(
    ("summary", "runs", "status"),
    [
        (_summary(5), [{}], "passed"),
        (_summary(4, 1), [{}], "partial"),
        (_summary(4, 1, cancelled=1), [{}], "partial"),
        (_summary(5), [{}, {"max_duration_hit": True}], "partial"),
        (_summary(0, 5), [{}], "failed"),
        (_summary(0, 4, cancelled=4), [{"max_duration_hit": True}], "failed"),
        (_summary(0), [{}], "failed"),
        (_summary(0), [], "failed"),
    ],
    ids=[
        "all_ok",
        "one_failed",
        "one_cancelled",
        "max_duration_hit",
        "all_failed",
        "all_cancelled",
        "no_session",
        "no_process",
    ],
)
def test_run_status(summary: dict, runs: list, status: str) -> None:
    got, reason = run_status(summary, runs)
    assert got == status and reason


def test_reason_names_the_counts() -> None:
    assert run_status(_summary(3, 2, cancelled=1), [{"max_duration_hit": True}]) == (
        "partial",
        "1 of 5 sessions failed, 1 cancelled, --max-duration reached",
    )
    assert run_status(_summary(0, 2), [{}]) == ("failed", "no session succeeded: 2 of 2 sessions failed")


def test_exit_codes_by_status() -> None:
    assert EXIT_BY_STATUS == {"passed": 0, "failed": 1, "partial": 3}


def _state(tmp_path: Path, *, ok: int, failed: int, hit: bool = False) -> dict:
    rec = Recorder()
    rec.counters.update(sessions_finished=ok + failed, sessions_ok=ok, sessions_failed=failed)
    run = {
        "host": "h",
        "pid": 1,
        "start": 0.0,
        "end": 1.0,
        "start_skew_s": None,
        "cpu_percent_peak": 0.0,
        "cpu_percent_mean": 0.0,
        "max_duration_hit": hit,
    }
    out = tmp_path / f"p{ok}-{failed}-{hit}"
    summary = write_outputs(out, rec, run, {}, run_id="r", model="closed")
    return json.loads((out / "histograms.json").read_text()) | {"_summary": summary}


def test_summary_json_carries_the_status_and_a_merge_recomputes_it(tmp_path: Path) -> None:
    good = _state(tmp_path, ok=3, failed=0)
    bad = _state(tmp_path, ok=0, failed=2)
    assert good["_summary"]["status"] == "passed" and bad["_summary"]["status"] == "failed"
    merged = build_summary(merge_states([good, bad]))
    assert merged["status"] == "partial" and merged["status_reason"] == "2 of 5 sessions failed"
    hit = _state(tmp_path, ok=3, failed=0, hit=True)
    assert build_summary(merge_states([good, hit]))["status"] == "partial"


# -- OUTPUT_DIR --------------------------------------------------------------------------------------


def test_output_dir_under_a_file_is_a_config_error_naming_it(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(ConfigError) as info:
        check_output_dir(blocker / "results")
    text = str(info.value)
    assert str(blocker / "results") in text and "cannot create it" in text and "--output-dir" in text


def test_empty_or_new_output_dir_is_used_as_is(tmp_path: Path) -> None:
    folder, rid = claim_output_dir(tmp_path / "new" / "deep", "r1", {"x": 1}, run_id_given=False)
    assert (folder, rid) == (tmp_path / "new" / "deep", "r1")
    assert json.loads((folder / "meta.json").read_text()) == {"x": 1, "run_id": "r1"}


def test_folder_with_unrelated_files_is_used_as_is(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    assert claim_output_dir(tmp_path, "r1", {}, run_id_given=False) == (tmp_path, "r1")


@pytest.mark.parametrize("name", [*RESULT_FILES, "proc-0"])
def test_folder_holding_a_run_gets_a_run_id_subfolder(tmp_path: Path, name: str) -> None:
    (tmp_path / name).mkdir() if name.startswith("proc-") else (tmp_path / name).write_text("{}")
    folder, rid = claim_output_dir(tmp_path, "20261130-150000-c5", {}, run_id_given=False)
    assert (folder, rid) == (tmp_path / "20261130-150000-c5", "20261130-150000-c5")
    assert (folder / "meta.json").exists()


def test_taken_generated_run_id_gets_a_suffix_and_a_taken_given_one_is_refused(tmp_path: Path) -> None:
    first = claim_output_dir(tmp_path, "rid", {}, run_id_given=False)
    second = claim_output_dir(tmp_path, "rid", {}, run_id_given=False)
    third = claim_output_dir(tmp_path, "rid", {}, run_id_given=False)
    assert [first, second, third] == [(tmp_path, "rid"), (tmp_path / "rid", "rid"), (tmp_path / "rid-2", "rid-2")]
    assert json.loads((tmp_path / "rid-2" / "meta.json").read_text())["run_id"] == "rid-2"
    with pytest.raises(ConfigError) as info:
        claim_output_dir(tmp_path, "rid", {}, run_id_given=True)
    assert "pass another --run-id or --output-dir" in str(info.value)


def test_nothing_of_an_earlier_run_is_touched(tmp_path: Path) -> None:
    (tmp_path / "summary.json").write_text('{"earlier": true}')
    before = {p: p.read_bytes() for p in tmp_path.iterdir()}
    claim_output_dir(tmp_path, "r2", {}, run_id_given=False)
    assert {p: p.read_bytes() for p in before} == before
    assert not (tmp_path / "meta.json").exists()


# -- fab run's generators ----------------------------------------------------------------------------


def test_fab_run_generators_exit_zero_on_failure_and_the_client_accepts_their_argv() -> None:
    from kit.inventory import Host
    from kit.run import RunOptions
    from kit.run._plan import GeneratorSlot
    from kit.run._run import _client_argv

    opts = RunOptions(clients=10, queries=3)
    opts.resolve()
    gen = Host("gen1", {"kit_root": "/opt/k"})
    lb = Host("lb1", {"ansible_host": "10.0.0.5", "haproxy_http_port": 8080, "haproxy_ws_port": 8081})
    argv = _client_argv(gen, GeneratorSlot("gen1", "lb1", 2, 10, None, "gen1"), opts, lb, "/tmp/out", 1.0, "r1")
    assert "--exit-zero-on-failure" in argv
    args = build_parser(ClientSettings.from_env(dict(os.environ))).parse_args(argv[argv.index("--api-url") :])
    assert args.exit_zero_on_failure and args.output_dir == "/tmp/out"
