"""The default run (``snakemake --cores 2``, scale cpu) batched vs one by one.

Runs the whole workflow from empty results twice, ``batched_training=False``
(before batching) then ``True`` (the default), each under ``/usr/bin/time -v``,
and writes their wall time, CPU time and peak memory, with the training jobs'
wall seconds per study (the job benchmark files, ``descentlab.timings``), to
benchmarks/results/default_run.md. One run of each (about 20 minutes each
on 2 cores), one after the other: not interleaved, so run it on a quiet
machine. ``--log-of MODE=PATH`` reuses a finished run (its time log and
results folder PATH.results) instead of running that mode again.

    python benchmarks/default_run.py [--cores 2] [--work /tmp/default-run] [--log-of alone=/tmp/dr-a]
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _publish import publish  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "default_run.md"
MODES = {"alone": "False", "batched": "True"}


def run(mode: str, cores: int, base: Path) -> Path:
    """Run the workflow in ``mode``; returns the path prefix of its log and results."""
    results, log = Path(f"{base}-{mode}.results"), Path(f"{base}-{mode}.log")
    if results.exists():
        raise SystemExit(f"{results} exists: the default run is timed from empty results; remove it first")
    command = ["/usr/bin/time", "-v", "snakemake", "--cores", str(cores),
               "--config", f"batched_training={MODES[mode]}", f"results={results}"]
    print(f"{mode}: {' '.join(command)}", file=sys.stderr, flush=True)
    with log.open("w") as handle:
        subprocess.run(command, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT, check=True)
    return Path(f"{base}-{mode}")


def parse_time(log: Path) -> dict[str, float]:
    """Wall seconds, user and system CPU seconds and peak RSS (GB) from ``/usr/bin/time -v``."""
    text = log.read_text()

    def field(label: str) -> str:
        match = re.search(rf"^\s*{re.escape(label)}: (.+)$", text, re.MULTILINE)
        if match is None:
            raise ValueError(f"{log}: no '{label}' line (not a /usr/bin/time -v log?)")
        return match.group(1).strip()

    wall = 0.0
    for part in field("Elapsed (wall clock) time (h:mm:ss or m:ss)").split(":"):
        wall = wall * 60 + float(part)
    if "exited with non-zero status" in text:
        raise ValueError(f"{log}: the workflow failed")
    return {"wall_s": wall, "user_s": float(field("User time (seconds)")), "system_s": float(field("System time (seconds)")),
            "peak_gb": float(field("Maximum resident set size (kbytes)")) / 2**20}


def training_wall_per_study(results: Path):
    from descentlab.timings import read_job_benchmarks

    jobs = read_job_benchmarks(results)
    return jobs[jobs.stage == "train"].groupby("study").wall_s.sum()


def commit() -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path("/tmp/default-run"), help="prefix of the logs and results folders")
    parser.add_argument("--log-of", action="append", default=[], metavar="MODE=PATH",
                        help="reuse a finished run: PATH.log (its /usr/bin/time -v log) and PATH.results")
    parser.add_argument("--commit-of", action="append", default=[], metavar="MODE=COMMIT",
                        help="the commit a reused run (--log-of) ran at (default: this checkout's)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    given = dict(item.split("=", 1) for item in args.log_of)
    if set(given) - set(MODES):
        raise SystemExit(f"--log-of: modes are {', '.join(MODES)}, got {', '.join(given)}")
    prefixes = {mode: Path(given[mode]) if mode in given else run(mode, args.cores, args.work) for mode in MODES}
    times = {mode: parse_time(Path(f"{p}.log")) for mode, p in prefixes.items()}
    studies = {mode: training_wall_per_study(Path(f"{p}.results")) for mode, p in prefixes.items()}
    write(args, times, studies)


def write(args, times, studies) -> None:
    a, b = times["alone"], times["batched"]
    saved = 1 - b["wall_s"] / a["wall_s"]
    commits = {mode: commit() for mode in MODES} | dict(item.split("=", 1) for item in args.commit_of)
    lines = [
        "# The default run, batched vs one by one",
        "",
        f"The whole default (cpu) workflow from empty results, `/usr/bin/time -v snakemake --cores {args.cores}` on"
        f" {platform.machine()}, {os.cpu_count()} cores, no GPU (one by one at commit {commits['alone']}, batched at"
        f" {commits['batched']}: the code between them changed only the batched path): `python benchmarks/default_run.py`."
        " One run of each, one after the other (not interleaved; the machine is shared, so the wall times carry its noise).",
        "",
        "| config | wall | user + system CPU s | peak RSS |",
        "|---|---|---|---|",
    ]
    for mode, label in (("batched", "`batched_training: true` (default)"), ("alone", "`--config batched_training=False`")):
        t = times[mode]
        minutes, seconds = divmod(round(t["wall_s"]), 60)
        lines.append(f"| {label} | {minutes} min {seconds} s | {t['user_s']:,.0f} + {t['system_s']:,.0f} = "
                     f"{t['user_s'] + t['system_s']:,.0f} | {t['peak_gb']:.2f} GB |")
    lines += [
        "",
        f"Batching saves {saved:.0%} of the default run's wall time (the issue's target: a third).",
        "",
        "Training jobs' wall seconds per study (summed over its jobs; two jobs run at once):",
        "",
        "| study | one by one | batched | ratio |",
        "|---|---|---|---|",
    ]
    table = studies["alone"].to_frame("alone").join(studies["batched"].to_frame("batched"), how="outer").fillna(0.0)
    for study, row in table.sort_values("alone", ascending=False).iterrows():
        ratio = f"{row.alone / row.batched:.2f}x" if row.batched else ""
        lines.append(f"| {study} | {row.alone:.0f} | {row.batched:.0f} | {ratio} |")
    lines.append(f"| total | {table.alone.sum():.0f} | {table.batched.sum():.0f} | {table.alone.sum() / table.batched.sum():.2f}x |")
    lines.append("")
    publish(lines, args.out)


if __name__ == "__main__":
    main()
