"""``fab run --tls`` over real SSH into lab hosts, through a real HAProxy terminating TLS.

As tests/lab/test_fab_run_orchestration.py (two lab hosts are the generators; Redis, the
simulator and the wsproxy run on the controller, bound to the lab bridge's address), plus an
HAProxy on that address with ``ssl crt`` on both frontends, its certificate signed by a test CA
for the bridge address.  The run gives each generator the CA file; a client without it, or with
another CA, is refused with one certificate error.  The deployed stack (the haproxy role's
``haproxy_tls``) is tests/lab/test_fab_run_lab.py's ground.
"""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import pytest
import yaml
from standin import standin_inventory
from tlsutil import make_ca, make_server_pem, start_tls_haproxy

from devkit.localstack import start_redis, start_sim, start_wsproxy
from kit.lab import LabConfig, lab_down, lab_up, parse_layout
from kit.run._plan import parse_threshold
from kit.run._run import RunError, RunOptions, execute

pytestmark = [pytest.mark.lab, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]
VENV = REPO / ".venv"


@pytest.fixture(scope="module")
def tls_lab(need_root, tmp_path_factory):
    """A 2-host lab, Redis/sim/wsproxy and a TLS HAProxy on the bridge address:
    (tmp, lab config, address, ports, CA certificate, another CA's certificate)."""
    tmp = tmp_path_factory.mktemp("tlslab")
    cfg = LabConfig(root=tmp / "lab", prefix="lks", subnet="10.213.10.0/24", inventory_path=tmp / "lab.yml")
    procs = []
    try:
        lab_up(2, parse_layout("redis=1,haproxy=1,wsproxy=1,sim=1,generators=2"), cfg=cfg)
        addr = cfg.address(0)
        ca = make_ca(tmp / "ca")
        other = make_ca(tmp / "other", "some-other-ca")
        pem = make_server_pem(tmp / "ca", ca, [addr], ["controller"])
        redis = start_redis(tmp / "redis", host=addr)
        procs.append(redis.proc)
        secret = "s" * 48
        sim, sim_port = start_sim(tmp / "logs", redis_url=redis.url, jwt_secret=secret, host=addr, TOKEN_DELAY_MS=2)
        procs.append(sim)
        ws, ws_port = start_wsproxy(tmp / "logs", redis_url=redis.url, jwt_secret=secret, host=addr)
        procs.append(ws)
        lb = start_tls_haproxy(tmp, pem, host=addr, sim=(addr, sim_port), wsproxy=(addr, ws_port))
        procs.append(lb.proc)
        ports = {"redis": redis.port, "sim": sim_port, "wsproxy": ws_port, "https": lb.https_port, "wss": lb.wss_port}
        yield tmp, cfg, addr, ports, ca[0], other[0]
    finally:
        for p in reversed(procs):
            p.stop()
        lab_down(cfg)


def _inventory(tmp: Path, cfg: LabConfig, addr: str, ports: dict) -> Path:
    lab = yaml.safe_load(cfg.inventory_path.read_text())["all"]
    # the balancer's ports are HAProxy's TLS frontends; the services behind it keep their own
    return standin_inventory(
        tmp / "inv.yml",
        tmp,
        lab,
        lab["hosts"],
        addr,
        {**ports, "http": ports["https"], "ws": ports["wss"]},
        wsproxy_instances_per_host=1,
        kit_secrets_dir=str(tmp / "secrets"),
    )


def test_fab_run_tls_gives_generators_the_ca_and_records_the_tls_handshake(tls_lab):
    tmp, cfg, addr, ports, ca, _ = tls_lab
    lines: list[str] = []
    opts = RunOptions(
        inventory=_inventory(tmp, cfg, addr, ports),
        clients=20,
        queries=2,
        ramp=100.0,
        skip_health=True,
        results_dir=tmp / "results",
        run_id="tls-ok",
        max_duration=90,
        live=False,
        tls=True,
        ca_file=ca,
        thresholds=[parse_threshold("success>=100%"), parse_threshold("lost==0")],
    )
    rc = execute(opts, out=lines.append)
    run_dir = tmp / "results" / "tls-ok"
    assert rc == 0, "\n".join(lines)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["total_sessions"] == 20 and summary["success_rate"] == 100.0 and summary["lost_tokens"] == 0
    # every generator was pointed at the TLS frontends with its own copy of the CA
    for slot in summary["run"]["slots"]:
        argv = slot["argv"]
        assert argv[argv.index("--api-url") + 1] == f"https://{addr}:{ports['https']}"
        assert argv[argv.index("--ws-url") + 1] == f"wss://{addr}:{ports['wss']}"
        copy = Path(argv[argv.index("--ca-file") + 1])
        assert copy != ca and copy.read_bytes() == ca.read_bytes()
    with open(run_dir / "sessions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 20 and all(float(r["tls_ms"]) > 0 for r in rows)
    assert summary["connect_tls_ms"]["count"] == 20 and summary["connect_tls_ms"]["p50"] > 0
    assert any(
        ln.startswith("Connect (ms)") and "TLS" in ln for ln in (run_dir / "report.txt").read_text().splitlines()
    )
    assert "connect_tls_ms" in (run_dir / "report.html").read_text()


def test_fab_run_tls_with_another_ca_is_refused_with_one_certificate_error(tls_lab):
    tmp, cfg, addr, ports, _, other = tls_lab
    rc = execute(
        RunOptions(
            inventory=_inventory(tmp, cfg, addr, ports),
            clients=4,
            queries=1,
            skip_health=True,
            results_dir=tmp / "results",
            run_id="tls-other-ca",
            max_duration=60,
            live=False,
            tls=True,
            ca_file=other,
        ),
        out=lambda s: None,
    )
    run_dir = tmp / "results" / "tls-other-ca"
    summary = json.loads((run_dir / "summary.json").read_text())
    # each generator's own preflight refuses the certificate: one line each, the run partial, no load sent
    reasons = summary["run"]["partial_reasons"]
    assert rc != 0 and summary["partial"] is True and len(reasons) == 2, reasons
    assert all("status 2" in r and "certificate was refused" in r and "--ca-file" in r for r in reasons), reasons
    logs = "".join(p.read_text() for p in (run_dir / "generators").glob("*/out.log"))
    assert "Traceback" not in logs and logs.count("certificate was refused") == 2, logs


def test_a_client_without_the_ca_fails_with_a_certificate_error_not_a_traceback(tls_lab):
    tmp, cfg, addr, ports, _, _ = tls_lab
    out = tmp / "no-ca"
    r = subprocess.run(
        [
            str(VENV / "bin" / "python"),
            "-m",
            "kit.client",
            "--api-url",
            f"https://{addr}:{ports['https']}",
            "--ws-url",
            f"wss://{addr}:{ports['wss']}",
            "--clients",
            "3",
            "--queries",
            "1",
            "--quiet",
            "--no-preflight",
            "--output-dir",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["errors"] == {"create_tls_certificate": 3}


def test_fab_run_tls_without_a_ca_file_is_a_usage_error_naming_the_missing_file(tls_lab):
    tmp, cfg, addr, ports, _, _ = tls_lab
    with pytest.raises(RunError, match=r"--tls: no CA certificate at .*kit_ca\.crt.*haproxy_tls"):
        execute(
            RunOptions(
                inventory=_inventory(tmp, cfg, addr, ports),
                clients=2,
                queries=1,
                skip_health=True,
                results_dir=tmp / "results",
                run_id="tls-no-ca",
                live=False,
                tls=True,
            ),
            out=lambda s: None,
        )
