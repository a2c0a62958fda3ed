"""Per-second CPU, memory and network of one host as JSON lines (``python -m kit.hostmon``).

    python -m kit.hostmon OUT.jsonl --interval 1 --duration 120

``fab run`` starts one on every host for the length of the run.  Each line is
one sample: wall-clock ``ts``, CPU percent (total and per CPU, since the last
sample), load average, memory, and network byte/packet counters plus per-second
rates for every interface of the host's network namespace (so a lab host
reports its own veth).  The monitor is bounded: it stops by itself after
``--duration`` seconds (and on SIGTERM/SIGINT), flushing every line as it goes
so a killed monitor still leaves what it measured.  Bad options exit 2 with one
line.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import psutil

__all__ = ["sample", "monitor", "main"]

log = logging.getLogger(__name__)

MAX_DURATION = 7 * 24 * 3600.0


def _net() -> dict[str, Any]:
    return {nic: c._asdict() for nic, c in psutil.net_io_counters(pernic=True).items()}


def sample(prev_net: dict[str, Any] | None, dt: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """One sample; returns (record, network counters for the next call's rates)."""
    net = _net()
    vm = psutil.virtual_memory()
    rec: dict[str, Any] = {
        "ts": round(time.time(), 3),
        "cpu_percent": psutil.cpu_percent(interval=None),
        "cpu_percent_per_cpu": psutil.cpu_percent(interval=None, percpu=True),
        "load_avg": list(os.getloadavg()),
        "mem": {"total": vm.total, "available": vm.available, "used": vm.used, "percent": vm.percent},
        "net": {},
    }
    for nic, c in net.items():
        entry = {"bytes_sent": c["bytes_sent"], "bytes_recv": c["bytes_recv"],
                 "packets_sent": c["packets_sent"], "packets_recv": c["packets_recv"],
                 "errin": c["errin"], "errout": c["errout"], "dropin": c["dropin"], "dropout": c["dropout"]}
        if prev_net and nic in prev_net and dt > 0:
            p = prev_net[nic]
            entry["tx_bytes_per_s"] = round((c["bytes_sent"] - p["bytes_sent"]) / dt, 1)
            entry["rx_bytes_per_s"] = round((c["bytes_recv"] - p["bytes_recv"]) / dt, 1)
        rec["net"][nic] = entry
    return rec, net


def monitor(out: Path, *, interval: float, duration: float) -> int:
    """Write samples to *out* every *interval* s for *duration* s; return the number written."""
    stop = False

    def on_signal(signum, frame):  # noqa: ARG001 - signal handler signature
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    out.parent.mkdir(parents=True, exist_ok=True)
    psutil.cpu_percent(interval=None)
    psutil.cpu_percent(interval=None, percpu=True)
    prev_net = _net()
    start = last = time.monotonic()
    n = 0
    with open(out, "a", encoding="utf-8") as fh:
        while not stop:
            next_at = start + (n + 1) * interval
            if next_at > start + duration + 1e-9:
                break
            while not stop and time.monotonic() < next_at:
                time.sleep(min(0.2, max(0.0, next_at - time.monotonic())))  # the sampling period itself
            if stop:
                break
            now = time.monotonic()
            rec, prev_net = sample(prev_net, now - last)
            last = now
            rec["t"] = round(now - start, 3)
            fh.write(json.dumps(rec, separators=(",", ":")) + "\n")
            fh.flush()
            n += 1
    return n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kit.hostmon", description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="JSON-lines file to append samples to")
    ap.add_argument("--interval", type=float, default=1.0, help="seconds between samples (default 1)")
    ap.add_argument("--duration", type=float, required=True, help="stop after this many seconds")
    args = ap.parse_args(argv)
    if not (0.05 <= args.interval <= 3600):
        print(f"hostmon: --interval {args.interval}: give 0.05 to 3600 seconds", file=sys.stderr)
        return 2
    if not (0 < args.duration <= MAX_DURATION):
        print(f"hostmon: --duration {args.duration}: give more than 0 and at most {MAX_DURATION:.0f} seconds",
              file=sys.stderr)
        return 2
    try:
        n = monitor(args.out, interval=args.interval, duration=args.duration)
    except OSError as exc:
        print(f"hostmon: cannot write {args.out}: {exc.strerror}", file=sys.stderr)
        return 2
    log.debug("hostmon wrote %d samples to %s", n, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
