"""The controller's work on a 100,000-session run, with no load: merge, report, compare (issue 18).

Writes a synthetic run (``devkit.synthrun``: by default 10 generator folders of 10,000 sessions x 3
queries x 20 tokens, in the exact formats ``python -m kit.client`` writes), then measures each step
the controller takes on it, each in a fresh process:

- ``merge``: ``kit.client.merge_outputs`` of the generators' folders (what ``fab run`` does after the
  load), plus the run record ``fab run`` adds;
- ``report``: ``kit.report.write_report`` of the merged folder (report.txt, report.html; no ``hosts/``);
- ``compare``: ``fab compare`` of the run against a second one (a copy: the bootstrap costs the same),
  with the bootstrap's own time (``bootstrap_s``) over every query latency and TTFT of both runs.

Prints per step wall and CPU seconds, resident memory before the step (imports done) and its peak
during the step (VmHWM), and the sizes of the inputs and of the merged run::

    .venv/bin/python bench/merge_scale.py                      # 100,000 sessions in /tmp/merge-scale
    .venv/bin/python bench/merge_scale.py --sessions 2000 --keep --json figures.json

The synthetic folders are kept between runs when ``--root`` already holds them with the same shape
(``--fresh`` rewrites them).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from devkit.synthrun import measure, write_generator_outputs  # noqa: E402


def _mb(path: Path) -> float:
    if path.is_file():
        return round(path.stat().st_size / 2**20, 1)
    return round(sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20, 1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", type=Path, default=Path("/tmp/merge-scale"))
    ap.add_argument("--generators", type=int, default=10)
    ap.add_argument("--sessions", type=int, default=10_000, help="sessions per generator folder")
    ap.add_argument("--queries", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=20)
    ap.add_argument("--jobs", type=int, default=2, help="processes writing the synthetic folders")
    ap.add_argument("--fresh", action="store_true", help="rewrite the synthetic folders even when present")
    ap.add_argument("--keep", action="store_true", help="keep the merged runs (the inputs are always kept)")
    ap.add_argument("--json", type=Path, help="also write the figures to this file")
    args = ap.parse_args(argv)

    shape = {"generators": args.generators, "sessions": args.sessions, "queries": args.queries, "tokens": args.tokens}
    gens, stamp = args.root / "generators", args.root / "generators" / "shape.json"
    if args.fresh or not stamp.exists() or json.loads(stamp.read_text()) != shape:
        shutil.rmtree(gens, ignore_errors=True)
        t = time.perf_counter()
        write_generator_outputs(
            gens,
            generators=args.generators,
            sessions=args.sessions,
            queries=args.queries,
            tokens=args.tokens,
            jobs=args.jobs,
        )
        stamp.write_text(json.dumps(shape))
        print(f"synthetic run written in {time.perf_counter() - t:.1f} s: {gens}")
    dirs = [str(p) for p in sorted(gens.glob("gen*/out"), key=lambda p: int(p.parent.name[3:]))]
    run_a, run_b = args.root / "run-a", args.root / "run-b"
    for d in (run_a, run_b):
        shutil.rmtree(d, ignore_errors=True)

    figures: dict[str, object] = {
        "shape": shape,
        "sessions": args.generators * args.sessions,
        "inputs_mb": _mb(gens),
        "input_files_mb": {
            name: round(sum(_mb(Path(d) / name) for d in dirs), 1)
            for name in ("queries.csv", "sessions.csv", "timeline.csv", "histograms.json", "status.json")
        },
    }
    figures["merge"] = measure("devkit.synthrun:merge_step", dirs, str(run_a))
    figures["run_mb"] = _mb(run_a)
    figures["run_files_mb"] = {f.name: _mb(f) for f in sorted(run_a.iterdir()) if f.is_file()}
    shutil.copytree(run_a, run_b)
    figures["report"] = measure("devkit.synthrun:report_step", str(run_a))
    figures["compare"] = measure(
        "devkit.synthrun:compare_step", str(run_a), str(run_b), str(args.root / "compare.html")
    )
    if not args.keep:
        for d in (run_a, run_b):
            shutil.rmtree(d, ignore_errors=True)

    print(
        f"{figures['sessions']:,} sessions ({args.generators} x {args.sessions:,}, {args.queries} queries, "
        f"{args.tokens} tokens each): inputs {figures['inputs_mb']} MB {figures['input_files_mb']}"
    )
    print(f"merged run: {figures['run_mb']} MB {figures['run_files_mb']}")
    for step in ("merge", "report", "compare"):
        m = dict(figures[step])  # type: ignore[arg-type]
        extra = {k: v for k, v in m.items() if k not in ("target", "wall_s", "cpu_s", "rss_before_mb", "rss_peak_mb")}
        print(
            f"{step:<8} wall {m['wall_s']:7.2f} s  cpu {m['cpu_s']:7.2f} s  RSS {m['rss_before_mb']:6.1f} -> "
            f"peak {m['rss_peak_mb']:7.1f} MB  {extra if extra else ''}"
        )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
