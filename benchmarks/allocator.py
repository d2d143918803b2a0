"""A batched training step with glibc's default malloc thresholds and with
``descentlab.train.allocator.keep_freed_memory`` (what ``train_job`` and
``train_batched`` call).

The thresholds are process-wide, so each measurement is its own process:
after warm-up steps, the median time of a training step (each run's
minibatch, the batched forward and backward: ``ModelStack.loss_and_grads``),
the minor page faults per step and the process's max RSS. Settings are
interleaved (defaults, kept, defaults, ...) over the repeats; medians over
repeats are reported. One torch thread (the workflow's default).

    python benchmarks/allocator.py [--repeats 3] [--cases cnn-bn:16,cnn-bn:1,mlp-adam:32]

Writes benchmarks/results/allocator.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _publish import publish  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "allocator.md"
SETTINGS = ("glibc defaults", "keep_freed_memory")


def child(problem: str, runs: int, setting: str, steps: int) -> None:
    """One measurement in this process: print its numbers as JSON."""
    import torch

    from descentlab.train.allocator import keep_freed_memory

    if setting == SETTINGS[1] and not keep_freed_memory():
        raise SystemExit("keep_freed_memory had no effect here (not glibc)")
    torch.set_num_threads(1)
    from stack_size import stepper

    step, _ = stepper(problem, runs)
    for _ in range(5):
        step()
    times = []
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    print(json.dumps({"ms": statistics.median(times) * 1e3, "faults": faults / steps,
                      "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def measure(problem: str, runs: int, setting: str, steps: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", problem, str(runs), setting, "--steps", str(steps)],
        check=True, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cases", default="cnn-bn:16,cnn-bn:1,mlp-adam:32", help="problem:runs (workloads of stack_size.py)")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--child", nargs=3, metavar=("PROBLEM", "RUNS", "SETTING"))
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]), args.child[2], args.steps)
        return
    cases = [(c.split(":")[0], int(c.split(":")[1])) for c in args.cases.split(",")]
    results = {(case, s): [] for case in cases for s in SETTINGS}
    for _ in range(args.repeats):
        for case in cases:
            for setting in SETTINGS:
                results[case, setting].append(measure(*case, setting, args.steps))
    lines = [
        "# glibc malloc thresholds: defaults vs keep_freed_memory",
        "",
        f"`python benchmarks/allocator.py --repeats {args.repeats} --cases {args.cases} --steps {args.steps}` on"
        f" {platform.machine()}, {os.cpu_count()} cores, {platform.libc_ver()[0]} {platform.libc_ver()[1]}, one torch"
        " thread, CPU only. One batched training step (minibatches, forward, backward; no optimizer step), each"
        " setting in its own process, interleaved; medians over repeats of each process's median step.",
        "",
        "| problem | runs stacked | malloc | ms per step | minor page faults per step | peak RSS MB |",
        "|---|---|---|---|---|---|",
    ]
    for (problem, runs) in cases:
        for setting in SETTINGS:
            got = results[(problem, runs), setting]
            med = lambda key: statistics.median(g[key] for g in got)  # noqa: E731
            lines.append(f"| {problem} | {runs} | {setting} | {med('ms'):.2f} | {med('faults'):,.0f} | {med('rss_mb'):,.0f} |")
    lines.append("")
    publish(lines, args.out)


if __name__ == "__main__":
    main()
