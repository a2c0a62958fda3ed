"""The non-run Fabric tasks: deploy, down, status, logs, analyze (``fabfile.py`` only parses options).

Each function returns an exit status and prints what it found; problems on
individual hosts are listed per host (never swallowed).  :func:`analyze` finds its run by name or by tags
(``kit.compare.select_runs``: the newest carrying them) and gives a script one JSON document instead of the
report when asked (``fab analyze --json``).
"""

from __future__ import annotations

import json
import logging
import shlex
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from kit.inventory import Inventory, load_inventory
from kit.paths import PLAYBOOKS, REPO, RESULTS

from . import _hostops as ops
from ._logs import fetch_logs
from ._options import RunError
from ._remote import GroupException, close_all, connect, describe_failures, fan_out
from ._services import check_health

__all__ = ["deploy", "status", "logs", "analyze", "supervisor_status", "find_run"]

log = logging.getLogger(__name__)


def _say(msg: str) -> None:
    print(msg, flush=True)


def deploy(inventory: Path, playbook: str = "site.yml", extra: list[str] | None = None) -> int:
    """``ansible-playbook -i <inventory> playbooks/<playbook>``; returns its exit status."""
    exe = Path(sys.executable).parent / "ansible-playbook"
    book = PLAYBOOKS / playbook
    if not book.exists():
        _say(f"{book} does not exist: the playbooks are not installed in this checkout")
        return 2
    load_inventory(inventory)  # a clear error before Ansible starts
    argv = [str(exe if exe.exists() else "ansible-playbook"), "-i", str(inventory), str(book), *(extra or [])]
    _say("+ " + " ".join(argv))
    return subprocess.run(argv, cwd=REPO, stdin=subprocess.DEVNULL).returncode


_SUPERVISOR = r"""
f={conf}
if [ -f "$f" ]; then echo "supervisor: $f"; supervisorctl -c "$f" status; exit $?; fi
if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
  systemctl --no-pager --plain list-units {units}; exit $?
fi
echo "no $f and no systemd: nothing deployed here"; exit 3
"""


def supervisor_status(c: Any) -> str:
    h = c.inventory_host
    res = ops.run(
        c,
        _SUPERVISOR.format(conf=shlex.quote(h.supervisord_conf), units=shlex.quote(f"{h.vars['kit_unit_prefix']}*")),
        warn=True,
    )
    if res.exited not in (0,):
        raise RuntimeError(f"process supervisor reports problems (exit {res.exited}):\n{res.stdout.strip()}")
    return res.stdout.strip()


def status(inventory: Path, out: Callable[[str], None] = _say) -> int:
    """Health of every service on every host and each host's supervisor; 0 when all is well."""
    inv = load_inventory(inventory)
    bad = 0
    for r in check_health(inv):
        out(f"{'ok  ' if r['ok'] else 'FAIL'} {r['host']:<16} {r['service']:<12} {r['target']:<22} {r['detail']}")
        bad += not r["ok"]
    conns = [connect(h) for h in _service_hosts(inv)]
    try:
        results = dict(fan_out(conns, supervisor_status))
    except GroupException as exc:
        results = dict(exc.result)
        for line in describe_failures(exc):
            out(f"FAIL {line}")
        bad += len(describe_failures(exc))
    finally:
        close_all(conns)
    for c, v in results.items():
        if not isinstance(v, BaseException):
            out(f"ok   {c.inventory_host.name:<16} supervisor\n" + "\n".join("       " + x for x in v.splitlines()))
    return 0 if bad == 0 else 1


def _service_hosts(inv: Inventory):
    names = []
    for g in ("redis", "haproxy", "wsproxy", "sim"):
        names += [h for h in inv.groups.get(g, []) if h not in names]
    return [inv.hosts[n] for n in names]


def logs(inventory: Path, dest: Path, out: Callable[[str], None] = _say) -> int:
    inv = load_inventory(inventory)
    conns = {n: connect(h) for n, h in inv.hosts.items()}
    try:
        problems = fetch_logs(inv, conns, dest)
    finally:
        close_all(conns.values())
    for p in problems:
        out(f"FAIL {p}")
    files = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    out(f"{len(files)} log file(s) in {dest}" + "".join(f"\n  {f}" for f in files[:50]))
    return 1 if problems else 0


