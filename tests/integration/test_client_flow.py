"""kit.client against the real simulator + wsproxy + Redis (loopback, free ports)."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from devkit.localstack import Stack, free_port, start_wsproxy

pytestmark = pytest.mark.timeout(180)


def client_argv(stack: Stack, out: Path, *extra: str) -> list[str]:
    return [
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
    ]


def run_client(
    stack: Stack, out: Path, *extra: str, timeout: float = 120, rc: int = 0
) -> tuple[subprocess.CompletedProcess, dict]:
    r = subprocess.run(client_argv(stack, out, *extra), capture_output=True, text=True, timeout=timeout)
    assert r.returncode == rc, r.stderr[-3000:]
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    return r, json.loads((out / "summary.json").read_text())


@contextlib.contextmanager
def started_client(argv: list[str], *, own_group: bool = False) -> Iterator[subprocess.Popen]:
    """The client *argv* started (output piped, as text) for the body of the ``with``, killed at its end if still
    running: its whole process group with *own_group* (a session of its own, as ``fab run`` starts it)."""
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=own_group
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            if own_group:
                os.killpg(proc.pid, signal.SIGKILL)
            else:
                proc.kill()
            proc.wait()


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def sim_stats(stack: Stack) -> dict:
    return httpx.get(f"{stack.api_url}/stats", timeout=5).json()


def wait_for_status(out: Path, pred, proc: subprocess.Popen, timeout: float = 30.0) -> dict:
    """Poll the client's status.json (written atomically) until pred(status) holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"client exited early: {proc.stderr.read() if proc.stderr else ''}"
        try:
            status = json.loads((out / "status.json").read_text())
        except (OSError, ValueError):
            status = None
        if status and pred(status):
            return status
        time.sleep(0.05)  # poll interval of a readiness check
    raise AssertionError(f"status.json never satisfied the condition: {status}")


def test_full_flow_counts_are_exact(stack: Stack, tmp_path: Path):
    out = tmp_path / "run"
    before = sim_stats(stack)
    r, s = run_client(
        stack, out, "--clients", "12", "--queries", "3", "--ramp", "40", "--processes", "2", "--max-tokens", "15"
    )
    after = sim_stats(stack)
    assert s["total_sessions"] == 12 and s["successful_sessions"] == 12 and s["success_rate"] == 100.0
    assert s["total_queries"] == 36 and s["successful_queries"] == 36
    published = after["tokens_published"] - before["tokens_published"]
    assert published == 36 * 15
    assert s["total_tokens"] == published
    assert (s["lost_tokens"], s["duplicated_tokens"], s["out_of_order_tokens"]) == (0, 0, 0)
    assert after["sessions_created"] - before["sessions_created"] == 12
    assert after["sessions_closed"] - before["sessions_closed"] == 12
    assert s["ttft_ms"]["count"] == 36 and s["inter_token_ms"]["count"] == 36 * 14
    assert s["delivery_latency_ms"]["count"] == published and s["create_ms"]["count"] == 12
    assert s["generator"]["processes"] == 2 and s["total_errors"] == 0
    q = rows(out / "queries.csv")
    assert len(q) == 36 and all(x["status"] == "ok" and x["tokens"] == "15" and x["lost"] == "0" for x in q)
    assert len(rows(out / "sessions.csv")) == 12
    # the top level is the merge of the processes' folders: counts add
    parts = [json.loads((out / f"proc-{i}" / "summary.json").read_text()) for i in range(2)]
    assert sum(p["total_queries"] for p in parts) == 36 and sum(p["total_tokens"] for p in parts) == published
    tl = rows(out / "timeline.csv")
    assert sum(int(t["tokens"]) for t in tl) == published
    # per-second latency: every second that received tokens has its delivery percentiles, merged over both
    # processes, and the per-second histograms add up to the whole run's
    assert all(t["delivery_p99_ms"] != "" for t in tl if int(t["tokens"]))
    seconds = json.loads((out / "histograms.json").read_text())["timeline_histograms"]["seconds"]
    assert sum(h["delivery"]["count"] for _, h in seconds if "delivery" in h) == published
    assert sum(h["create"]["count"] for _, h in seconds if "create" in h) == 12
    meta = json.loads((out / "meta.json").read_text())
    assert meta["processes"] == 2 and "argv" in meta
    assert "LOAD TEST SUMMARY" in r.stdout and "Success rate:           100.00 %" in r.stdout


