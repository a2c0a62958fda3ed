#!/usr/bin/env bash
# The simulator's CPU per request at a real run's sparse pace under Granian (what the kit deploys) beside the
# same app under Uvicorn (uvloop + httptools, one process, one thread), interleaved round by round by
# bench/sim_requests.py. Why: at ~500 requests a second each request arrives alone, and Granian hands every
# request from its Rust I/O thread to the event loop's thread and back; wrk's saturating load
# (bench/asgi_servers.py, where Granian won) hides that cost.
#
#   bench/sim_server_ab.sh [ROUNDS]     # default 2; needs PyPI for uvicorn and httptools (not in the lock)
#
# The Uvicorn copy is a git worktree of HEAD under a temporary folder, with uvicorn and httptools installed
# into it (pip --target) and kit/sim/_serve.py's serve() redefined to run uvicorn.run(kit.sim.app) in the one
# process: no worker processes, no respawn, no head timeout or size limit (what Granian gives the kit), so
# this measures the request path only. Removed at the end. Results: docs/benchmarks.md, "sim_requests".
set -euo pipefail
rounds=${1:-2}
source "$(dirname "$0")/_head_worktree.sh" loadkit-uvicorn
"$here/.venv/bin/pip" install -q --target "$tree/.uvicorn" uvicorn==0.55.0 httptools==0.9.0 \
  || { echo "pip could not install uvicorn and httptools (PyPI needed)" >&2; exit 1; }
cat >>"$tree/kit/sim/_serve.py" <<EOF


def serve(settings, *, log_level="INFO", loop=GRANIAN_LOOP, limits=None):  # noqa: F811 (bench/sim_server_ab.sh)
    import sys

    sys.path.insert(0, "$tree/.uvicorn")
    import uvicorn

    from ._workers import STATS_DIR_ENV

    os.environ[STATS_DIR_ENV] = tempfile.mkdtemp(prefix="kit-sim-stats-")
    import kit.sim

    uvicorn.run(kit.sim.app, host=settings.host, port=settings.port, loop="uvloop", http="httptools",
                lifespan="on", access_log=False, log_level="warning", ws="none")
EOF
cd "$here"
echo "Granian: $here; Uvicorn: $tree"
.venv/bin/python bench/sim_requests.py --checkout . --checkout "$tree" --health --rounds "$rounds"
