"""kit.hostmon: bounded per-second host samples as JSON lines."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest


@pytest.mark.timeout(30)
def test_hostmon_writes_one_sample_per_interval_and_stops_by_itself(tmp_path):
    out = tmp_path / "host.jsonl"
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "kit.hostmon", str(out), "--interval", "0.2", "--duration", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # CPU for the samples to see: on a quiet machine hostmon's own reads can fall between the kernel's
        # ticks in every interval (its start-up is before its first reading)
        while time.monotonic() - t0 < 1.5 and proc.poll() is None:
            sum(range(10_000))
        _, stderr = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    elapsed = time.monotonic() - t0
    assert proc.returncode == 0, stderr
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == 5
    assert elapsed < 10
    first = lines[0]
    assert 0 <= first["cpu_percent"] <= 100
    assert first["mem"]["total"] > first["mem"]["available"] > 0
    assert first["sockstat"]["tcp_inuse"] >= 0 and first["sockstat"]["tcp_mem_bytes"] >= 0
    assert "lo" in first["net"] and "rx_bytes_per_s" in first["net"]["lo"]
    assert [round(x["t"], 1) for x in lines] == [0.2, 0.4, 0.6, 0.8, 1.0]
    split = first["cpu_split"]  # where the host's CPU went: every kind but idle, in percent of all CPUs
    assert {"user", "system", "softirq", "iowait", "steal"} <= set(split) and "idle" not in split
    assert all(0 <= v <= 100 for v in split.values()) and sum(split.values()) <= 100.5
    assert any(x["cpu_split"]["user"] > 0 for x in lines)  # the test's own loop at least
    own = [x["monitor_cpu_s"] for x in lines]  # the monitor's own CPU: started Python at least, never falls
    assert own[0] > 0 and own == sorted(own)


@pytest.mark.timeout(30)
def test_hostmon_stops_early_on_sigterm_keeping_what_it_measured(tmp_path):
    out = tmp_path / "host.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "kit.hostmon", str(out), "--interval", "0.1", "--duration", "600"])
    try:
        deadline = time.monotonic() + 15
        while (not out.exists() or len(out.read_text().splitlines()) < 2) and time.monotonic() < deadline:
            time.sleep(0.05)  # waiting for the first samples, bounded
        proc.terminate()
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert len(out.read_text().splitlines()) >= 2


@pytest.mark.parametrize(
    "args, says", [(["--duration", "0"], "--duration"), (["--duration", "5", "--interval", "0"], "--interval")]
)
def test_hostmon_bad_options_exit_2_with_one_line(tmp_path, args, says):
    res = subprocess.run(
        [sys.executable, "-m", "kit.hostmon", str(tmp_path / "x"), *args], capture_output=True, text=True, timeout=20
    )
    assert res.returncode == 2
    assert says in res.stderr and len(res.stderr.strip().splitlines()) == 1


@pytest.mark.timeout(30)
def test_hostmon_runs_as_a_lone_file_under_a_python_without_psutil_reading_proc(tmp_path):
    # fab run copies this one file to hosts without the kit and runs it with their python3
    src = Path(__file__).resolve().parents[2] / "kit" / "hostmon.py"
    lone = tmp_path / "hostmon.py"
    lone.write_text(src.read_text())
    out = tmp_path / "host.jsonl"
    res = subprocess.run(
        [
            sys.executable,
            "-S",
            "-c",
            "import sys; sys.modules['psutil'] = None; sys.argv = sys.argv[1:]; "
            "import runpy; runpy.run_path(sys.argv[0], run_name='__main__')",
            str(lone),
            str(out),
            "--interval",
            "0.2",
            "--duration",
            "0.6",
        ],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert res.returncode == 0, res.stderr
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == 3 and {x["source"] for x in lines} == {"/proc"}
    assert 0 <= lines[-1]["cpu_percent"] <= 100 and len(lines[-1]["cpu_percent_per_cpu"]) >= 1
    assert lines[-1]["mem"]["total"] > 0 and "lo" in lines[-1]["net"]


#: a parent that starts a child; each burns CPU until it has used BURN_S of its own, then reports
#: ready and waits to be stopped (so the monitor sees both alive, with a known CPU each)
_BURNER = r"""
import os, subprocess, sys
BURN_S = float(sys.argv[1])
def burn():
    while sum(os.times()[:2]) < BURN_S:
        pass
if len(sys.argv) > 2:  # the child
    burn()
    print("ready", flush=True)
    sys.stdin.read()
    sys.exit(0)