def test_reconnects_after_wsproxy_is_killed_and_lost_tokens_are_exact(stack_factory, tmp_path: Path):
    stack = stack_factory(sim_env={"TOKEN_DELAY_MS": 20})
    out = tmp_path / "run"
    before = sim_stats(stack)
    with started_client(
        client_argv(
            stack,
            out,
            "--clients",
            "6",
            "--queries",
            "3",
            "--max-tokens",
            "40",
            "--processes",
            "1",
            "--initial-backoff",
            "0.1",
            "--max-backoff",
            "0.5",
            "--max-reconnect-attempts",
            "30",
            "--query-timeout",
            "4",
            "--status-interval",
            "0.1",
        ),
    ) as proc:
        restarted = None
        try:
            wait_for_status(out, lambda st: st["tokens"] >= 60 and st["active_sessions"] == 6, proc)
            stack.wsproxy.kill()  # as a crash would
            restarted, _ = start_wsproxy(
                stack.workdir / "restarted",
                redis_url=stack.redis.url,
                jwt_secret=stack.jwt_secret,
                port=stack.wsproxy_port,
            )
            stdout, stderr = proc.communicate(timeout=120)
        finally:
            if restarted is not None:  # the stack fixture stops only the proxy it started
                restarted.stop()
    # each session lost tokens of the query in flight, so each failed: the run's verdict is failed
    assert proc.returncode == 1, stderr[-3000:]
    s = json.loads((out / "summary.json").read_text())
    assert s["status"] == "failed"
    after = sim_stats(stack)
    published = after["tokens_published"] - before["tokens_published"]
    # every session was connected when the proxy died: each reconnected once, after >= 1 attempt
    assert s["sessions_with_reconnects"] == 6
    assert s["total_successful_reconnects"] == 6
    assert s["total_reconnect_attempts"] >= 6
    sess = rows(out / "sessions.csv")
    assert all(int(r["reconnects_ok"]) == 1 and int(r["reconnect_attempts"]) >= 1 for r in sess)
    # exact accounting: every published token was either received or counted lost
    assert s["lost_tokens"] > 0
    assert s["duplicated_tokens"] == 0
    assert s["total_tokens"] + s["lost_tokens"] == published
    q = rows(out / "queries.csv")
    assert sum(int(x["lost"]) for x in q) == s["lost_tokens"]
    assert all(int(x["tokens"]) + int(x["lost"]) == int(x["expected_tokens"]) for x in q)
    # queries that lost their done failed with a clear error, the others completed
    for x in q:
        if x["status"] == "timeout":
            assert "no done message within 4s" in x["error"]
        else:
            assert x["status"] in ("ok", "lost_tokens")
    assert any(x["status"] == "ok" for x in q)  # the stream resumed


def test_server_stall_shows_in_open_model_percentiles(stack: Stack, tmp_path: Path):
    out = tmp_path / "run"
    stall = 1.0
    with started_client(
        client_argv(
            stack,
            out,
            "--arrival-rate",
            "20",
            "--duration",
            "3",
            "--queries",
            "1",
            "--max-tokens",
            "5",
            "--processes",
            "1",
            "--status-interval",
            "0.1",
        ),
    ) as proc:
        wait_for_status(out, lambda st: st["queries_ok"] >= 10, proc)
        os.killpg(stack.sim.pid, signal.SIGSTOP)  # our own simulator (its own process group)
        try:
            time.sleep(stall)  # the stall itself
        finally:
            os.killpg(stack.sim.pid, signal.SIGCONT)
        stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr[-3000:]
    s = json.loads((out / "summary.json").read_text())
    assert s["model"] == "open" and s["total_sessions"] == 60 and s["successful_queries"] == 60
    assert s["latency_ms"]["p99"] > stall * 1000
    q = rows(out / "queries.csv")
    slow_intended = sum(float(x["latency_ms"]) > 500 for x in q)
    slow_service = sum(float(x["service_latency_ms"]) > 500 for x in q)
    # sessions that arrived during the stall waited: only timing from the intended start shows it
    assert slow_intended >= 5
    assert slow_service < slow_intended


