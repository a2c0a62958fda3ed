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
    res = subprocess.run([sys.executable, "-m", "kit.hostmon", str(out), "--interval", "0.2", "--duration", "1"],
                         capture_output=True, text=True, timeout=20)
    elapsed = time.monotonic() - t0
    assert res.returncode == 0, res.stderr
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == 5
    assert elapsed < 10
    first = lines[0]
    assert 0 <= first["cpu_percent"] <= 100
    assert first["mem"]["total"] > first["mem"]["available"] > 0
    assert "lo" in first["net"] and "rx_bytes_per_s" in first["net"]["lo"]
    assert [round(x["t"], 1) for x in lines] == [0.2, 0.4, 0.6, 0.8, 1.0]


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


@pytest.mark.parametrize("args, says", [(["--duration", "0"], "--duration"), (["--duration", "5", "--interval", "0"], "--interval")])
def test_hostmon_bad_options_exit_2_with_one_line(tmp_path, args, says):
    res = subprocess.run([sys.executable, "-m", "kit.hostmon", str(tmp_path / "x"), *args], capture_output=True,
                         text=True, timeout=20)
    assert res.returncode == 2
    assert says in res.stderr and len(res.stderr.strip().splitlines()) == 1


@pytest.mark.timeout(30)
def test_hostmon_runs_as_a_lone_file_under_a_python_without_psutil_reading_proc(tmp_path):
    # fab run copies this one file to hosts without the kit and runs it with their python3
    src = Path(__file__).resolve().parents[2] / "kit" / "hostmon.py"
    lone = tmp_path / "hostmon.py"
    lone.write_text(src.read_text())
    out = tmp_path / "host.jsonl"
    res = subprocess.run([sys.executable, "-S", "-c",
                          "import sys; sys.modules['psutil'] = None; sys.argv = sys.argv[1:]; "
                          "import runpy; runpy.run_path(sys.argv[0], run_name='__main__')",
                          str(lone), str(out), "--interval", "0.2", "--duration", "0.6"],
                         capture_output=True, text=True, timeout=20)
    assert res.returncode == 0, res.stderr
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == 3 and {x["source"] for x in lines} == {"/proc"}
    assert 0 <= lines[-1]["cpu_percent"] <= 100 and len(lines[-1]["cpu_percent_per_cpu"]) >= 1
    assert lines[-1]["mem"]["total"] > 0 and "lo" in lines[-1]["net"]
