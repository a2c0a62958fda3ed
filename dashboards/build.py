"""Writes wsproxy-loadkit.json, the Grafana dashboard of the kit's Prometheus series (run it after changing a panel).

    .venv/bin/python dashboards/build.py

Import the JSON into your Grafana (Dashboards > New > Import) and pick the Prometheus data source the
monitoring role deployed (http://<monitoring host>:9090).  tests/unit/test_dashboard.py checks the file is
what this script writes and that every series it draws is one the kit (or its exporters) serves.
"""

from __future__ import annotations

import json
from pathlib import Path

OUT = Path(__file__).resolve().parent / "wsproxy-loadkit.json"
DS = {"type": "prometheus", "uid": "${datasource}"}
RUN = 'run_id=~"$run"'

#: (row title, [(panel title, unit, [(expr, legend)])])
ROWS = [
    (
        "Load (fab run --metrics-listen)",
        [
            (
                "Active sessions",
                "short",
                [
                    (f"loadkit_active_sessions{{{RUN}}}", "total"),
                    (f"loadkit_generator_active_sessions{{{RUN}}}", "{{generator}}"),
                ],
            ),
            ("Tokens received /s", "short", [(f"loadkit_tokens_per_second{{{RUN}}}", "tokens/s")]),
            (
                "Delivery latency (last second)",
                "s",
                [
                    (f'loadkit_delivery_latency_seconds{{{RUN}, quantile="0.5"}}', "p50"),
                    (f'loadkit_delivery_latency_seconds{{{RUN}, quantile="0.99"}}', "p99"),
                ],
            ),
            (
                "Time to first token (last second)",
                "s",
                [
                    (f'loadkit_ttft_seconds{{{RUN}, quantile="0.5"}}', "p50"),
                    (f'loadkit_ttft_seconds{{{RUN}, quantile="0.99"}}', "p99"),
                ],
            ),
            (
                "Errors, reconnects, lost tokens",
                "short",
                [
                    (f"loadkit_errors_per_second{{{RUN}}}", "errors/s"),
                    (f"loadkit_reconnects_per_second{{{RUN}}}", "reconnect attempts/s"),
                    (f"loadkit_lost_tokens_total{{{RUN}}}", "lost tokens (total)"),
                ],
            ),
            (
                "Generator CPU and loop lag",
                "short",
                [
                    (f"loadkit_generator_cpu_percent{{{RUN}}}", "{{generator}} cpu %"),
                    (f"loadkit_generator_loop_lag_seconds{{{RUN}}} * 1000", "{{generator}} lag ms"),
                ],
            ),
        ],
    ),
    (
        "wsproxy",
        [
            ("WebSockets open per instance", "short", [("wsproxy_connections_open", "{{host}} {{program}}")]),
            (
                "Frames forwarded /s",
                "short",
                [("sum by (host) (rate(wsproxy_messages_forwarded_total[5s]))", "{{host}}")],
            ),
            (
                "Drops /s",
                "short",
                [
                    ("sum(rate(wsproxy_slow_client_drops_total[5s]))", "slow client"),
                    ("sum(rate(wsproxy_redis_lost_drops_total[5s]))", "pub/sub lost (1012)"),
                    ("sum(rate(wsproxy_ping_timeouts_total[5s]))", "ping timeout"),
                ],
            ),
            (
                "Pub/sub",
                "short",
                [("sum(wsproxy_pubsub_connections)", "connections"), ("sum(wsproxy_subscriptions)", "channels")],
            ),
        ],
    ),
    (
        "Simulator",
        [
            ("Tokens published /s", "short", [("sum(rate(sim_tokens_published_total[5s]))", "tokens/s")]),
            ("Queries in flight", "short", [("sum(sim_queries_in_flight)", "in flight")]),
            ("Publish lag (worst, ms)", "ms", [("max(sim_publish_max_lag_ms)", "lag")]),
            (
                "Errors /s",
                "short",
                [
                    ("sum(rate(sim_errors_total[5s]))", "5xx"),
                    ("sum(rate(sim_redis_pool_exhausted_total[5s]))", "pool exhausted (503)"),
                ],
            ),
        ],
    ),
    (
        "HAProxy",
        [
            ("Sessions per server", "short", [("haproxy_server_current_sessions", "{{host}} {{proxy}}/{{server}}")]),
            ("Queue per backend", "short", [("haproxy_backend_current_queue", "{{host}} {{proxy}}")]),
            ("Servers UP", "short", [('sum by (proxy) (haproxy_server_status{state="UP"})', "{{proxy}}")]),
        ],
    ),
    (
        "Redis",
        [
            ("Commands /s", "short", [("rate(redis_commands_processed_total[5s])", "{{host}}")]),
            (
                "Pub/sub channels and clients",
                "short",
                [("redis_pubsub_channels", "channels"), ("redis_connected_clients", "clients")],
            ),
            ("Memory", "bytes", [("redis_memory_used_bytes", "used")]),
        ],
    ),
    (
        "Hosts",
        [
            (
                "CPU busy per host",
                "percentunit",
                [('1 - avg by (host) (rate(node_cpu_seconds_total{mode="idle"}[5s]))', "{{host}}")],
            ),
            ("Memory available", "bytes", [("node_memory_MemAvailable_bytes", "{{host}}")]),
            (
                "Network out per host",
                "Bps",
                [('sum by (host) (rate(node_network_transmit_bytes_total{device!="lo"}[5s]))', "{{host}}")],
            ),
            ("TCP sockets in use", "short", [("node_sockstat_TCP_inuse", "{{host}}")]),
        ],
    ),
]


def dashboard() -> dict:
    panels, pid, y = [], 1, 0
    for title, row in ROWS:
        panels.append(
            {
                "type": "row",
                "title": title,
                "id": pid,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                "panels": [],
            }
        )
        pid, y = pid + 1, y + 1
        for i, (ptitle, unit, targets) in enumerate(row):
            panels.append(
                {
                    "type": "timeseries",
                    "title": ptitle,
                    "id": pid,
                    "datasource": DS,
                    "gridPos": {"h": 8, "w": 8, "x": 8 * (i % 3), "y": y + 8 * (i // 3)},
                    "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                    "options": {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}},
                    "targets": [
                        {"refId": chr(65 + k), "datasource": DS, "expr": expr, "legendFormat": legend}
                        for k, (expr, legend) in enumerate(targets)
                    ],
                }
            )
            pid += 1
        y += 8 * ((len(row) + 2) // 3)
    return {
        "title": "wsproxy-loadkit",
        "uid": "wsproxy-loadkit",
        "schemaVersion": 39,
        "version": 1,
        "tags": ["wsproxy-loadkit"],
        "timezone": "utc",
        "refresh": "5s",
        "graphTooltip": 1,
        "time": {"from": "now-15m", "to": "now"},
        "templating": {
            "list": [
                {"type": "datasource", "name": "datasource", "label": "Prometheus", "query": "prometheus"},
                {
                    "type": "query",
                    "name": "run",
                    "label": "run",
                    "datasource": DS,
                    "includeAll": True,
                    "allValue": ".*",
                    "multi": True,
                    "refresh": 2,
                    "query": {"query": "label_values(loadkit_run_info, run_id)", "refId": "run"},
                    "definition": "label_values(loadkit_run_info, run_id)",
                },
            ]
        },
        "annotations": {"list": []},
        "panels": panels,
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


if __name__ == "__main__":
    OUT.write_text(render())
    print(f"wrote {OUT}")