def test_max_duration_cancels_running_sessions_and_counts_them(stack_factory, tmp_path: Path):
    stack = stack_factory(sim_env={"TOKEN_DELAY_MS": 100})
    out = tmp_path / "run"
    t = time.monotonic()
    r, s = run_client(
        stack, out, "--clients", "4", "--queries", "5", "--processes", "1", "--max-duration", "1", rc=1
    )  # no session succeeded: failed
    assert time.monotonic() - t < 30
    assert s["cancelled_sessions"] == 4 and s["successful_sessions"] == 0 and s["status"] == "failed"
    assert s["query_statuses"].get("cancelled") == 4
    assert all(x["status"] == "cancelled" for x in rows(out / "sessions.csv"))


def test_bad_token_is_refused_without_retry_and_reported(stack: Stack, tmp_path: Path):
    # a wsproxy with another secret refuses every token with 401: no reconnect storm, a clear error
    ws2, port2 = start_wsproxy(tmp_path / "ws2", redis_url=stack.redis.url, jwt_secret="x" * 48)
    try:
        out = tmp_path / "run"
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "kit.client",
                "--api-url",
                stack.api_url,
                "--ws-url",
                f"ws://127.0.0.1:{port2}",
                "--clients",
                "2",
                "--queries",
                "1",
                "--processes",
                "1",
                "--output-dir",
                str(out),
                "--quiet",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        ws2.stop()
    assert r.returncode == 1, r.stderr  # every session failed: the run failed
    s = json.loads((out / "summary.json").read_text())
    assert s["failed_sessions"] == 2 and s["errors"].get("connect_http_401") == 2 and s["status"] == "failed"
    assert s["total_reconnect_attempts"] == 0
    assert "HTTP 401" in rows(out / "sessions.csv")[0]["errors"]


