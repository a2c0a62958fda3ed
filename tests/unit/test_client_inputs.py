"""Every malformed option, URL, workload file and merge/analyze input of ``python -m kit.client`` is one line
on stderr naming what was wrong, exit 2, never a traceback; URL credentials are never written or printed;
``--clients`` is bounded and the start schedule is lazy.

The CLI cases run the real command as subprocesses, all at once (one fixture), so the file stays fast.
"""

from __future__ import annotations

import copy
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kit.client.__main__ import max_sessions
from kit.client._accounting import Recorder
from kit.client._http import mask_url
from kit.client._load import schedule, scheduled_sessions
from kit.client._output import merge_outputs, write_outputs
from kit.client._workload import WorkloadError, load_workload

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]
#: no service listens on port 1: a run that got past validation would fail fast, never hang
DEAD_API, DEAD_WS = "http://127.0.0.1:1", "ws://127.0.0.1:1"
PASSWORD = "s3cr3tPW"


def _files(d: Path) -> dict[str, bytes | str]:
    """The input files the cases refer to (by name; bytes are written as they are)."""
    sessions_header = (
        "session_index,session_id,intended_at,started_at,create_ms,connect_ms,tcp_ms,tls_ms,upgrade_ms,"
        "connect_attempts,reconnect_attempts,reconnects_ok,queries_ok,queries_failed,queries_skipped,"
        "tokens,status,errors\n"
    )
    queries_header = (
        "session_id,query_index,query_id,intended_at,submit_at,ttft_ms,latency_ms,service_latency_ms,"
        "expected_tokens,tokens,lost,duplicated,out_of_order,status,error\n"
    )
    return {
        "huge-int.yml": "classes:\n  a: {weight: 1, tokens: 1" + "0" * 400 + "}\n",
        "69-days.yml": "classes:\n  ok: {weight: 1}\n  long: {weight: 1, tokens: 100000, token_delay_ms: 60000}\n",
        "latin1.yml": "classes:\n  caf\xe9: {weight: 1}\n".encode("latin-1"),
        "binary.yml": bytes(range(256)) * 4,
        "empty.yml": "",
        "dup-class.yml": "classes:\n  short: {weight: 1, tokens: 5}\n  short: {weight: 2, tokens: 50}\n",
        "dup-class.json": '{"classes": {"short": {"weight": 1}, "short": {"weight": 2}}}',
        "nan-inf.yml": "classes:\n  a: {weight: .nan, ttft_ms: .inf, think_time_s: -1}\n",
        "list-state/histograms.json": "[]",
        "binary-state/histograms.json": bytes(range(256)),
        "null-hist-state/histograms.json": json.dumps(
            {"version": 1, "histograms": {"latency": None}, "counters": {}, "runs": []}
        ),
        "out-file": "not a folder",
        "other.csv": "a,b\n1,2\n",
        "sessions.csv": sessions_header + "0,s0,1,1,1,1,1,0,1,1,0,0,1,0,0,5,ok,\n",
        "nan.csv": queries_header + "s0,0,q0,1,1,nan,5,5,5,5,0,0,0,ok,\n",
        "short-row.csv": queries_header + "s0,0,q0\n",
        "binary.csv": bytes(range(256)) * 4,
    }


