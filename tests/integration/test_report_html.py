"""The HTML of real runs in a real browser: report.html, compare.html and the capacity search.

Real runs: Redis, the simulator and the wsproxy (devkit.localstack, free loopback ports) stand in
for the deployed stack, and ``kit.run.execute`` drives them over a one-host inventory reached
without SSH (``ansible_connection: local``): a real load client, real host monitor, real
per-process CPU samples.  There is no HAProxy: the inventory's "haproxy" ports point straight at
the simulator and the wsproxy.  The services run without the kit's supervisord, so a small
stand-in ``supervisorctl`` (a shell script answering ``pid <program>`` with the PIDs this
fixture started) lets the run cost each component the way it does on a deployed host.

Each page is opened in headless Chromium (Debian's ``chromium``); any console message fails
the test, and every chart must have drawn data (the page marks each chart's ``<div>`` with
``data-rendered`` and ``data-points``).  Screenshots are kept under ``results/test-artifacts/``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
import yaml

from localinv import write_local_inventory
from devkit.localstack import Stack, local_stack
from kit.run._run import RunOptions, execute

pytestmark = pytest.mark.timeout(300)

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "results" / "test-artifacts"
CHROMIUM = shutil.which("chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]


def local_inventory(tmp: Path, stack: Stack) -> Path:
    """A one-host inventory over *stack*'s processes, with a stand-in supervisorctl for their PIDs."""
    root = tmp / "root"
    (root / "supervisor").mkdir(parents=True, exist_ok=True)
    (root / "supervisor" / "supervisord.conf").write_text("; stand-in: the services are devkit.localstack's\n")
    pids = {"redis": stack.redis.proc.pid, "sim": stack.sim.pid, "wsproxy-0": stack.wsproxy.pid}
    ctl = tmp / "supervisorctl"
    ctl.write_text('#!/bin/sh\n# stand-in for: supervisorctl -c CONF pid PROGRAM\ncase "$4" in\n'
                   + "".join(f"  {k}) echo {v} ;;\n" for k, v in pids.items())
                   + "  *) echo 'ERROR (no such process)'; exit 1 ;;\nesac\n")
    ctl.chmod(0o755)
    return write_local_inventory(tmp / "inventory.yml", stack, root, kit_service_supervisorctl_bin=str(ctl))


@pytest.fixture(scope="module")
def local_runs(tmp_path_factory):
    """Two small real runs (same stack, different load) and the inventory: (results dir, inventory, stack)."""
    tmp = tmp_path_factory.mktemp("html")
    with local_stack(tmp / "stack", sim_env={"TOKEN_DELAY_MS": 5}) as stack:
        inv = local_inventory(tmp, stack)
        results = tmp / "results"
        for run_id, clients in (("run-a", 30), ("run-b", 60)):
            lines: list[str] = []
            rc = execute(RunOptions(inventory=inv, clients=clients, queries=3, ramp=30.0, think_time=0.3,
                                    skip_health=True, results_dir=results, run_id=run_id, max_duration=60,
                                    live=False), out=lines.append)
            assert rc == 0, "\n".join(lines)
        yield results, inv, stack


