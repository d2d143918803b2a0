"""Fraction of a workflow run's wall time spent outside training steps.

Run the workflow first, timing it, then point this script at its results:

    /usr/bin/time -f %e snakemake --cores all --config results=/tmp/cpu-results
    python benchmarks/workflow_overhead.py /tmp/cpu-results --wall SECONDS --cores 2

Training time is the sum of the runs' ``train_seconds`` (status.json: the
training loop, its evaluations and instruments, excluding Python/torch
start-up, data loading and artifact writing). Everything else (Snakemake
scheduling, job start-up, data preparation, analyses, figures) is "outside".
Core-seconds available = wall x cores. Writes benchmarks/results/workflow_overhead.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

OUT = Path(__file__).resolve().parent / "results" / "workflow_overhead.md"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path)
    parser.add_argument("--wall", type=float, required=True, help="wall-clock seconds of the snakemake run")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--label", default="default run (scale cpu)")
    args = parser.parse_args()
    statuses = [json.loads(p.read_text()) for p in sorted((args.results / "runs").glob("*/status.json"))]
    train = sum(s.get("train_seconds") or 0.0 for s in statuses)
    jobs = len(list((args.results / "logs").rglob("*.log")))
    core_seconds = args.wall * args.cores
    lines = [
        "# Workflow wall time outside training steps",
        "",
        f"{args.label}: {len(statuses)} runs, {jobs} jobs, {args.wall:.0f} s wall on {args.cores} cores "
        f"({core_seconds:.0f} core-s). Command: `python benchmarks/workflow_overhead.py RESULTS --wall S --cores N`.",
        "",
        "| quantity | value |",
        "|---|---|",
        f"| training loops (sum of train_seconds) | {train:.0f} core-s |",
        f"| fraction of core time in training loops | {train / core_seconds:.1%} |",
        f"| fraction outside training (start-up, scheduling, data, analyses, figures, idle cores) | {1 - train / core_seconds:.1%} |",
    ]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(lines) + "\n")
    print(OUT.read_text())


if __name__ == "__main__":
    main()