#: (case id, argv after ``python -m kit.client`` with {d} the inputs' folder, env overrides, what stderr must say)
CASES = [
    ("ipv6-unclosed", ["--api-url", "http://[::1"], {}, "--api-url / FASTAPI_URL = 'http://[::1' is not a valid URL"),
    ("port-out-of-range", ["--api-url", "http://h:99999"], {}, "has a bad port"),
    ("port-not-a-number", ["--api-url", f"http://u:{PASSWORD}@h:x"], {}, "has a bad port"),
    ("password-with-a-slash", ["--api-url", f"http://u:{PASSWORD}/x@h"], {}, "'http://u:***@h' has a bad port"),
    ("wrong-scheme", ["--ws-url", "http://127.0.0.1:1"], {}, "is not a ws:// or wss:// URL"),
    (
        "credentials-in-preflight-error",
        ["--api-url", f"http://user:{PASSWORD}@127.0.0.1:1"],
        {"preflight": True},
        "http://user:***@127.0.0.1:1: cannot reach it",
    ),
    (
        "clients-a-billion",
        ["--clients", "1000000000"],
        {},
        f"--clients / CLIENTS = 1000000000 is above {max_sessions()}",
    ),
    ("clients-400-digits", ["--clients", "1" + "0" * 400], {}, "is above"),
    ("clients-from-env", [], {"CLIENTS": "5000000"}, "--clients / CLIENTS = 5000000 is above"),
    ("clients-negative", ["--clients", "-5"], {}, "--clients -5 is below 1"),
    ("ramp-inf", ["--ramp", "inf"], {}, "--ramp 'inf' is not finite"),
    ("tokens-huge", ["--tokens", "1" + "0" * 400], {}, "is out of range"),
    ("token-delay-1e400", ["--token-delay", "1e400"], {}, "--token-delay '1e400' is not finite"),
    ("open-model-overflow", ["--arrival-rate", "1e300", "--duration", "1e300"], {}, "starts more than"),
    ("processes-huge", ["--processes", "100000"], {}, "--processes 100000 is above"),
    ("start-at-milliseconds", ["--start-at", "1700000000000"], {}, "more than a day ahead"),
    ("unknown-option", ["--colour", "red"], {}, "unrecognized arguments: --colour red"),
    ("workload-huge-int", ["--workload", "{d}/huge-int.yml"], {}, "tokens: 10000000...(401 chars) is out of range"),
    ("source-address-not-ip", ["--source-addresses", "10.0.0.1,nope"], {}, "'nope' is not an IP address"),
    (
        "query-of-69-days",
        ["--tokens", "100000", "--token-delay", "60000", "--ttft", "600000"],
        {},
        "the query would last 69.5 days",
    ),
    ("workload-class-of-69-days", ["--workload", "{d}/69-days.yml"], {}, "class long: the query would last"),
    ("workload-not-utf8", ["--workload", "{d}/latin1.yml"], {}, "not UTF-8 text"),
    ("workload-binary", ["--workload", "{d}/binary.yml"], {}, "not UTF-8 text"),
    ("workload-empty", ["--workload", "{d}/empty.yml"], {}, "must be a mapping with 'classes'"),
    ("workload-folder", ["--workload", "{d}"], {}, "cannot read it (it is a folder)"),
    ("workload-device", ["--workload", "/dev/zero"], {}, "cannot read it (not a regular file)"),
    (
        "workload-duplicate-class-yaml",
        ["--workload", "{d}/dup-class.yml"],
        {},
        "dup-class.yml: not valid YAML at line 3: key 'short' is given twice",
    ),
    (
        "workload-duplicate-class-json",
        ["--workload", "{d}/dup-class.json"],
        {},
        "dup-class.json: not valid YAML at line 1: key 'short' is given twice",
    ),
    (
        "workload-nan-inf-negative",
        ["--workload", "{d}/nan-inf.yml"],
        {},
        "ttft_ms: inf is not a number (ms to the first token); ",
    ),
    ("merge-state-is-a-list", ["merge", "{d}/out", "{d}/list-state"], {}, "list-state/histograms.json: a JSON list"),
    ("merge-state-binary", ["merge", "{d}/out", "{d}/binary-state"], {}, "is not valid JSON"),
    ("merge-state-null-histogram", ["merge", "{d}/out", "{d}/null-hist-state"], {}, "a histogram is a JSON object"),
    ("merge-input-missing", ["merge", "{d}/out", "{d}/nope"], {}, "nope/histograms.json does not exist"),
    ("merge-input-a-file", ["merge", "{d}/out", "{d}/other.csv"], {}, "other.csv is not a folder"),
    ("merge-out-a-file", ["merge", "{d}/out-file", "{d}/list-state"], {}, "list-state/histograms.json"),
    (
        "analyze-unrelated-csv",
        ["analyze", "{d}/other.csv"],
        {},
        "other.csv: not a queries.csv of `python -m "
        "kit.client` (header: a,b): expected the columns session_id, latency_ms",
    ),
    ("analyze-sessions-csv", ["analyze", "{d}/sessions.csv"], {}, "a sessions.csv (one row per session)"),
    ("analyze-nan-value", ["analyze", "{d}/nan.csv"], {}, "nan.csv: line 2: ttft_ms 'nan' is not a finite number"),
    ("analyze-short-row", ["analyze", "{d}/short-row.csv"], {}, "line 2 has more or fewer cells than the header"),
    ("analyze-binary", ["analyze", "{d}/binary.csv"], {}, "binary.csv: "),
    ("analyze-device", ["analyze", "/dev/null"], {}, "/dev/null is not a regular file"),
]


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, tuple[subprocess.CompletedProcess, float]]:
    """Every case of CASES run at once: case id -> (its finished process, seconds it took)."""
    d = tmp_path_factory.mktemp("inputs")
    for name, content in _files(d).items():
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    assert len({c[0] for c in CASES}) == len(CASES), "case ids must be unique"
    procs = {}
    for case, argv, env, _ in CASES:
        argv = [a.replace("{d}", str(d)) for a in argv]
        if argv[:1] not in (["merge"], ["analyze"]):
            out = d / "runs" / case
            argv = [
                "--api-url",
                DEAD_API,
                "--ws-url",
                DEAD_WS,
                "--output-dir",
                str(out),
                "--quiet",
                "--max-duration",
                "5",
                *([] if env.get("preflight") else ["--no-preflight"]),
                *argv,
            ]
        full_env = {**os.environ, **{k: v for k, v in env.items() if k.isupper()}}
        procs[case] = (
            subprocess.Popen(
                [sys.executable, "-m", "kit.client", *argv],
                cwd=ROOT,
                env=full_env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                errors="replace",
            ),
            time.monotonic(),
        )
    done = {}
    for case, (p, t0) in procs.items():
        try:
            out, err = p.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
        done[case] = (subprocess.CompletedProcess(p.args, p.returncode, out, err), time.monotonic() - t0)
    return done


