"""``fab run --chaos`` network faults in the netns lab: partition and delay of a real host's traffic.

Lab host h1 runs Redis, the simulator and the wsproxy inside its namespace (started here, stopped by
PID); h2 is the generator, reached over SSH.  The token path sim -> Redis -> wsproxy stays inside h1
and crosses h1's egress once (wsproxy -> client), so a delay on h1's outgoing traffic adds exactly
once to the delivery latency the client reports.  This kernel has no netem: the delay goes through
the NFQUEUE mechanism (kit/run/_nfqdelay.py); on a kernel with netem the same spec uses netem.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from devkit.localstack import free_port, spawn, wait_http_ok, wait_tcp
from kit.lab import LabConfig, lab_down, lab_up, parse_layout
from kit.run import RunOptions, execute

pytestmark = [pytest.mark.lab, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]
VENV = REPO / ".venv"
DELAY_MS = 20.0


@pytest.fixture(scope="module")
def chaos_lab(need_root, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("chaoslab")
    cfg = LabConfig(root=tmp / "lab", prefix="lkc", subnet="10.213.9.0/24", inventory_path=tmp / "lab.yml")
    procs = []
    try:
        lab_up(2, parse_layout("redis=1,haproxy=1,wsproxy=1,sim=1,generators=1"), cfg=cfg)
        ns, addr = cfg.host_name(1), cfg.address(1)
        ports = {"redis": free_port(), "sim": free_port(), "wsproxy": free_port(), "stats": free_port()}
        password, secret = "p" * 24, "s" * 48
        (tmp / "redis.conf").write_text(
            f'bind {addr}\nport {ports["redis"]}\nrequirepass {password}\nsave ""\n'
            f"appendonly no\ndir {tmp}\nmaxclients 10000\nprotected-mode no\n"
        )
        inns = ["ip", "netns", "exec", ns]
        procs.append(
            spawn(
                "redis", [*inns, shutil.which("redis-server"), str(tmp / "redis.conf")], env=None, log_dir=tmp / "logs"
            )
        )
        wait_tcp(addr, ports["redis"])
        url = f"redis://:{password}@{addr}:{ports['redis']}/0"
        env = dict(os.environ, REDIS_URL=url, JWT_SECRET=secret)
        procs.append(
            spawn(
                "sim",
                [*inns, sys.executable, "-m", "kit.sim"],
                log_dir=tmp / "logs",
                env=env | {"FASTAPI_HOST": addr, "FASTAPI_PORT": str(ports["sim"]), "TOKEN_DELAY_MS": "20"},
            )
        )
        procs.append(
            spawn(
                "wsproxy",
                [*inns, sys.executable, "-m", "kit.wsproxy"],
                log_dir=tmp / "logs",
                env=env | {"HOST": addr, "PORT": str(ports["wsproxy"])},
            )
        )
        wait_http_ok(addr, ports["sim"], proc=procs[1])
        wait_http_ok(addr, ports["wsproxy"], proc=procs[2])
        yield tmp, cfg, ports
    finally:
        for p in reversed(procs):
            p.stop()
        lab_down(cfg)


def _inventory(tmp: Path, cfg: LabConfig, ports: dict) -> Path:
    lab = yaml.safe_load(cfg.inventory_path.read_text())["all"]
    h1, h2 = cfg.host_name(1), cfg.host_name(2)
    hosts = {n: {**hv, "kit_root": str(tmp / "roots" / n), "kit_venv_dir": str(VENV)} for n, hv in lab["hosts"].items()}
    hosts[h1] |= {
        "haproxy_http_port": ports["sim"],
        "haproxy_ws_port": ports["wsproxy"],
        "haproxy_stats_port": ports["stats"],
        "redis_port": ports["redis"],
        "sim_port": ports["sim"],
        "wsproxy_base_port": ports["wsproxy"],
    }
    one = {"hosts": {h1: None}}
    inv = {
        "all": {
            "vars": lab["vars"],
            "hosts": hosts,
            "children": {"redis": one, "haproxy": one, "wsproxy": one, "sim": one, "generators": {"hosts": {h2: None}}},
        }
    }
    path = tmp / "inv.yml"
    path.write_text(yaml.safe_dump(inv))
    return path


def _run(tmp, cfg, ports, run_id, chaos, **kw):
    lines: list[str] = []
    rc = execute(
        RunOptions(
            inventory=_inventory(tmp, cfg, ports),
            skip_health=True,
            results_dir=tmp / "results",
            run_id=run_id,
            live=False,
            chaos=chaos,
            max_duration=120,
            **kw,
        ),
        out=lines.append,
    )
    return rc, json.loads((tmp / "results" / run_id / "summary.json").read_text()), lines


def _nft_tables(ns: str) -> str:
    return subprocess.run(
        ["ip", "netns", "exec", ns, "nft", "list", "tables"], capture_output=True, text=True, timeout=30
    ).stdout


def _iptables(ns: str) -> str:
    return subprocess.run(
        ["ip", "netns", "exec", ns, "iptables", "-S", "OUTPUT"], capture_output=True, text=True, timeout=30
    ).stdout


def _timeline(tmp: Path, run_id: str) -> list[dict[str, str]]:
    with open(tmp / "results" / run_id / "timeline.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def test_delay_of_20_ms_on_the_wsproxy_host_moves_delivery_latency_p50_by_20_ms(chaos_lab):
    tmp, cfg, ports = chaos_lab
    load = {"clients": 20, "queries": 8, "think_time": 0.1, "query_timeout": 30.0}
    rc, base, lines = _run(tmp, cfg, ports, "delay-base", [], **load)
    assert rc == 0, "\n".join(lines[-30:])
    rc, delayed, lines = _run(tmp, cfg, ports, "delay-20ms", [f"delay:wsproxy@0s+60s={DELAY_MS:g}ms"], **load)
    assert rc == 0, "\n".join(lines[-30:])
    (ev,) = delayed["events"]
    assert ev["ok"], ev
    assert "NFQUEUE delay 20ms" in ev["detail"] or "netem delay 20ms" in ev["detail"]
    assert ev["for_s"] < 60  # undone when the load ended, not left for the whole FOR
    assert ev["apply_s"] is not None and ev["at_s"] >= ev["apply_s"] - 0.5  # recorded from when it was in place
    # the seconds wholly inside the delay (a loaded host takes a while to apply it: the event says when it was
    # in place), against the same load undelayed
    inside = [
        float(r["delivery_p50_ms"])
        for r in _timeline(tmp, "delay-20ms")
        if ev["started_at"] <= int(r["second"]) and int(r["second"]) + 1 <= ev["ended_at"] and r["delivery_p50_ms"]
    ]
    before = [float(r["delivery_p50_ms"]) for r in _timeline(tmp, "delay-base") if r["delivery_p50_ms"]]
    assert len(inside) >= 3 and before, (ev, inside)
    moved = _median(inside) - _median(before)
    print(
        f"delivery p50 {_median(before):.2f} -> {_median(inside):.2f} ms over {len(inside)} s:"
        f" moved {moved:.2f} ms for {DELAY_MS:g} ms injected, in place {ev['apply_s']:.2f} s after asked ({ev['detail']})"
    )
    assert abs(moved - DELAY_MS) <= 3.0, (before, inside)
    assert delayed["lost_tokens"] == 0 and delayed["success_rate"] == 100.0
    assert "NFQUEUE" not in _iptables(cfg.host_name(1))  # the rule went with the delay


def test_partition_of_the_wsproxy_host_stops_traffic_for_its_duration_then_heals(chaos_lab):
    tmp, cfg, ports = chaos_lab
    rc, summary, lines = _run(
        tmp,
        cfg,
        ports,
        "partition",
        ["partition:wsproxy@3s+3s"],
        clients=30,
        queries=12,
        think_time=0.2,
        query_timeout=30.0,
        no_default_thresholds=True,
    )  # the point is the traffic, not what the partition cost
    assert rc == 0, "\n".join(lines[-30:])
    (ev,) = summary["events"]
    assert ev["ok"] and "nftables table" in ev["detail"] and "deleted" in ev["detail"], ev
    assert 2.5 <= ev["for_s"] <= 4.5
    rows = {int(r["second"]): int(r["tokens"]) for r in _timeline(tmp, "partition")}
    inside = [s for s in rows if ev["started_at"] + 0.5 <= s and s + 1 <= ev["ended_at"] - 0.2]
    assert inside and all(rows[s] == 0 for s in inside), (inside, rows)  # nothing crossed the partition
    assert ev["recovery_s"] is not None and ev["recovery_s"] < 15, (ev["recovery"], rows)
    assert "wsproxy_loadkit" not in _nft_tables(cfg.host_name(1))


def test_a_partition_still_in_place_when_the_load_ends_is_undone_by_the_run(chaos_lab):
    tmp, cfg, ports = chaos_lab
    rc, summary, lines = _run(
        tmp,
        cfg,
        ports,
        "partition-long",
        ["partition:wsproxy@2s+100s"],
        clients=10,
        queries=2,
        think_time=0.1,
        query_timeout=4.0,
    )
    (ev,) = summary["events"]
    assert ev["ok"] and ev["for_s"] < 60, ev
    assert "wsproxy_loadkit" not in _nft_tables(cfg.host_name(1))
