"""The shipped Grafana dashboard: the file is what dashboards/build.py writes, and every kit series it draws is
one the kit serves (the exporters' series are checked against a real Prometheus in tests/lab)."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

from kit._prom import exposition
from kit.run._exporter import live_metrics
from kit.run._summary import aggregate_status
from kit.sim._workers import METRICS as SIM_METRICS
from kit.wsproxy._stats import METRICS as WSPROXY_METRICS

REPO = Path(__file__).resolve().parents[2]


def _build():
    spec = importlib.util.spec_from_file_location("dashboard_build", REPO / "dashboards" / "build.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _served() -> set[str]:
    agg = aggregate_status(
        {
            "g": {
                "time": 1.0,
                "elapsed_s": 1.0,
                "tokens": 1,
                "cpu_percent": 1.0,
                "loop_lag_p99_ms": 1.0,
                "active_sessions": 1,
            }
        },
        None,
        1.0,
    )
    agg |= {
        "tps": 1.0,
        "qps": 1.0,
        "errors_per_s": 0.0,
        "reconnects_per_s": 0.0,
        "delivery_p50_ms": 1.0,
        "delivery_p99_ms": 1.0,
        "ttft_p50_ms": 1.0,
        "ttft_p99_ms": 1.0,
        "p50_ms": 1.0,
        "p99_ms": 1.0,
    }
    text = exposition(live_metrics(agg, 1.0, "r", "i"))
    names = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}
    for prefix, table in (("wsproxy_", WSPROXY_METRICS), ("sim_", SIM_METRICS)):
        names |= {prefix + key + ("_total" if kind == "counter" else "") for key, kind, _ in table}
    return names


def test_the_dashboard_file_is_what_build_py_writes():
    mod = _build()
    assert (REPO / "dashboards" / "wsproxy-loadkit.json").read_text() == mod.render(), (
        "run .venv/bin/python dashboards/build.py"
    )


def test_every_kit_series_the_dashboard_draws_is_served():
    doc = json.loads((REPO / "dashboards" / "wsproxy-loadkit.json").read_text())
    exprs = [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]
    used = {m for e in exprs for m in re.findall(r"\b((?:loadkit|wsproxy|sim)_[a-z0-9_]+)", e)}
    assert used and used <= _served(), used - _served()
    # one panel per kind of figure the issue names: load, latency, the proxy, the balancer, Redis, hosts
    titles = {p["title"] for p in doc["panels"] if p["type"] == "row"}
    assert {"wsproxy", "HAProxy", "Redis", "Hosts"} <= titles
