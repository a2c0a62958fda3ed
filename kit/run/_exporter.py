"""``fab run --metrics-listen ADDR:PORT``: the run's live merged figures for Prometheus, while it lasts.

The controller already merges every generator's ``status.json`` once a second for the live view
(:func:`kit.run._summary.aggregate_status`); :class:`LiveExporter` serves the latest merge in the
text exposition format (:mod:`kit._prom`) from a small HTTP server thread.  Names are prefixed
``loadkit_``; every sample carries the run's id (``run_id``) so a dashboard can pick a run.

* ``loadkit_<counter>_total``: the generators' counters since the start (tokens, lost tokens,
  queries, errors, reconnect attempts, ...), summed; ``loadkit_active_sessions``.
* ``loadkit_tokens_per_second``, ``loadkit_queries_per_second``, ``loadkit_errors_per_second``,
  ``loadkit_reconnects_per_second``: of the last interval (about one second).
* ``loadkit_delivery_latency_seconds``, ``loadkit_ttft_seconds``, ``loadkit_query_latency_seconds``
  with ``quantile`` 0.5 and 0.99: of the last interval, from the merged interval histograms (exact,
  never averaged); absent while the interval saw none.
* ``loadkit_generator_*{generator=...}``: per generator (active sessions, tokens/s, CPU %, loop lag).
* ``loadkit_run_elapsed_seconds`` and ``loadkit_run_info{inventory=...} 1``.

The exporter does not outlive the run: :meth:`LiveExporter.close` stops it.
"""

from __future__ import annotations

import http.server
import ipaddress
import socket
import threading
from collections.abc import Mapping
from typing import Any

from kit._prom import CONTENT_TYPE, Metric, exposition
from kit.client import STATUS_COUNTERS

__all__ = ["LiveExporter", "parse_listen", "live_metrics"]

#: the counters of status.json that are not counters (served as gauges)
_GAUGES = ("active_sessions",)
#: last-interval rate of the aggregate -> metric name
_RATES = {
    "tps": "tokens_per_second",
    "qps": "queries_per_second",
    "errors_per_s": "errors_per_second",
    "reconnects_per_s": "reconnects_per_second",
}
#: aggregate key prefix -> (metric name, help)
_QUANTILES = {
    "delivery": ("delivery_latency_seconds", "token delivery latency (published -> received) of the last interval"),
    "ttft": ("ttft_seconds", "time to first token of the last interval"),
    "": ("query_latency_seconds", "query latency (POST /run -> done) of the last interval"),
}
_PER_GEN = {
    "active_sessions": ("generator_active_sessions", "sessions connected, per generator"),
    "tps": ("generator_tokens_per_second", "tokens received per second over the last interval, per generator"),
    "cpu_percent": ("generator_cpu_percent", "CPU of the generator's busiest process, % of one core"),
    "loop_lag_ms": ("generator_loop_lag_seconds", "event-loop lag p99 of the generator's worst process"),
}


def parse_listen(text: str) -> tuple[str, int]:
    """``ADDR:PORT`` (``[v6]:PORT`` for IPv6; ``:PORT`` for every address) -> (host, port); ValueError
    with the fix for anything else."""
    host, sep, port = (text or "").rpartition(":")
    problem = f"--metrics-listen {text!r}: give ADDR:PORT, e.g. 127.0.0.1:9464 or [::1]:9464 or :9464"
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:  # 0: a free port, said at the start
        raise ValueError(problem)
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if host:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(problem + " (the address must be an IP address)") from None
    return host or "0.0.0.0", int(port)


def _seconds(ms: Any) -> float | None:
    return None if ms is None else float(ms) / 1000.0


def live_metrics(agg: Mapping[str, Any] | None, elapsed: float | None, run_id: str, inventory: str) -> list[Metric]:
    """The metric families of one merged live status (None before the first poll: only the run's info)."""
    run = (("run_id", run_id),)
    out = [
        Metric(
            "loadkit_run_info",
            "gauge",
            "the run this controller is running (always 1)",
            samples={(("inventory", inventory), ("run_id", run_id)): 1},
        )
    ]
    if agg is None:
        return out
    if elapsed is not None:
        out.append(
            Metric(
                "loadkit_run_elapsed_seconds",
                "gauge",
                "seconds since the agreed start",
                samples={run: round(elapsed, 3)},
            )
        )
    out.append(
        Metric(
            "loadkit_generators_reporting",
            "gauge",
            "generators whose status was read",
            samples={run: agg.get("reporting", 0)},
        )
    )
    for key in STATUS_COUNTERS:
        kind = "gauge" if key in _GAUGES else "counter"
        out.append(
            Metric(
                f"loadkit_{key}",
                kind,
                f"{key.replace('_', ' ')} over every generator (status.json)",
                samples={run: agg.get(key) or 0},
            )
        )
    for key, name in _RATES.items():
        if agg.get(key) is not None:
            out.append(
                Metric(
                    f"loadkit_{name}",
                    "gauge",
                    f"{name.replace('_', ' ')} over the last interval",
                    samples={run: agg[key]},
                )
            )
    for prefix, (name, help_) in _QUANTILES.items():
        pre = f"{prefix}_" if prefix else ""
        samples: dict[tuple[tuple[str, str], ...], float] = {
            (*run, ("quantile", q)): v
            for q, v in (("0.5", _seconds(agg.get(f"{pre}p50_ms"))), ("0.99", _seconds(agg.get(f"{pre}p99_ms"))))
            if v is not None
        }
        if samples:
            out.append(Metric(f"loadkit_{name}", "gauge", help_, samples=samples))
    gens: Mapping[str, Any] = agg.get("per_generator") or {}
    for key, (name, help_) in _PER_GEN.items():
        scale = 1000.0 if name.endswith("_seconds") else 1.0
        samples = {
            (*run, ("generator", label)): float(g[key]) / scale
            for label, g in gens.items()
            if g and g.get(key) is not None
        }
        if samples:
            out.append(Metric(f"loadkit_{name}", "gauge", help_, samples=samples))
    return out


class LiveExporter:
    """An HTTP server thread answering ``GET /metrics`` with the latest :meth:`update`."""

    def __init__(self, listen: str, run_id: str, inventory: str) -> None:
        host, port = parse_listen(listen)
        self.run_id, self.inventory = run_id, inventory
        self._lock = threading.Lock()
        self._text = exposition(live_metrics(None, None, run_id, inventory)).encode()
        exporter = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
                if self.path.split("?", 1)[0] not in ("/metrics", "/"):
                    self.send_error(404, "only /metrics is served here")
                    return
                with exporter._lock:
                    body = exporter._text
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # scrapes are not news
                pass

        server_class = type(
            "Server",
            (http.server.ThreadingHTTPServer,),
            {"address_family": socket.AF_INET6 if ":" in host else socket.AF_INET, "daemon_threads": True},
        )
        try:
            self._server = server_class((host, port), Handler)
        except OSError as exc:
            raise ValueError(
                f"--metrics-listen {listen}: cannot listen there ({exc.strerror or exc}): choose a "
                "free port on an address of this machine"
            ) from None
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.2}, name="metrics-listen", daemon=True
        )
        self._thread.start()

    @property
    def address(self) -> tuple[str, int]:
        return self._server.server_address[:2]

    def update(self, agg: Mapping[str, Any], elapsed: float | None) -> None:
        text = exposition(live_metrics(agg, elapsed, self.run_id, self.inventory)).encode()
        with self._lock:
            self._text = text

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