@pytest.mark.parametrize("case, argv, env, says", CASES, ids=[c[0] for c in CASES])
def test_a_malformed_input_is_one_line_naming_it_and_exit_2(results, case, argv, env, says):
    r, _ = results[case]
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    assert len(lines) == 1, r.stderr[-2000:]
    assert lines[0].startswith("python -m kit.client: error: "), lines[0]
    assert says in lines[0], lines[0]
    assert PASSWORD not in r.stderr + r.stdout


def test_a_billion_clients_are_refused_at_once(results):
    r, took = results["clients-a-billion"]
    assert r.returncode == 2 and took < 30, (took, r.stderr)


def test_a_missing_merge_input_is_said_once(results):
    r, _ = results["merge-input-missing"]
    assert r.stderr.strip().endswith("does not exist: pass a folder written by `python -m kit.client`"), r.stderr


def test_credentials_in_urls_are_never_written(tmp_path):
    """A run (two processes: the children's settings file too) with credentials in both URLs: no file of
    its results holds the password; meta.json shows the URLs masked."""
    out = tmp_path / "run"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "kit.client",
            "--api-url",
            f"http://user:{PASSWORD}@127.0.0.1:1",
            f"--ws-url=ws://{PASSWORD}@127.0.0.1:1",
            "--no-preflight",
            "--clients",
            "2",
            "--processes",
            "2",
            "--output-dir",
            str(out),
            "--quiet",
            "--max-duration",
            "20",
            "--exit-zero-on-failure",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert PASSWORD not in r.stderr + r.stdout
    written = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.name == "client-settings.json" for p in written)
    assert [p for p in written if PASSWORD.encode() in p.read_bytes()] == []
    meta = json.loads((out / "meta.json").read_text())
    assert meta["config"]["api_url"] == "http://user:***@127.0.0.1:1"
    assert meta["config"]["ws_url"] == "ws://***@127.0.0.1:1"
    assert "http://user:***@127.0.0.1:1" in meta["argv"] and "--ws-url=ws://***@127.0.0.1:1" in meta["argv"]


@pytest.mark.parametrize(
    "text, masked",
    [
        ("http://user:pw@host", "http://user:***@host"),
        ("https://user:p@ss@host:8443/x?y=a@b", "https://user:***@host:8443/x?y=a@b"),  # the authority's last @
        ("wss://TOKEN@host/ws", "wss://***@host/ws"),  # a bare userinfo is often a token
        ("http://host/path@x", "http://host/path@x"),  # an @ in the path is not a userinfo
        ("--api-url=http://u:pw@h", "--api-url=http://u:***@h"),
        ("cannot reach http://a:b@c or ws://d:e@f/", "cannot reach http://a:***@c or ws://d:***@f/"),
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
    ],
)
def test_mask_url_hides_every_urls_credentials(text, masked):
    assert mask_url(text) == masked


