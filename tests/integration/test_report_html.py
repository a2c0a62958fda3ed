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
``data-rendered``, ``data-points`` and ``data-ink``, the series' painted pixels).  The time charts of a
page must share one x range (``data-x-range``) and the event labels lie inside the plot box
(``data-labels`` and ``data-plot``, canvas pixels).  Screenshots are kept under ``results/test-artifacts/``.
"""

from __future__ import annotations

import html as html_lib
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
from kit.run import RunOptions, execute

pytestmark = pytest.mark.timeout(300)

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "results" / "test-artifacts"
CHROMIUM = shutil.which("chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


def local_inventory(tmp: Path, stack: Stack) -> Path:
    """A one-host inventory over *stack*'s processes, with a stand-in supervisorctl for their PIDs."""
    root = tmp / "root"
    (root / "supervisor").mkdir(parents=True, exist_ok=True)
    (root / "supervisor" / "supervisord.conf").write_text("; stand-in: the services are devkit.localstack's\n")
    pids = {"redis": stack.redis.proc.pid, "sim": stack.sim.pid, "wsproxy-0": stack.wsproxy.pid}
    ctl = tmp / "supervisorctl"
    ctl.write_text(
        '#!/bin/sh\n# stand-in for: supervisorctl -c CONF pid PROGRAM\ncase "$4" in\n'
        + "".join(f"  {k}) echo {v} ;;\n" for k, v in pids.items())
        + "  *) echo 'ERROR (no such process)'; exit 1 ;;\nesac\n"
    )
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
            rc = execute(
                RunOptions(
                    inventory=inv,
                    clients=clients,
                    queries=3,
                    ramp=30.0,
                    think_time=0.3,
                    skip_health=True,
                    results_dir=results,
                    run_id=run_id,
                    max_duration=60,
                    live=False,
                ),
                out=lines.append,
            )
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
        shot = subprocess.run(
            [*base, "--window-size=1200,2300", f"--screenshot={screenshot}", page.as_uri()],
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert shot.returncode == 0 and screenshot.stat().st_size > 10_000, shot.stderr[-2000:]
        console += [line for line in shot.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    return dom.stdout, console


def chart_marks(dom: str) -> dict[str, dict[str, str]]:
    """chart id -> its data-* attributes (unescaped), from the dumped DOM."""
    out = {}
    for m in re.finditer(r'<div id="([^"]+)" class="chart-box"([^>]*)>', dom):
        out[m[1]] = {k: html_lib.unescape(v) for k, v in re.findall(r'data-([a-z-]+)="([^"]*)"', m[2])}
    return out


def page_specs(page: Path) -> list[dict]:
    return json.loads(
        re.search(r'<script type="application/json" id="chart-specs">(.*?)</script>', page.read_text(), re.S)[1]
    )


def assert_every_chart_drawn(marks: dict[str, dict[str, str]]) -> None:
    for cid, m in marks.items():
        assert m.get("rendered") == "1" and int(m.get("points", 0)) > 0, (cid, m)
        assert int(m.get("ink", 0)) > 0, f"{cid}: nothing painted in the plot area {m}"


def assert_log_ticks(marks: dict[str, dict[str, str]], specs: list[dict]) -> None:
    """Each log axis has at least 3 ticks, every one labelled with its value."""
    logs = [s["id"] for s in specs if s["logx"]]
    assert logs
    for cid in logs:
        ticks = marks[cid]["x-ticks"].split()
        assert len(ticks) >= 3 and all(re.fullmatch(r"[0-9.e+-]+", t) for t in ticks), (cid, ticks)


def assert_one_time_axis(marks: dict[str, dict[str, str]], specs: list[dict]) -> tuple[float, float]:
    """Every time chart drew the page's one x range (the specs' ``xrange``) and syncs its cursor on one key."""
    timed = [s for s in specs if not s["logx"]]
    assert timed and len({json.dumps(s["xrange"]) for s in timed}) == 1 and {s["sync"] for s in timed} == {"run-time"}
    lo, hi = timed[0]["xrange"]
    for s in timed:
        drawn = [float(v) for v in marks[s["id"]]["x-range"].split(",")]
        assert drawn == pytest.approx([lo, hi], abs=1e-3), (s["id"], drawn, (lo, hi))
    return lo, hi


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
    assert "data-chart-error" not in dom
    marks = chart_marks(dom)
    # the server side over time: what the wsproxy and the simulator said of themselves every second
    # (this local stack has no HAProxy, so no balancer charts)
    assert set(marks) == {
        "c-load",
        "c-tokens",
        "c-delivery-t",
        "c-ttft-t",
        "c-latency",
        "c-errors",
        "c-hostcpu",
        "c-compcpu",
        "c-wsconn",
        "c-wsfwd",
        "c-wsdrop",
        "c-simpub",
        "c-dist-ttft",
        "c-dist-delivery",
    }
    assert_every_chart_drawn(marks)
    assert re.search(r'<body[^>]*data-charts-rendered="14"', dom)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert_log_ticks(marks, page_specs(run_dir / "report.html"))
    # one time axis: from the agreed start (or the timeline second that holds it) to the run's end
    lo, hi = assert_one_time_axis(marks, page_specs(run_dir / "report.html"))
    assert -1.0 < lo <= 0.0 and hi == pytest.approx(summary["ended_at"] - summary["run"]["start_at"], abs=0.01)
    # the page shows the cost table once and folds the raw run record away
    page = (run_dir / "report.html").read_text()
    assert page.count("<th>us/token</th>") == 1 and "  component  host" not in page
    assert re.search(r'<details class="run-record"><summary>', page) and "<details open" not in page
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
    # the run's own range (its length depends on the machine): the last event is put past its end
    write_report(run_dir)
    run_end = [s for s in page_specs(run_dir / "report.html") if not s["logx"]][0]["xrange"][1]
    down_at = round(max(run_end, 3.5) + 0.5, 3)
    summary["events"] = [{"action": "kill", "target": "wsproxy-0", "host": "local", "at_s": 1.5, "for_s": 2.0}]
    # the balancer's decision at the right edge of the run's range: its label must turn to the left
    summary["server_events"] = [
        {
            "balancer": "lk-h2",
            "backend": "wsproxy",
            "server": "ws-1",
            "state": "DOWN",
            "at_s": down_at,
            "reason": "Layer7 timeout",
        }
    ]
    (run_dir / "summary.json").write_text(json.dumps(summary))
    write_report(run_dir)
    specs = page_specs(run_dir / "report.html")
    timed = [s for s in specs if not s["logx"]]
    assert len(timed) == 12  # load, tokens, delivery, TTFT, latency, errors, host and component CPU; 4 server-side
    events = [
        {"at_s": 1.5, "for_s": 2.0, "label": "kill wsproxy-0 @local"},
        {"at_s": down_at, "for_s": 0.0, "label": "ws-1 DOWN @lk-h2"},
    ]
    assert all(s["events"] == events for s in timed)
    dom, console = chromium(run_dir / "report.html", tmp_path, tmp_path / "report-with-events.png")
    keep(tmp_path / "report-with-events.png")
    assert console == [], "\n".join(console)
    marks = chart_marks(dom)
    assert_every_chart_drawn(marks)
    assert assert_one_time_axis(marks, specs)[1] == down_at  # the range reaches the last event
    for s in timed:
        left, top, width, height = json.loads(marks[s["id"]]["plot"])
        labels = json.loads(marks[s["id"]]["labels"])
        assert [lab["text"] for lab in labels] == [e["label"] for e in events], (s["id"], labels)
        for lab in labels:  # inside the plot area, whatever the chart's axes
            assert left - 0.5 <= lab["x"] and lab["x"] + lab["w"] <= left + width + 0.5, (s["id"], lab)
            assert top - 0.5 <= lab["y"] and lab["y"] + lab["h"] <= top + height + 0.5, (s["id"], lab)
            # and the text really is in that box (the canvas' text alignment once moved it left of its line)
            assert lab["ink"] > lab["w"], (s["id"], lab)
        kill, down = labels
        assert kill["x"] > kill["line"] and down["x"] + down["w"] < down["line"], (s["id"], labels)
        assert (
            kill["x"] + kill["w"] <= down["x"]
            or down["x"] + down["w"] <= kill["x"]
            or kill["y"] + kill["h"] <= down["y"]
            or down["y"] + down["h"] <= kill["y"]
        ), ("overlap", s["id"], labels)


FAB = REPO / ".venv" / "bin" / "fab"


def test_fab_compare_of_two_real_runs_tables_them_gates_on_rules_and_draws_overlays(local_runs, tmp_path):
    results, _, _ = local_runs
    page = tmp_path / "compare.html"
    ok = subprocess.run(
        [
            str(FAB),
            "compare",
            f"{results / 'run-a'},{results / 'run-b.tar.gz'}",
            "--html",
            str(page),
            "--fail-if",
            "lost>0",
            "--fail-if",
            "p99>+1000%",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    table = ok.stdout
    for row in (
        "session success",
        "tokens/s",
        "latency p99",
        "TTFT p99",
        "delivery p99",
        "lost tokens",
        "CPU wsproxy",
        "Noise test: percentile bootstrap",
    ):
        assert row in table, row
    assert re.search(r"latency p99\s+ms\s+[\d.]+\s+[\d.]+\s+[+-]", table)
    assert "config.clients: run-a=30 | run-b=60" in table
    # run-b carried twice the clients: tokens doubled, which a rule turns into exit status 1
    gate = subprocess.run(
        [
            str(FAB),
            "compare",
            f"{results / 'run-a'},{results / 'run-b'}",
            "--html",
            str(page),
            "--fail-if",
            "tokens>+50%",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert gate.returncode == 1, gate.stdout + gate.stderr
    assert re.search(r"^FAIL\s+--fail-if tokens>\+50%\s+run-b: \+100\.0%", gate.stdout, re.M)
    bad = subprocess.run(
        [str(FAB), "compare", f"{results / 'run-a'},{results / 'run-b'}", "--fail-if", "p99 > x"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "--fail-if" in bad.stderr
    dom, console = chromium(page, tmp_path, tmp_path / "compare-run-a-run-b.png")
    keep(tmp_path / "compare-run-a-run-b.png")
    assert console == [], "\n".join(console)
    marks = chart_marks(dom)
    assert len(marks) == 9, marks
    assert_every_chart_drawn(marks)
    assert 'class="differs"' in dom  # the clients setting differs and is highlighted
    specs = page_specs(page)
    assert_one_time_axis(marks, specs)
    assert_log_ticks(marks, specs)


def test_compare_of_a_run_with_itself_draws_two_series(local_runs, tmp_path):
    results, _, _ = local_runs
    page = tmp_path / "compare-self.html"
    ok = subprocess.run(
        [str(FAB), "compare", f"{results / 'run-a'},{results / 'run-a'}", "--html", str(page)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert re.search(r"^figure\s+unit\s+run-a \(1\)\s+run-a \(2\)", ok.stdout, re.M), ok.stdout
    specs = page_specs(page)
    assert len(specs) == 9 and all([z["label"] for z in s["series"]] == ["run-a (1)", "run-a (2)"] for s in specs)
    dom, console = chromium(page, tmp_path)
    assert console == [], "\n".join(console)
    marks = chart_marks(dom)
    assert_every_chart_drawn(marks)
    assert all(m["series"] == "2" for m in marks.values()), marks
    assert_one_time_axis(marks, specs)


def test_capacity_search_over_real_runs_brackets_the_knee_and_charts_it(local_runs, tmp_path):
    """The search's mechanics on real runs.  The SLO is tokens/s (it grows with the offered load, so it
    breaks at a load this test can predict); a latency SLO's knee on a 2-core test machine is
    not reproducible enough to assert."""
    from kit.run._capacity import execute_capacity

    results, inv, _ = local_runs
    base = RunOptions(
        inventory=inv, clients=1, queries=1, skip_health=True, results_dir=tmp_path / "cap", max_duration=60, live=False
    )
    lines: list[str] = []
    rc, res = execute_capacity(
        base,
        ["tps<=400", "success>=100%"],
        start=10,
        step="x3",
        maximum=90,
        resolution=30,  # 30 -> 90 bisects once (60): the mechanics, in as few real runs as show them
        name="cap",
        say=lines.append,
    )
    assert rc == 0, "\n".join(lines)
    loads = [s.load for s in res.steps]
    assert loads[:2] == [10, 30] and all(s.passed for s in res.steps if s.load <= 30)
    assert res.knee is not None and res.first_failing is not None
    assert res.knee.load < res.first_failing.load <= res.knee.load + 30
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
    assert rec["servers"] and "aiohttp" in rec["servers"][0]  # what the running instance says
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
