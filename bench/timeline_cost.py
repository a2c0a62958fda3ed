#!/usr/bin/env python3
"""What latency over time costs a generator process, per token: the per-second cut of its histograms
(SecondHistograms.close_second), the cumulative histograms in each second's status.json, and the
per-second histograms written into histograms.json at the end.

    .venv/bin/python bench/timeline_cost.py [--seconds 60] [--tokens-per-s 10000]

Values are drawn like a real run's (delivery 2-60 ms, gaps 40-70 ms, 2.1 s queries of 43 tokens,
a session created and connected every 14 ms); CPU from process_time.  The all-in figure of a real
run, before and after, is bench/client_cpu.py --real-run (README: Benchmarks of the kit itself).
"""

from __future__ import annotations

import argparse
import json
import random
import time

from kit.client._accounting import TIMELINE_HISTOGRAMS
from kit.client._load import STATUS_HISTOGRAMS
from kit.metrics import Histogram, SecondHistograms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--tokens-per-s", type=int, default=10_000)
    args = ap.parse_args()
    hists = {n: Histogram("us") for n in TIMELINE_HISTOGRAMS}
    second = SecondHistograms()
    rnd = random.Random(1)
    queries = args.tokens_per_s // 43
    close = status = 0.0
    for sec in range(args.seconds):
        for _ in range(args.tokens_per_s):
            hists["delivery"].record(rnd.randint(2_000, 60_000))
            hists["inter_token"].record(rnd.randint(40_000, 70_000))
        for _ in range(queries):
            hists["ttft"].record(rnd.randint(3_000, 30_000))
            hists["latency"].record(rnd.randint(2_000_000, 2_200_000))
        for _ in range(queries // 3):
            hists["create"].record(rnd.randint(1_000, 9_000))
            hists["connect"].record(rnd.randint(2_000, 20_000))
        t0 = time.process_time()
        second.close_second(sec, hists)
        t1 = time.process_time()
        json.dumps({f"{n}_histogram": hists[n].to_dict() for n in STATUS_HISTOGRAMS})
        t2 = time.process_time()
        close, status = close + t1 - t0, status + t2 - t1
    t0 = time.process_time()
    size = len(json.dumps(second.to_dict()))
    final = time.process_time() - t0
    tokens = args.seconds * args.tokens_per_s
    print(
        f"{args.seconds} s at {args.tokens_per_s} tokens/s: per-second cut {close / args.seconds * 1e3:.2f} ms/s, "
        f"status histograms {status / args.seconds * 1e3:.2f} ms/s, histograms.json {final * 1e3:.0f} ms "
        f"({size / 1e6:.1f} MB)"
    )
    print(
        f"per token: cut {close / tokens * 1e6:.3f} us + status {status / tokens * 1e6:.3f} us + end "
        f"{final / tokens * 1e6:.3f} us = {(close + status + final) / tokens * 1e6:.2f} us"
    )


if __name__ == "__main__":
    main()