def chromium(page: Path, tmp: Path, screenshot: Path | None = None) -> tuple[str, list[str]]:
    """(the DOM after load, the console lines) of *page*; a screenshot too when asked."""
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (./loadkit setup installs it)")
    profile = tmp / f"chromium-profile-{len(list(tmp.glob('chromium-profile-*')))}"
    profile.mkdir()
    base = [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0"]
    dom = subprocess.run([*base, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=90)
    assert dom.returncode == 0, dom.stderr[-2000:]
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    if screenshot is not None:
        shot = subprocess.run([*base, "--window-size=1200,2300", f"--screenshot={screenshot}", page.as_uri()],
                              capture_output=True, text=True, timeout=90)
        assert shot.returncode == 0 and screenshot.stat().st_size > 10_000, shot.stderr[-2000:]
        console += [line for line in shot.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    return dom.stdout, console


def chart_marks(dom: str) -> dict[str, dict[str, str]]:
    """chart id -> its data-* attributes, from the dumped DOM."""
    out = {}
    for m in re.finditer(r'<div id="([^"]+)" class="chart-box"([^>]*)>', dom):
        out[m[1]] = dict(re.findall(r'data-([a-z-]+)="([^"]*)"', m[2]))
    return out


def keep(path: Path) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    dest = ARTIFACTS / path.name
    shutil.copyfile(path, dest)
    print(f"screenshot: {dest}")
    return dest


def test_report_of_a_real_run_draws_every_chart_with_data_in_chromium(local_runs, tmp_path):
    results, _, _ = local_runs
    run_dir = results / "run-a"
    dom, console = chromium(run_dir / "report.html", tmp_path, tmp_path / "report-run-a.png")
    keep(tmp_path / "report-run-a.png")
    assert console == [], "\n".join(console)
    assert 'data-chart-error' not in dom
    marks = chart_marks(dom)
    # the server side over time: what the wsproxy and the simulator said of themselves every second
    # (this local stack has no HAProxy, so no balancer charts)
    assert set(marks) == {"c-load", "c-tokens", "c-delivery-t", "c-ttft-t", "c-latency", "c-errors", "c-hostcpu",
                          "c-compcpu", "c-wsconn", "c-wsfwd", "c-wsdrop", "c-simpub", "c-dist-ttft", "c-dist-delivery"}
    for cid, m in marks.items():
        assert m.get("rendered") == "1", (cid, m)
        assert int(m.get("points", 0)) > 0, (cid, m)
    assert re.search(r'<body[^>]*data-charts-rendered="14"', dom)
    summary = json.loads((run_dir / "summary.json").read_text())
    # what the wsproxy forwarded, from its own counters sampled every second, is what the clients received:
    # every token and every done message (within 2 %: the first sample may trail the first frames)
    frames = summary["total_tokens"] + summary["total_queries"]
    assert summary["server_totals"]["wsproxy_messages_forwarded"] == pytest.approx(frames, rel=0.02)
    # the page needs no network: no external URL is loaded
    html = (run_dir / "report.html").read_text()
    assert not re.search(r'(src|href)="(https?:)?//', html)
    # per-second latency is per second: as many points as seconds in which queries finished
    specs = json.loads(re.search(r'<script type="application/json" id="chart-specs">(.*?)</script>', html, re.S)[1])
    lat = next(s for s in specs if s["id"] == "c-latency")
    assert len(lat["x"]) >= 3 and lat["series"][0]["label"] == "p50"
    comp = next(s for s in specs if s["id"] == "c-compcpu")
    assert {"client", "sim", "wsproxy", "redis"} <= {s["label"] for s in comp["series"]}
    # the report also travels in the tarball
    with tarfile.open(results / "run-a.tar.gz") as tf:
        assert "run-a/report.html" in tf.getnames()


def test_report_counts_print_as_integers(local_runs):
    results, _, _ = local_runs
    text = (results / "run-a" / "report.txt").read_text()
    html = (results / "run-a" / "report.html").read_text()
    assert "Sessions      30 total, 30 ok" in text
    assert re.search(r"<th>latency_ms</th><td>90</td>", html), "histogram count should print as 90, not 90.00"
    assert not re.search(r"<th>\w+_ms</th><td>\d+\.00</td>", html)


def test_chaos_events_are_marked_on_every_time_chart(local_runs, tmp_path):
    from kit.report import write_report
    results, _, _ = local_runs
    run_dir = tmp_path / "with-events"
    shutil.copytree(results / "run-b", run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["events"] = [{"action": "kill", "target": "wsproxy-0", "host": "local", "at_s": 1.5, "for_s": 2.0}]
    (run_dir / "summary.json").write_text(json.dumps(summary))
    write_report(run_dir)
    html = (run_dir / "report.html").read_text()
    specs = json.loads(re.search(r'id="chart-specs">(.*?)</script>', html, re.S)[1])
    timed = [s for s in specs if not s["logx"]]
    assert len(timed) == 12   # load, tokens, delivery, TTFT, latency, errors, host and component CPU; 4 server-side
    assert all(s["events"] == [{"at_s": 1.5, "for_s": 2.0, "label": "kill wsproxy-0 @local"}] for s in timed)
    dom, console = chromium(run_dir / "report.html", tmp_path, tmp_path / "report-with-events.png")
    keep(tmp_path / "report-with-events.png")
    assert console == [], "\n".join(console)
    assert all(m.get("rendered") == "1" for m in chart_marks(dom).values())


FAB = REPO / ".venv" / "bin" / "fab"


def test_fab_compare_of_two_real_runs_tables_them_gates_on_rules_and_draws_overlays(local_runs, tmp_path):
    results, _, _ = local_runs
    page = tmp_path / "compare.html"
    ok = subprocess.run([str(FAB), "compare", f"{results / 'run-a'},{results / 'run-b.tar.gz'}", "--html", str(page),
                         "--fail-if", "lost>0", "--fail-if", "p99>+1000%"], capture_output=True, text=True,
                        timeout=120, cwd=REPO)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    table = ok.stdout
    for row in ("session success", "tokens/s", "latency p99", "TTFT p99", "delivery p99", "lost tokens",
                "CPU wsproxy", "Noise test: percentile bootstrap"):
        assert row in table, row
    assert re.search(r"latency p99\s+ms\s+[\d.]+\s+[\d.]+\s+[+-]", table)
    assert "config.clients: run-a=30 | run-b=60" in table
    # run-b carried twice the clients: tokens doubled, which a rule turns into exit status 1
    gate = subprocess.run([str(FAB), "compare", f"{results / 'run-a'},{results / 'run-b'}", "--html", str(page),
                           "--fail-if", "tokens>+50%"], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert gate.returncode == 1, gate.stdout + gate.stderr
    assert re.search(r"^FAIL\s+--fail-if tokens>\+50%\s+run-b: \+100\.0%", gate.stdout, re.M)
    bad = subprocess.run([str(FAB), "compare", f"{results / 'run-a'},{results / 'run-b'}", "--fail-if", "p99 > x"],
                         capture_output=True, text=True, timeout=120, cwd=REPO)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "--fail-if" in bad.stderr
    dom, console = chromium(page, tmp_path, tmp_path / "compare-run-a-run-b.png")
    keep(tmp_path / "compare-run-a-run-b.png")
    assert console == [], "\n".join(console)
    marks = chart_marks(dom)
    assert len(marks) == 9 and all(m.get("rendered") == "1" and int(m["points"]) > 0 for m in marks.values()), marks
    assert 'class="differs"' in dom  # the clients setting differs and is highlighted


def test_capacity_search_over_real_runs_brackets_the_knee_and_charts_it(local_runs, tmp_path):
    """The search's mechanics on real runs.  The SLO is tokens/s (it grows with the offered load, so it
    breaks at a load this test can predict); a latency SLO's knee on a 2-core test machine is
    not reproducible enough to assert."""
    from kit.run._capacity import execute_capacity
    results, inv, _ = local_runs
    base = RunOptions(inventory=inv, clients=1, queries=1, skip_health=True, results_dir=tmp_path / "cap",
                      max_duration=60, live=False)
    lines: list[str] = []
    rc, res = execute_capacity(base, ["tps<=400", "success>=100%"], start=10, step="x3", maximum=90, resolution=20,
                               name="cap", say=lines.append)
    assert rc == 0, "\n".join(lines)
    loads = [s.load for s in res.steps]
    assert loads[:2] == [10, 30] and all(s.passed for s in res.steps if s.load <= 30)
    assert res.knee is not None and res.first_failing is not None
    assert res.knee.load < res.first_failing.load <= res.knee.load + 20
    assert res.first_failing.broken == ["tps<=400"] and res.first_failing.summary["tps"] > 400
    assert res.knee.summary["tps"] <= 400
    # each step is a normal run with its own folder and tarball, and the SLOs as its thresholds
    for s in res.steps:
        assert (tmp_path / "cap" / f"{s.run_id}.tar.gz").exists()
        run = json.loads((tmp_path / "cap" / s.run_id / "run.json").read_text())
        assert [t["threshold"] for t in run["thresholds"]] == ["tps<=400", "success>=100%"]
        assert run["config"]["clients"] == s.load
    assert res.first_failing.summary.get("bottleneck", {}).get("component") in ("client", "sim", "wsproxy", "redis")
    out = "\n".join(lines)
    assert f"knee: {res.knee.load} sessions met every SLO" in out and "bottleneck" in out
    saved = json.loads((tmp_path / "cap" / "cap.json").read_text())
    assert saved["knee"]["load"] == res.knee.load
    dom, console = chromium(tmp_path / "cap" / "cap.html", tmp_path, tmp_path / "capacity.png")
    keep(tmp_path / "capacity.png")
    assert console == [], "\n".join(console)
    marks = chart_marks(dom)
    assert len(marks) == 3 and all(m.get("rendered") == "1" and int(m["points"]) >= len(loads) for m in marks.values())


def test_the_run_build_record_names_the_reference_wsproxy_and_checks_an_artifact(local_runs, tmp_path):
    from kit.inventory import load_inventory
    from kit.run._build import build_label, file_sha256, record_build
    from kit.run._remote import connect
    _, inv_path, _ = local_runs
    inv = load_inventory(inv_path)
    conns = {n: connect(h) for n, h in inv.hosts.items()}
    rec = record_build(inv, conns)["wsproxy"]
    assert rec["kind"] == "reference" and rec["commands"] == [f"{REPO / '.venv'}/bin/python -m kit.wsproxy"]
    assert rec["servers"] and "aiohttp" in rec["servers"][0]          # what the running instance says
    assert build_label({"build": {"wsproxy": rec}}).startswith("reference server Python/")
    # a user's build: the checksum of the controller's file, and of the copy the host runs
    art = tmp_path / "my-wsproxy"
    art.write_text("#!/bin/sh\nexec python -m kit.wsproxy\n")
    data = yaml.safe_load(inv_path.read_text())
    host = data["all"]["hosts"]["local"]
    host["wsproxy_artifact"] = str(art)
    host["kit_root"] = str(tmp_path / "root")
    (tmp_path / "root" / "bin").mkdir(parents=True)
    shutil.copyfile(art, tmp_path / "root" / "bin" / "wsproxy-artifact")
    (tmp_path / "inv.yml").write_text(yaml.safe_dump(data))
    inv2 = load_inventory(tmp_path / "inv.yml")
    rec = record_build(inv2, {n: connect(h) for n, h in inv2.hosts.items()})["wsproxy"]
    assert rec["kind"] == "artifact" and rec["sha256"] == [file_sha256(art)]
    assert rec["hosts"]["local"]["on_host"]["sha256"] == file_sha256(art) and "problem" not in rec["hosts"]["local"]
    art.write_text("#!/bin/sh\n# a newer build, not deployed yet\n")
    rec = record_build(inv2, {n: connect(h) for n, h in inv2.hosts.items()})["wsproxy"]
    assert "differs from the controller's" in rec["hosts"]["local"]["problem"]