def test_a_workload_nested_too_deeply_is_one_line(tmp_path):
    p = tmp_path / "deep.yml"
    p.write_text("[" * 1000 + "]" * 1000)
    with pytest.raises(WorkloadError) as info:
        load_workload(p)
    assert str(info.value).startswith(f"{p}: ") and "\n" not in str(info.value)


def test_the_schedule_is_lazy_and_its_length_is_known_without_walking_it():
    plan = schedule(10**12, 100.0, 3, 4)
    assert not isinstance(plan, list)
    assert next(plan) == (3, 0.03) and next(plan) == (7, 0.07)
    assert scheduled_sessions(10**12, 3, 4) == 250_000_000_000
    for total in range(0, 9):
        for processes in range(1, 4):
            for index in range(processes):
                assert scheduled_sessions(total, index, processes) == len(list(schedule(total, 0, index, processes)))


def test_merge_refuses_any_damage_to_a_state_with_a_value_error_and_writes_nothing(tmp_path):
    """Every value of a real histograms.json replaced by a wrong one (or deleted), one at a time: merge
    raises ValueError (the CLI's one line), never another exception, and leaves OUT_DIR unwritten."""
    rec = Recorder()
    for name in ("latency", "ttft", "delivery", "loop_lag"):
        rec.hists[name].record_many([900, 1200, 250_000])
    rec.counters["sessions_finished"] += 1
    rec.errors["query_timeout"] += 1
    rec.sample_timeline(1000)
    run = {
        "host": "h",
        "pid": 1,
        "start": 100.0,
        "end": 160.0,
        "start_skew_s": 0.001,
        "cpu_percent_peak": 10.0,
        "cpu_percent_mean": 10.0,
        "generator_overloaded": False,
        "overload_reason": "",
        "reconnect_limit": {"rate": 50.0, "burst": 10},
    }
    workload = {
        "source": None,
        "seed": 1,
        "classes": {
            "default": {"weight": 1.0, "overrides": {}, "sessions": 4, "requested": {"tokens": 1}, "echo": None}
        },
    }
    write_outputs(tmp_path / "good", rec, run, {}, run_id="r", model="closed", workload=workload)
    good = json.loads((tmp_path / "good" / "histograms.json").read_text())
    assert merge_outputs([tmp_path / "good"], tmp_path / "good-merged")["total_sessions"] == 1

    def paths(o, p=()):
        yield p
        children = o.items() if isinstance(o, dict) else enumerate(o[:2]) if isinstance(o, list) else ()
        for k, v in children:
            yield from paths(v, (*p, k))

    rng = random.Random(16)
    wrong = [None, [], {}, "x", -1, 10**400, 1.5, True, [[1, 1]], float("nan"), "DELETE"]
    bad, out = tmp_path / "bad", tmp_path / "out"
    bad.mkdir()
    tried = 0
    for p in paths(good):
        for value in rng.sample(wrong, 3):
            state = copy.deepcopy(good)
            if not p:
                state = None if value == "DELETE" else value
            else:
                parent = state
                for k in p[:-1]:
                    parent = parent[k]
                if value == "DELETE":
                    parent.pop(p[-1])
                else:
                    parent[p[-1]] = value
            (bad / "histograms.json").write_text(json.dumps(state))
            tried += 1
            try:
                merge_outputs([bad], out)
            except ValueError:
                assert not out.exists(), f"{p} = {value!r}: merge wrote before failing"
            else:
                shutil.rmtree(out)  # the damage was harmless (e.g. a float where an int is fine)
    assert tried > 500


def test_meta_argv_hides_secrets_but_keeps_the_workload_numbers():
    from kit.client.__main__ import _safe_argv

    argv = [
        "--tokens",
        "40",
        "--token-delay=30",
        "--token-jitter",
        "5",
        "--jwt-secret",
        "s3cr3t",
        "--auth-token=abc",
        "--api-url",
        "http://u:pw@h:1",
    ]
    assert _safe_argv(argv) == [
        "--tokens",
        "40",
        "--token-delay=30",
        "--token-jitter",
        "5",
        "--jwt-secret",
        "***",
        "--auth-token=***",
        "--api-url",
        "http://u:***@h:1",
    ]