child = subprocess.Popen([sys.executable, __file__, sys.argv[1], "child"], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
burn()
assert child.stdout.readline() == "ready\n"
print(child.pid, flush=True)
sys.stdin.read()
child.stdin.close()
child.wait()
"""
HOSTMON = Path(__file__).resolve().parents[2] / "kit" / "hostmon.py"
#: runs the lone hostmon.py under a python that has no psutil, as on a host without the kit
NO_PSUTIL = [
    "-S",
    "-c",
    "import sys; sys.modules['psutil'] = None; sys.argv = sys.argv[1:]; "
    "import runpy; runpy.run_path(sys.argv[0], run_name='__main__')",
]


def _samples(out: Path) -> list[dict]:
    return [json.loads(x) for x in out.read_text().splitlines()] if out.exists() else []


@pytest.mark.timeout(60)
@pytest.mark.parametrize("without_psutil", [False, True])
def test_hostmon_procs_samples_cpu_of_each_listed_tree_and_rereads_the_file(tmp_path, without_psutil):
    script = tmp_path / "burner.py"
    script.write_text(_BURNER)
    lone = tmp_path / "hostmon.py"
    lone.write_text(HOSTMON.read_text())
    procs, out = tmp_path / "procs.txt", tmp_path / "host.jsonl"
    procs.write_text("redis 999999999\nnot a line\n")  # a vanished PID is simply absent
    with (
        subprocess.Popen(
            [sys.executable, str(script), "0.3"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        ) as burner,
        subprocess.Popen(
            [
                sys.executable,
                *(NO_PSUTIL if without_psutil else []),
                str(lone),
                str(out),
                "--interval",
                "0.1",
                "--duration",
                "30",
                "--procs",
                str(procs),
            ]
        ) as mon,
    ):
        try:
            child = int(burner.stdout.readline())  # parent and child have each burnt 0.3 s of CPU
            deadline = time.monotonic() + 20
            while not _samples(out) and time.monotonic() < deadline:
                time.sleep(0.05)  # waiting for the first sample, bounded
            assert _samples(out)[0]["procs"] == []
            with open(procs, "a") as fh:  # appended while the monitor runs, as fab run adds generators
                fh.write(f"sim {burner.pid}\n")
            while not (_samples(out)[-1]["procs"]) and time.monotonic() < deadline:
                time.sleep(0.05)  # waiting for a sample that read the appended line, bounded
            mon.terminate()
            assert mon.wait(10) == 0
        finally:
            for p in (mon, burner):
                if p.poll() is None:
                    p.kill()
    last = _samples(out)[-1]
    if without_psutil:
        assert last["source"] == "/proc"
    got = {p["pid"]: p for p in last["procs"]}
    assert set(got) == {burner.pid, child}  # the child found through its parent's PID, not its name
    for pid in (burner.pid, child):
        p = got[pid]
        assert p["component"] == "sim" and p["root"] == burner.pid
        assert 0.3 <= p["cpu_s"] <= 0.6, p
        assert p["rss_mb"] > 1 and p["fds"] >= 3 and p["threads"] >= 1
    assert got[child]["ppid"] == burner.pid and got[burner.pid]["cpu_children_s"] == 0


def test_hostmon_counts_another_process_descriptors_exactly_by_stat_and_by_listing(monkeypatch):
    """The count is the process's open descriptors, whether the kernel gives it as /proc/PID/fd's size (6.2+)
    or the directory has to be listed (older kernels, where that size is 0)."""
    import os

    from kit import hostmon

    real_stat = os.stat

    def old_kernel_stat(path, *a, **kw):
        st = real_stat(path, *a, **kw)
        if str(path).endswith("/fd"):
            return os.stat_result((*st[:6], 0, *st[7:]))  # st_size 0, as before Linux 6.2
        return st

    code = "import socket, sys\nk = [socket.socketpair() for _ in range(700)]\nprint(1, flush=True)\nsys.stdin.read()"
    with subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE) as holder:
        try:
            assert holder.stdout.readline().strip() == b"1"  # its 1,400 sockets are open
            truth = len(os.listdir(f"/proc/{holder.pid}/fd"))
            assert truth >= 1400
            by_size = hostmon._fds(holder.pid)
            with monkeypatch.context() as m:
                m.setattr(hostmon.os, "stat", old_kernel_stat)
                by_listing = hostmon._fds(holder.pid)
            assert by_size == by_listing == truth
        finally:
            holder.kill()
    assert hostmon._fds(holder.pid) is None  # gone


def test_hostmon_scrape_keeps_what_each_service_says_of_itself_every_sample(tmp_path):
    """A real HTTP server on loopback answering like a wsproxy's /stats and like HAProxy's exporter."""
    import http.server
    import threading

    from kit._charts import server_series
    from kit.run._series import server_totals

    calls = {"n": 0}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the server's naming
            calls["n"] += 1
            if self.path == "/stats":
                body = json.dumps(
                    {
                        "connections_open": 7,
                        "messages_forwarded": 100 * calls["n"],
                        "pid": 1,
                        "auth_failures_by_reason": {"missing": 1},
                    }
                ).encode()
            else:
                body = (
                    b"# HELP haproxy_server_current_sessions x\n# TYPE haproxy_server_current_sessions gauge\n"
                    b'haproxy_server_current_sessions{proxy="wsproxy",server="h-wsproxy-0"} 7\n'
                    b"haproxy_process_nbthread 2\n"
                )
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):  # quiet
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        scrape = tmp_path / "scrape.txt"
        scrape.write_text(
            f"wsproxy-0 http://127.0.0.1:{port}/stats\n"
            f"haproxy http://127.0.0.1:{port}/metrics haproxy_server_current_sessions\n"
            f"gone http://127.0.0.1:1/stats\n"
        )
        out = tmp_path / "host.jsonl"
        res = subprocess.run(
            [
                sys.executable,
                "-m",
                "kit.hostmon",
                str(out),
                "--interval",
                "0.2",
                "--duration",
                "1",
                "--scrape",
                str(scrape),
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()
    assert res.returncode == 0, res.stderr
    samples = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(samples) == 5
    first = samples[0]["services"]
    assert first["wsproxy-0"]["connections_open"] == 7 and "auth_failures_by_reason" not in first["wsproxy-0"]
    assert first["haproxy"] == {'haproxy_server_current_sessions{proxy="wsproxy",server="h-wsproxy-0"}': 7.0}
    assert first["gone"] == {"error": "URLError"}  # a service that does not answer: noted, the sample written
    series = server_series({"h": samples}, samples[0]["ts"])
    assert set(series["wsproxy_connections_open"]) == {"h:wsproxy-0"}
    assert list(series["haproxy_server_sessions"]) == ["h:wsproxy/h-wsproxy-0"]
    rates = list(series["wsproxy_messages_forwarded_per_s"]["h:wsproxy-0"].values())
    assert len(rates) == 4 and all(r > 0 for r in rates)  # 200 per call, 2 calls per sample, every 0.2 s
    total = server_totals({"h": samples})["wsproxy_messages_forwarded"]
    last, first_fwd = samples[-1]["services"]["wsproxy-0"], samples[0]["services"]["wsproxy-0"]
    assert total == last["messages_forwarded"] - first_fwd["messages_forwarded"]


def test_hostmon_asks_a_real_redis_for_info_over_one_kept_connection(tmp_path, redis_server):
    """Redis's INFO every sample, as a user with a password file; one connection for the whole run."""
    pw = tmp_path / "monitor.password"
    pw.write_text(redis_server.password + "\n")
    pw.chmod(0o600)
    bad = tmp_path / "wrong.password"
    bad.write_text("not-the-password\n")
    url = f"redis://default@{redis_server.host}:{redis_server.port}"

    def run(lines: str) -> list[dict]:
        scrape, out = tmp_path / "scrape.txt", tmp_path / "host.jsonl"
        scrape.write_text(lines)
        out.unlink(missing_ok=True)
        res = subprocess.run(
            [
                sys.executable,
                "-m",
                "kit.hostmon",
                str(out),
                "--interval",
                "0.2",
                "--duration",
                "1",
                "--scrape",
                str(scrape),
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert res.returncode == 0, res.stderr
        assert redis_server.password not in out.read_text()
        return [json.loads(x)["services"] for x in out.read_text().splitlines()]

    got = [s["redis"] for s in run(f"redis {url} {pw}\n")]
    assert len(got) == 5
    assert all(g["connected_clients"] >= 1 and "pubsub_channels" in g for g in got), got[0]
    # one INFO a sample over a single kept connection
    assert got[-1]["total_commands_processed"] > got[0]["total_commands_processed"]
    assert got[-1]["total_connections_received"] == got[0]["total_connections_received"]
    # a wrong password or a missing file is that second's error, never a stop
    samples = run(f"redis-wrong {url} {bad}\nredis-nofile {url} {tmp_path / 'absent'}\n")
    assert len(samples) == 5
    assert all("WRONGPASS" in s["redis-wrong"]["error"] for s in samples)
    assert all(s["redis-nofile"]["error"].startswith("FileNotFoundError") for s in samples)