@pytest.mark.parametrize(
    "args, env, needle",
    [
        (["--clients", "abc"], {}, "--clients 'abc' is not a whole number"),
        (["--ramp", "-1"], {}, "--ramp -1 is below 0"),
        ([], {"CLIENTS": "many"}, "CLIENTS='many' is not a whole number"),
        ([], {"WS_INITIAL_BACKOFF_SECONDS": "5", "WS_MAX_BACKOFF_SECONDS": "1"}, "raise the cap"),
        (["--initial-backoff", "3", "--max-backoff", "2"], {}, "--max-backoff / WS_MAX_BACKOFF_SECONDS = 2 is below"),
        (["--arrival-rate", "5"], {}, "--arrival-rate and --duration go together"),
        (
            ["--api-url", "localhost:8000"],
            {},
            "--api-url / FASTAPI_URL = 'localhost:8000' is not a http:// or https:// URL",
        ),
        (["--api-url", "http://127.0.0.1:{port}"], {}, "cannot reach it"),
    ],
)
def test_bad_configuration_is_one_clear_line_and_exit_2(args, env, needle, tmp_path: Path):
    args = [a.replace("{port}", str(free_port())) for a in args]
    full_env = {k: v for k, v in os.environ.items() if k not in ("CLIENTS", "FASTAPI_URL", "API_URL", "WSPROXY_URL")}
    full_env.update(env)
    r = subprocess.run(
        [sys.executable, "-m", "kit.client", "--output-dir", str(tmp_path / "o"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=full_env,
    )
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert needle in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_unreachable_ws_url_is_refused_before_the_load(stack: Stack, tmp_path: Path):
    before = sim_stats(stack)["sessions_created"]
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "kit.client",
            "--api-url",
            stack.api_url,
            "--ws-url",
            f"ws://127.0.0.1:{free_port()}",
            "--output-dir",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and "--ws-url / WSPROXY_URL" in r.stderr and "cannot reach it" in r.stderr
    assert "Traceback" not in r.stderr
    assert sim_stats(stack)["sessions_created"] == before  # nothing was started


def test_analyze_and_merge_commands(stack: Stack, tmp_path: Path):
    a, b = tmp_path / "a", tmp_path / "b"
    run_client(stack, a, "--clients", "3", "--queries", "2", "--processes", "1", "--max-tokens", "5")
    run_client(stack, b, "--clients", "2", "--queries", "2", "--processes", "1", "--max-tokens", "5")
    m = subprocess.run(
        [sys.executable, "-m", "kit.client", "merge", str(tmp_path / "m"), str(a), str(b)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert m.returncode == 0, m.stderr
    merged = json.loads((tmp_path / "m" / "summary.json").read_text())
    assert merged["total_sessions"] == 5 and merged["total_queries"] == 10 and merged["total_tokens"] == 50
    an = subprocess.run(
        [sys.executable, "-m", "kit.client", "analyze", str(a), str(b / "queries.csv")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert an.returncode == 0, an.stderr
    assert "Queries: 10" in an.stdout and "p99" in an.stdout and "Latency histogram" in an.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "kit.client", "analyze", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "does not exist" in bad.stderr and "Traceback" not in bad.stderr


def test_start_at_waits_for_the_agreed_instant_and_records_the_skew(stack: Stack, tmp_path: Path):
    out = tmp_path / "run"
    start_at = time.time() + 5.0  # beyond the two processes' start-up, on a busy machine too (2 s was not)
    r, s = run_client(
        stack,
        out,
        "--clients",
        "2",
        "--queries",
        "1",
        "--processes",
        "2",
        "--max-tokens",
        "3",
        "--start-at",
        repr(start_at),
        "--status-interval",
        "0.2",
    )
    assert s["started_at"] >= start_at
    assert len(s["start_skew_s"]["per_process"]) == 2
    assert 0 <= s["start_skew_s"]["max_abs"] < 0.5
    status = json.loads((out / "status.json").read_text())
    assert status["done"] is True and status["queries_ok"] == 2 and len(status["processes"]) == 2


def test_thousands_of_sessions_share_a_few_http_connections_and_the_wait_is_recorded(stack: Stack, tmp_path: Path):
    """2,000 sessions in one process over 4 keep-alive connections: every request made and answered,
    the connections reused, and the time requests queued for a connection recorded apart."""
    out = tmp_path / "many"
    before = sim_stats(stack)
    _, s = run_client(
        stack,
        out,
        "--clients",
        "2000",
        "--queries",
        "1",
        "--ramp",
        "1000",
        "--processes",
        "1",
        "--max-tokens",
        "2",
        "--http-connections",
        "4",
        timeout=170,
    )
    after = sim_stats(stack)
    assert s["total_sessions"] == 2000 and s["success_rate"] == 100.0 and s["lost_tokens"] == 0
    http = s["http"]
    assert http["http_requests"] == 2000 * 3  # create, run, close
    assert after["sessions_created"] - before["sessions_created"] == 2000
    assert after["sessions_closed"] - before["sessions_closed"] == 2000
    assert http["http_connections_opened"] <= 4 + http["http_stale_discarded"] + http["http_retries"]
    assert http["http_connections_reused"] >= 2000 * 3 - 20
    # at 1,000 sessions/s four connections are not enough: requests queue, and it shows
    assert http["http_requests_waited"] > 0
    assert s["http_pool_wait_ms"]["count"] == 2000 * 3 and s["http_pool_wait_ms"]["max"] > 0


# -- the run's verdict and exit status; OUTPUT_DIR never overwritten -----------------------------------


@pytest.fixture
def refusing_ws(stack: Stack, tmp_path: Path):
    """A wsproxy with another JWT secret: every session's WebSocket gets 401, so every session fails."""
    ws, port = start_wsproxy(tmp_path / "refusing", redis_url=stack.redis.url, jwt_secret="r" * 48)
    yield f"ws://127.0.0.1:{port}"
    ws.stop()


@pytest.mark.parametrize("processes", ["1", "2"])
def test_run_in_which_every_session_failed_exits_1_with_status_failed(
    stack: Stack, refusing_ws: str, tmp_path: Path, processes: str
):
    r, s = run_client(
        stack, tmp_path / "run", "--ws-url", refusing_ws, "--clients", "2", "--queries", "1",
        "--processes", processes, timeout=60, rc=1,
    )  # fmt: skip
    assert s["status"] == "failed" and s["successful_sessions"] == 0 and s["failed_sessions"] == 2
    assert "run failed: no session succeeded" in r.stderr
    assert "Status:                 FAILED" in r.stdout


def test_exit_zero_on_failure_keeps_the_verdict_in_summary_json(stack: Stack, refusing_ws: str, tmp_path: Path):
    _, s = run_client(
        stack, tmp_path / "run", "--ws-url", refusing_ws, "--clients", "2", "--queries", "1",
        "--processes", "2", "--exit-zero-on-failure", timeout=60,
    )  # fmt: skip
    assert s["status"] == "failed"


def test_run_cut_short_by_max_duration_exits_3_with_status_partial(stack: Stack, tmp_path: Path):
    """Sessions start one a second; the first ones finish in milliseconds, the last never start."""
    out = tmp_path / "run"
    r, s = run_client(
        stack,
        out,
        "--clients",
        "6",
        "--queries",
        "1",
        "--ramp",
        "1",
        "--processes",
        "1",
        "--max-tokens",
        "3",
        "--max-duration",
        "3",
        rc=3,
    )
    assert s["status"] == "partial" and s["successful_sessions"] >= 2
    assert "--max-duration reached" in s["status_reason"]
    assert "run partial" in r.stderr


def test_run_in_which_every_session_succeeded_has_status_passed(stack: Stack, tmp_path: Path):
    r, s = run_client(
        stack, tmp_path / "run", "--clients", "2", "--queries", "1", "--processes", "1", "--max-tokens", "3"
    )
    assert s["status"] == "passed" and s["status_reason"] == "all 2 sessions succeeded"
    assert "run passed" not in r.stderr and "Status:                 PASSED" in r.stdout


@pytest.mark.parametrize("kind", ["under_a_file", "in_dev_null"])
def test_output_dir_that_cannot_be_created_is_one_line_and_exit_2(stack: Stack, tmp_path: Path, kind: str):
    if kind == "under_a_file":
        (tmp_path / "file").write_text("x")
        bad = tmp_path / "file" / "results"
    else:
        bad = Path("/dev/null/results")
    before = sim_stats(stack)["sessions_created"]
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "kit.client",
            "--api-url",
            stack.api_url,
            "--ws-url",
            stack.ws_url,
            "--clients",
            "1",
            "--queries",
            "1",
            "--output-dir",
            str(bad),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert str(bad) in r.stderr and "cannot create it" in r.stderr and "--output-dir" in r.stderr
    assert sim_stats(stack)["sessions_created"] == before  # nothing was run


def test_two_runs_into_one_output_dir_keep_both(stack: Stack, tmp_path: Path):
    out = tmp_path / "loadtest_results"
    r1, s1 = run_client(stack, out, "--clients", "2", "--queries", "1", "--processes", "1", "--max-tokens", "3")
    first = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    r2, _ = run_client(stack, out, "--clients", "3", "--queries", "1", "--processes", "2", "--max-tokens", "3")
    r3, _ = run_client(stack, out, "--clients", "1", "--queries", "1", "--processes", "1", "--max-tokens", "3")
    s2, s3 = (
        json.loads((Path(r.stderr.split("results: ")[1].splitlines()[0]) / "summary.json").read_text())
        for r in (r2, r3)
    )
    # the first run's files are untouched; each later one has its own run-id folder, named in stderr
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == first
    assert s1["total_sessions"] == 2
    later = sorted(p for p in out.iterdir() if p.is_dir())
    assert [p.name for p in later] == sorted([s2["run_id"], s3["run_id"]])
    assert json.loads((out / s2["run_id"] / "summary.json").read_text())["total_sessions"] == 3
    assert json.loads((out / s3["run_id"] / "summary.json").read_text())["total_sessions"] == 1
    assert len(rows(out / s2["run_id"] / "queries.csv")) == 3 and len(rows(out / "queries.csv")) == 2
    assert (out / s2["run_id"] / "proc-1" / "summary.json").exists()
    assert f"holds an earlier run: this one goes to {out / s2['run_id']}" in r2.stderr
    assert f"results: {out / s3['run_id']}" in r3.stderr
    assert json.loads((out / s3["run_id"] / "meta.json").read_text())["run_id"] == s3["run_id"]


@pytest.mark.parametrize(
    "how, sig, code",
    [
        ("one process, Ctrl-C", signal.SIGINT, 130),
        ("two processes, fab's stop of the group", signal.SIGTERM, 143),
        # the parent forwards fab's SIGTERM to its children: one that arrived while a child wrote its files
        # killed it between two of them (CI, 2026-12-05); here the children get SIGTERM after SIGTERM
        ("two processes, fab's stop, then SIGTERM again while they write", signal.SIGTERM, 143),
    ],
)
def test_an_interrupted_run_still_writes_what_it_measured(stack: Stack, tmp_path: Path, how, sig, code):
    """SIGINT/SIGTERM cancel the running sessions; the results are written (partial, interrupted) and
    the exit status says how the run ended, so `fab run` collects something after Ctrl-C."""
    out = tmp_path / "run"
    procs = "2" if "two" in how else "1"
    with started_client(
        client_argv(
            stack,
            out,
            "--clients",
            "8",
            "--queries",
            "50",
            "--max-tokens",
            "5",
            "--processes",
            procs,
            "--think-time",
            "0.2",
            "--status-interval",
            "0.1",
        ),
        own_group=True,
    ) as proc:
        wait_for_status(out, lambda st: st.get("queries_ok", 0) >= 8 and st["active_sessions"] == 8, proc)
        if procs == "2":
            children = [json.loads((out / f"proc-{i}" / "status.json").read_text())["pid"] for i in range(2)]
            os.killpg(proc.pid, sig)  # what fab run's stop_job does: the whole process group
            if "again" in how:
                _signal_until_gone(children, sig, deadline=time.monotonic() + 30)
        else:
            proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    s = json.loads((out / "summary.json").read_text())
    # every session was cut short, so none succeeded: the verdict is failed, and it says why
    assert s["status"] == "failed" and s["interrupted"] == [sig.name] and "interrupted" in s["status_reason"]
    assert s["total_sessions"] == 8 and s["cancelled_sessions"] == 8
    assert s["successful_queries"] >= 8
    q = rows(out / "queries.csv")
    assert sum(1 for r in q if r["status"] == "ok") == s["successful_queries"]
    if procs == "2":  # both children's results are in, none lost to a late signal
        assert all((out / f"proc-{i}" / "histograms.json").exists() for i in range(2))


def test_a_stop_signal_before_the_start_is_kept_and_ends_the_run_at_its_start(stack: Stack, tmp_path: Path):
    """A SIGTERM while the process still waits for --start-at neither kills it (results lost) nor is lost (the
    whole run played): the run stops where its sessions would begin and writes its results, interrupted."""
    out = tmp_path / "run"
    before = sim_stats(stack)["sessions_created"]
    start_at = time.time() + 8
    with started_client(
        client_argv(stack, out, "--clients", "4", "--queries", "2", "--processes", "1", "--start-at", repr(start_at))
    ) as proc:
        deadline = time.monotonic() + 30
        while not _catches(proc.pid, signal.SIGTERM):  # the kit's handler is in: SIGTERM no longer kills it
            assert proc.poll() is None and time.monotonic() < deadline, "the client never caught SIGTERM"
            time.sleep(0.01)
        assert time.time() < start_at - 1, "too slow a start to test the wait before --start-at"
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    s = json.loads((out / "summary.json").read_text())
    assert s["interrupted"] == ["SIGTERM"] and s["successful_queries"] == 0, s
    assert s["cancelled_sessions"] == s["total_sessions"], s  # each cancelled as it began
    assert sim_stats(stack)["sessions_created"] == before


def _catches(pid: int, sig: signal.Signals) -> bool:
    """Whether process *pid* has a handler for *sig* (its SigCgt mask in /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    return False


def _signal_until_gone(pids: list[int], sig: signal.Signals, deadline: float) -> None:
    """Send *sig* to each of *pids* every millisecond until they have all exited (or *deadline*)."""
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        for pid in list(alive):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                alive.remove(pid)
        time.sleep(0.001)  # a pace for the signals, not a wait for readiness


class _RefuseFirst:
    """A TCP relay to *target* that closes the first *refuse* connections at once and forwards the rest.

    Started and stopped by the test (a thread with its own event loop); every socket it opened is closed by stop().
    """

    def __init__(self, target_port: int, refuse: int) -> None:
        import asyncio
        import threading

        self.target_port, self.left, self.port = target_port, refuse, free_port()
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._main, daemon=True)
        self.thread.start()
        assert self.ready.wait(10), "relay did not start"

    def _main(self) -> None:
        import asyncio

        async def pipe(reader, writer) -> None:
            try:
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            except OSError:
                pass
            finally:
                writer.close()

        async def handle(reader, writer) -> None:
            if self.left > 0:
                self.left -= 1
                writer.transport.abort()
                return
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target_port)
            await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))

        async def serve() -> None:
            self.server = await asyncio.start_server(handle, "127.0.0.1", self.port)
            self.ready.set()

        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(serve())
            self.loop.run_forever()
            self.server.close()
            tasks = asyncio.all_tasks(self.loop)
            for t in tasks:
                t.cancel()
            self.loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        finally:
            self.loop.close()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def test_a_session_whose_first_connect_needed_retries_still_succeeds_and_the_tries_are_counted(
    stack: Stack, tmp_path: Path
):
    # three refusals: the client's reachability probe before the load may take one of them
    relay = _RefuseFirst(int(stack.ws_url.rsplit(":", 1)[1]), refuse=3)
    try:
        out = tmp_path / "run"
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "kit.client",
                "--api-url",
                stack.api_url,
                "--ws-url",
                f"ws://127.0.0.1:{relay.port}",
                "--clients",
                "1",
                "--queries",
                "1",
                "--processes",
                "1",
                "--max-tokens",
                "3",
                "--initial-backoff",
                "0.1",
                "--output-dir",
                str(out),
                "--quiet",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        relay.stop()
    assert r.returncode == 0, r.stderr
    s = json.loads((out / "summary.json").read_text())
    assert s["success_rate"] == 100.0 and s["status"] == "passed"
    (row,) = rows(out / "sessions.csv")
    tries = int(row["connect_attempts"])
    assert row["status"] == "ok" and row["errors"] == "" and tries >= 3
    assert s["total_reconnect_attempts"] == tries - 1  # the failed tries stay counted, as kinds too
    assert sum(n for k, n in s["errors"].items() if k.startswith("connect_")) == tries - 1, s["errors"]
