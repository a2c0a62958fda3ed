"""The whole suite as three pytest processes side by side (``./loadkit test``, CI's ``.ci/run``).

Most of the suite's time is waiting: runs that last their seconds, Ansible over SSH, a lab's services
coming up.  Serial, it took 28 minutes on this 2-core machine (using about one core); three shards that wait
at the same time take about half.  Four were faster by two minutes but ran at a load average of 10, where
every run failed a different timing-sensitive test: three it is.  The shards split what shares state so
that none of them can disturb another:

- ``lab-e2e``: the deployed six-host lab (tests/lab/test_fab_run_lab.py: the longest set-up), then three
  loopback integration files;
- ``root``: the tests that deploy on this machine (tests/integration/test_deploy_local.py: the root
  namespace's sysctls, /opt/wsproxy-loadkit/localhost, fixed ports), the other labs (each its own
  namespaces and subnet) and the unit tests;
- ``local``: the rest of the integration tests, on loopback (free ports, their own temporary folders).

Each shard has its own ``--basetemp`` (pytest's cleanup of numbered temporary folders never sees another
shard's) and its own log; a shard's output is printed whole when it ends, then one line per shard.  The
exit status is the first failing shard's (0 when every shard passed).  Options after ``./loadkit test``
go to every shard (``-q -ra --durations=20``); given a test path, ``./loadkit test`` runs plain pytest on it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: loopback integration tests that run after the deployed lab's in its shard (it ends first otherwise)
AFTER_LAB = [
    "tests/integration/test_merge_scale.py",
    "tests/integration/test_inventory_validation.py",
    # 35 s, to even the shards out: on 2026-12-05 lab-e2e ended at 798 s and local at 843 s
    "tests/integration/test_haproxy_tls_role.py",
    # 42 s: the lab's deploy got 145 s faster (lab-e2e 692 s, local 776 s, root 706 s; 2026-12-05 evening)
    "tests/integration/test_sim_hardening.py",
]

#: name -> pytest arguments (paths and selections, run in that order); together they are the whole of tests/
SHARDS: dict[str, list[str]] = {
    "lab-e2e": ["tests/lab/test_fab_run_lab.py", *AFTER_LAB],
    "root": [
        "tests/integration/test_deploy_local.py",
        "tests/lab",
        "--ignore=tests/lab/test_fab_run_lab.py",
        "tests/unit",
    ],
    "local": [
        "tests/integration",
        "--ignore=tests/integration/test_deploy_local.py",
        *(f"--ignore={p}" for p in AFTER_LAB),
    ],
}


def main(argv: list[str]) -> int:
    base = Path(tempfile.mkdtemp(prefix="loadkit-suite-"))
    procs: dict[str, tuple[subprocess.Popen, Path, float]] = {}
    for name, selection in SHARDS.items():
        log = base / f"{name}.log"
        cmd = [sys.executable, "-m", "pytest", *selection, *argv, f"--basetemp={base / name}", "-p", "no:cacheprovider"]
        with open(log, "w") as fh:
            procs[name] = (subprocess.Popen(cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT), log, time.monotonic())
    print(f"suite: {len(procs)} shards side by side ({', '.join(procs)}); logs in {base}", flush=True)
    results: dict[str, tuple[int, float]] = {}
    by_pid = {proc.pid: name for name, (proc, _, _) in procs.items()}
    try:
        while len(results) < len(procs):
            pid, status = os.wait()  # whichever shard ends first
            name = by_pid.get(pid)
            if name is None:
                continue
            proc, log, t0 = procs[name]
            proc.returncode = os.waitstatus_to_exitcode(status)
            results[name] = (proc.returncode, time.monotonic() - t0)
            print(f"\n===== shard {name}: exit {proc.returncode} after {results[name][1]:.0f} s =====", flush=True)
            sys.stdout.write(log.read_text(errors="replace"))
            sys.stdout.flush()
    except KeyboardInterrupt:  # each shard's pytest got the SIGINT too (one process group): wait for them
        for proc, _, _ in procs.values():
            proc.wait()
        raise
    print("\n===== suite =====")
    for name, (rc, took) in results.items():
        print(f"shard {name:8} {'passed' if rc == 0 else f'FAILED (exit {rc})':18} {took:6.0f} s", flush=True)
    failed = [rc for rc, _ in results.values() if rc != 0]
    return failed[0] if failed else 0


if __name__ == "__main__":
    args = sys.argv[1:]
    if any(not a.startswith("-") and os.path.exists(a.split("::")[0]) for a in args):
        os.chdir(REPO)
        os.execv(sys.executable, [sys.executable, "-m", "pytest", *args])
    sys.exit(main(args))