def find_run(name: str, results: Path = RESULTS) -> Path:
    """A run folder from an id, a folder, or a tarball (unpacked to a temporary folder)."""
    for cand in (Path(name), results / name, results / f"{name}.tar.gz"):
        if cand.is_dir():
            return cand
        if cand.is_file() and cand.name.endswith(".tar.gz"):
            tmp = Path(tempfile.mkdtemp(prefix="wsproxy-loadkit-analyze-"))
            with tarfile.open(cand) as tf:
                tf.extractall(tmp, filter="data")
            found = [p for p in tmp.iterdir() if p.is_dir()]
            if found:
                return found[0]
    raise FileNotFoundError(f"no run {name!r}: give a run id under {results}/, a folder or a .tar.gz")


def _analyzed_run(name: str | None, tags: Mapping[str, str], results: Path) -> Path:
    """The run ``fab analyze`` reads: *name* (which must carry *tags*, when given), else the newest run under
    *results* carrying every tag.  FileNotFoundError / RunError (exit 2), one line, when there is none."""
    from kit.compare import run_tags, select_runs, tags_text

    if name:
        run_dir = find_run(name, results)
        if tags:
            have = run_tags(_summary_of(run_dir))
            if not tags.items() <= have.items():
                raise RunError(
                    f"run {name!r} does not carry --tag {tags_text(tags)} (its tags: {tags_text(have)}): "
                    "drop --tag or name another run"
                )
        return run_dir
    if not tags:
        raise RunError(f"give a run (an id under {results}/, a folder or a .tar.gz) or --tag key=value")
    found = select_runs(tags, results)
    if not found:
        raise FileNotFoundError(f"no run under {results}/ carries --tag {tags_text(tags)}: tag a run (fab run --tag)")
    return found[-1]


def _summary_of(run_dir: Path) -> dict[str, Any]:
    """The run's summary.json, {} when it has none (a folder of the client's own output: queries.csv only)."""
    path = run_dir / "summary.json"
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise RunError(f"{path}: not JSON ({exc}): the run folder is damaged") from None


def analyze(
    name: str | None,
    out: Callable[[str], None] = _say,
    *,
    tags: Mapping[str, str] | None = None,
    results: Path = RESULTS,
    on_result: Callable[[dict[str, Any]], None] | None = None,
) -> int:
    """Reprint a run's report and the per-query analysis (percentiles, histogram, errors).

    The run is *name* or, without one, the newest under *results* carrying every one of *tags*.  With
    *on_result*, the report is not printed (nor rewritten): it gets the one JSON document instead, the
    run's id, folder, tags, status, the analysis and summary.json.  A run without queries.csv is exit 2:
    there is nothing to analyze (its generators wrote no queries).
    """
    from kit.client import analyze as client_analyze
    from kit.client import format_report
    from kit.compare import run_tags, tags_text
    from kit.report import write_report

    run_dir = _analyzed_run(name, tags or {}, results)
    summary = _summary_of(run_dir)
    queries = run_dir / "queries.csv"
    if on_result is None:
        out(f"run: {run_dir}  tags: {tags_text(run_tags(summary))}")
        if summary:
            out(write_report(run_dir))
    if not queries.exists():
        raise FileNotFoundError(f"{queries} is missing: no per-query data to analyze (did its generators run?)")
    try:
        analysis = client_analyze([queries])
    except ValueError as exc:  # kit.client's AnalyzeError: a damaged queries.csv, named with its line
        raise RunError(str(exc)) from None
    if on_result is None:
        out(format_report(analysis))
        return 0
    on_result(
        {
            "exit_status": 0,
            "run_id": summary.get("run_id") or run_dir.name,
            "results_dir": str(run_dir),
            "tags": run_tags(summary),
            "status": summary.get("status"),
            "status_reason": summary.get("status_reason"),
            "analysis": {k: v for k, v in analysis.items() if not k.startswith("_")},
            "summary": summary,
        }
    )
    return 0
