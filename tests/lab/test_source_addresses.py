"""A generator host with several source addresses (issue 18: Tsung's answer to the per-address port cap).

One lab host is the generator: 3 addresses (``fab lab-up --source-addresses 3``), its
``ip_local_port_range`` cut to 200 ports.  Redis, the simulator and the wsproxy run on the controller at
the bridge address and stand in for the balancer (one WebSocket address:port, as HAProxy's would be).
500 sessions need 500 local ports toward it: with the 3 addresses the run holds them all; with one, the
preflight refuses the run before any load and says why.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from standin import standin_inventory

from devkit.localstack import start_redis, start_sim, start_wsproxy
from kit.lab import LabConfig, lab_down, lab_up, parse_layout
from kit.run import RunError, RunOptions, execute
from kit.run._plan import parse_threshold

pytestmark = [pytest.mark.lab, pytest.mark.timeout(400)]

REPO = Path(__file__).resolve().parents[2]
VENV = REPO / ".venv"
PORTS = "20000 20199"


@pytest.fixture(scope="module")
def sources_lab(need_root, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sources")
    cfg = LabConfig(
        root=tmp / "lab", prefix="lka", subnet="10.213.11.0/24", inventory_path=tmp / "lab.yml", source_addresses=3
    )
    procs = []
    try:
        lab_up(1, parse_layout("redis=1,haproxy=1,wsproxy=1,sim=1,generators=1"), cfg=cfg)
        gen = cfg.host_name(1)
        subprocess.run(
            ["ip", "netns", "exec", gen, "sysctl", "-q", "-w", f"net.ipv4.ip_local_port_range={PORTS}"],
            check=True,
            timeout=30,
        )
        got = subprocess.run(
            ["ip", "netns", "exec", gen, "sysctl", "-n", "net.ipv4.ip_local_port_range"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout.split()
        assert got == PORTS.split()
        addr = cfg.address(0)
        redis = start_redis(tmp / "redis", host=addr)
        procs.append(redis.proc)
        secret = "s" * 48
        sim, sim_port = start_sim(tmp / "logs", redis_url=redis.url, jwt_secret=secret, host=addr, TOKEN_DELAY_MS=5)
        procs.append(sim)
        ws, ws_port = start_wsproxy(tmp / "logs", redis_url=redis.url, jwt_secret=secret, host=addr)
        procs.append(ws)
        yield tmp, cfg, addr, {"redis": redis.port, "sim": sim_port, "wsproxy": ws_port}
    finally:
        for p in reversed(procs):
            p.stop()
        lab_down(cfg)


def _inventory(tmp: Path, cfg: LabConfig, addr: str, ports: dict, *, sources: bool) -> Path:
    lab = yaml.safe_load(cfg.inventory_path.read_text())["all"]
    gen = cfg.host_name(1)
    hv = dict(lab["hosts"][gen])
    assert len(hv["generator_source_addresses"]) == 3  # what lab-up wrote: its own and two extra addresses
    if not sources:
        hv.pop("generator_source_addresses")
    path = tmp / f"inv-{'sources' if sources else 'one'}.yml"
    ports = {**ports, "http": ports["sim"], "ws": ports["wsproxy"]}
    return standin_inventory(path, tmp, lab, {gen: hv}, addr, ports, wsproxy_instances_per_host=1)


def _opts(inv: Path, tmp: Path, run_id: str) -> RunOptions:
    return RunOptions(
        inventory=inv,
        clients=500,
        queries=2,
        think_time=3.0,
        ramp=250.0,
        tokens=5,
        skip_health=True,
        results_dir=tmp / "results",
        run_id=run_id,
        max_duration=120,
        live=False,
        thresholds=[parse_threshold("success>=100%"), parse_threshold("lost==0")],
    )


def test_three_source_addresses_carry_500_sessions_through_200_ports(sources_lab):
    tmp, cfg, addr, ports = sources_lab
    lines: list[str] = []
    rc = execute(_opts(_inventory(tmp, cfg, addr, ports, sources=True), tmp, "src-3"), out=lines.append)
    assert rc == 0, "\n".join(lines[-40:])
    summary = json.loads((tmp / "results" / "src-3" / "summary.json").read_text())
    assert summary["success_rate"] == 100.0 and summary["total_sessions"] == 500 and summary["lost_tokens"] == 0
    assert summary["run"]["slots"][0]["host"] == cfg.host_name(1)
    settings = json.loads((tmp / "results" / "src-3" / "settings" / f"{cfg.host_name(1)}.json").read_text())
    assert settings["source_addresses"].split(",") == [cfg.address(1), cfg.extra_address(0), cfg.extra_address(1)]
    # 500 WebSockets open together (2 queries, 3 s apart, all started within 2 s) toward one address:port
    # through 200 ports per address: they left from more than one address, without a connect error
    assert summary["errors"] == {} and summary["total_reconnect_attempts"] == 0
    with open(tmp / "results" / "src-3" / "timeline.csv") as fh:
        import csv

        assert max(int(r["active_sessions"] or 0) for r in csv.DictReader(fh)) == 500


def test_one_address_is_refused_before_any_load_saying_why(sources_lab):
    tmp, cfg, addr, ports = sources_lab
    with pytest.raises(
        RunError,
        match=r"500 clients to controller need 500 local ports toward its WebSocket port "
        r"but ip_local_port_range gives 200 per source address and the host has 1",
    ):
        execute(_opts(_inventory(tmp, cfg, addr, ports, sources=False), tmp, "src-1"), out=lambda line: None)
    assert not (tmp / "results" / "src-1").exists()  # refused in the preflight: nothing started
