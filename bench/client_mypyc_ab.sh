#!/usr/bin/env bash
# Issue 18's option "compile the client's frame and accounting modules with mypyc", measured: this
# checkout's client beside a copy whose per-token modules (kit/client/_frames.py, the WebSocket parser;
# kit/client/_accounting.py, the per-token accounting; kit/metrics.py, the histograms) are compiled by
# mypyc (from the dev extra's mypy), in bench/client_cpu.py's real 1,000-session run, interleaved pair by pair.
#
#   bench/client_mypyc_ab.sh [PAIRS]          # default 4; needs gcc and python3-dev (./loadkit setup has both)
#
# The compiled copy is a git worktree of HEAD under a temporary folder, removed at the end.
# Results: docs/benchmarks.md, "client_cpu" (mypyc).
set -euo pipefail
pairs=${1:-4}
source "$(dirname "$0")/_head_worktree.sh" loadkit-mypyc
ln -s "$here/.venv" "$tree/.venv"
(cd "$tree" && "$here/.venv/bin/mypyc" kit/client/_frames.py kit/client/_accounting.py kit/metrics.py >"$tree/mypyc.log" 2>&1) \
  || { echo "mypyc failed: $(tail -5 "$tree/mypyc.log")" >&2; exit 1; }
ls "$tree"/kit/client/_frames.*.so "$tree"/kit/client/_accounting.*.so "$tree"/kit/metrics.*.so >/dev/null
cd "$here"
.venv/bin/python bench/client_cpu.py --real-only --checkout "$tree" --checkout . --repeat "$pairs"
