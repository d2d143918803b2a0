"""Time per run-step of one batched training step against the number of runs stacked.

Why ``batched.CPU_MAX_STACK`` caps a stack on a CPU: for the MNIST-1D MLP and
the digits CNN with BatchNorm (the workloads of benchmarks/batched.py), one
``ModelStack.loss_and_grads`` (each run's minibatch, the batched forward and
backward) at R runs, divided by R, with the allocator setting of a training
job (``keep_freed_memory``). Sizes are interleaved (every size once per
repeat), medians over repeats, one torch thread (the workflow's default). The
memory column is the largest activation of the batched pass (R runs x batch x
the largest layer output of one run), which is what grows with R.

    python benchmarks/stack_size.py [--repeats 5] [--sizes 1,8,16,32,48,64,128]

Writes benchmarks/results/stack_size.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _publish import publish  # noqa: E402
from batched import workload  # noqa: E402  (the same problems as the batched benchmark)

from descentlab.data import build_dataset  # noqa: E402
from descentlab.spec import validate  # noqa: E402
from descentlab.train.allocator import keep_freed_memory  # noqa: E402
from descentlab.train.batched_eval import largest_output_elements  # noqa: E402
from descentlab.train.stack import ModelStack  # noqa: E402
from descentlab.train.training import Training  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "stack_size.md"
PROBLEMS = {"MNIST-1D MLP (64x2)": "mlp-adam", "digits CNN + BatchNorm (16 ch, 2 blocks)": "cnn-bn"}


def largest_activation(run: Training, xb: torch.Tensor) -> int:
    """Elements of the largest layer output of one run's model on a minibatch."""
    return largest_output_elements(run.model, xb)


def stepper(name: str, runs: int):
    """One batched step of ``runs`` runs of the workload ``name`` (seeds 0..runs-1), and the run's largest activation."""
    base = workload(name, 300, 300)[0]
    data = build_dataset(base["dataset"])
    trainings = [Training(validate(dict(base, seed=k)), data, torch.device("cpu")) for k in range(runs)]
    stack = ModelStack(trainings, trainings[0].loss_fn)
    x, y = trainings[0].x["train"], trainings[0].y["train"]

    def step() -> None:
        idx = torch.stack([t.sampler.next() for t in trainings])
        stack.loss_and_grads(x[idx], y[idx], batched_x=True, inactive=[])

    return step, largest_activation(Training(validate(base), data, torch.device("cpu")), x[: base["batch_size"]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sizes", default="1,8,16,32,48,64,128")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    torch.set_num_threads(1)
    keep_freed_memory()  # as train_job does (benchmarks/results/allocator.md)
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    for label, name in PROBLEMS.items():
        steps = {R: stepper(name, R) for R in sizes}
        times: dict[int, list[float]] = {R: [] for R in sizes}
        for _ in range(args.repeats):
            for R, (step, _) in steps.items():
                for _ in range(2):  # warm-up
                    step()
                n = max(4, 128 // R)
                start = time.perf_counter()
                for _ in range(n):
                    step()
                times[R].append((time.perf_counter() - start) / n / R * 1e3)
        for R in sizes:
            activation_mb = R * steps[R][1] * 4 / 2**20
            rows.append((label, R, statistics.median(times[R]), activation_mb))
        print(label, {R: round(statistics.median(t), 3) for R, t in times.items()}, file=sys.stderr, flush=True)
    lines = [
        "# Time per run-step against the number of runs stacked",
        "",
        f"`python benchmarks/stack_size.py --repeats {args.repeats} --sizes {args.sizes}` on {platform.machine()},"
        f" {os.cpu_count()} cores, one torch thread, CPU only: one batched training step (minibatches, forward,"
        " backward; no optimizer step) of R runs, divided by R; sizes interleaved, medians over repeats."
        " Memory: the largest activation of the batched pass (float32).",
        "",
        "| problem | runs stacked | ms per run-step | largest activation MB |",
        "|---|---|---|---|",
    ]
    lines += [f"| {label} | {R} | {ms:.3f} | {mb:.1f} |" for label, R, ms, mb in rows]
    lines.append("")
    publish(lines, args.out)


if __name__ == "__main__":
    main()
