#!/usr/bin/env bash
# The simulator's CPU per request at a real run's sparse pace under Uvicorn (what the kit deploys since the
# commit after 6c749f5) beside Granian (what it deployed until 6c749f5), interleaved round by round by
# bench/sim_requests.py. Why: at ~500 requests a second each request arrives alone, and Granian hands every
# request from its Rust I/O thread to the event loop's thread and back; wrk's saturating load
# (bench/asgi_servers.py, where Granian won) hides that cost.
#
#   bench/sim_server_ab.sh [ROUNDS]     # default 2
#
# The Granian copy is a git worktree of 6c749f5 under a temporary folder (granian is in the lock's dev
# extra), removed at the end. Both serve the same app with their own worker supervision and request-head
# bounds, one worker each. Results: docs/benchmarks.md, "sim_requests".
set -euo pipefail
rounds=${1:-2}
source "$(dirname "$0")/_head_worktree.sh" loadkit-granian 6c749f5
cd "$here"
echo "Granian: $tree (6c749f5); Uvicorn: $here"
.venv/bin/python bench/sim_requests.py --checkout "$tree" --checkout . --health --rounds "$rounds"
