"""The noise-scale instrument: per-example gradients reduced chunk by chunk vs as one matrix.

The problem of the critical-batch-size study's instrumented runs
(config/studies/critical-batch-size.yaml, cpu scale): an MNIST-1D MLP (one
hidden layer of 64), ``noise_scale`` on 1,024 training examples in float64,
chunks of 256. Two ways to get B_simple, side by side in this process,
interleaved, medians over ``--repeats``, one torch thread, the allocator
setting of a training job:

- ``matrix, ** 2``: ``per_example_gradients`` (the (N, P) matrix), its squared
  deviations summed as ``((g - mean) ** 2).sum()`` (what the instrument did
  before; written out here, the library no longer has it);
- ``matrix``: the same matrix, ``noise_scale_from_per_example`` on it (its sum
  of squared deviations is a ``vector_norm``);
- ``blocks``: ``per_example_gradient_blocks`` reduced as they come (what the
  instrument does now).

All must agree to 1e-10 (relative) or the script fails. Memory: the largest
gradient tensor each way holds (computed from the shapes, not measured).

    python benchmarks/noise_scale.py [--repeats 30]

Writes benchmarks/results/noise_scale.md.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _publish import publish  # noqa: E402

from descentlab.curvature.noise_scale import noise_scale_from_per_example  # noqa: E402
from descentlab.curvature.per_example import per_example_gradient_blocks, per_example_gradients  # noqa: E402
from descentlab.data import build_dataset  # noqa: E402
from descentlab.losses import LOSSES  # noqa: E402
from descentlab.models import build_model  # noqa: E402
from descentlab.train.allocator import keep_freed_memory  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "noise_scale.md"
N_EXAMPLES, CHUNK = 1024, 256


def train_like_the_study(model, loss_fn, x, y, steps: int = 400) -> None:
    """The weights the instrument sees late in a run: plain SGD, lr 0.16, batch 64 (the study's setting)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.16)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (64,), generator=gen)
        opt.zero_grad()
        loss_fn(model(x[idx]), y[idx]).backward()
        opt.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    torch.set_num_threads(1)
    keep_freed_memory()
    torch.manual_seed(0)
    data = build_dataset({"name": "mnist1d", "n_samples": 4000})
    x, y = data.x["train"][:N_EXAMPLES], data.y["train"][:N_EXAMPLES]
    model = build_model({"name": "mlp", "width": 64, "depth": 1}, tuple(x.shape[1:]), data.num_outputs)
    loss_fn = LOSSES.build({"name": "cross_entropy"})
    train_like_the_study(model, loss_fn, data.x["train"], data.y["train"])
    P = sum(p.numel() for p in model.parameters())

    def squared_deviations_by_pow() -> dict[str, float]:
        g = per_example_gradients(model, loss_fn, x, y, chunk_size=CHUNK, dtype=torch.float64)
        mean = g.mean(0)
        trace_sigma = float(((g - mean) ** 2).sum() / (len(g) - 1))
        g2 = float(mean @ mean) - trace_sigma / len(g)
        return {"b_simple": trace_sigma / g2, "trace_sigma": trace_sigma, "grad_sq_norm": g2}

    ways = {
        "matrix, ** 2": squared_deviations_by_pow,
        "matrix": lambda: noise_scale_from_per_example(
            per_example_gradients(model, loss_fn, x, y, chunk_size=CHUNK, dtype=torch.float64)),
        "blocks": lambda: noise_scale_from_per_example(
            per_example_gradient_blocks(model, loss_fn, x, y, chunk_size=CHUNK, dtype=torch.float64)),
    }
    results = {name: way() for name, way in ways.items()}  # warm-up, and the agreement check
    for name, got in results.items():
        for key in ("b_simple", "trace_sigma", "grad_sq_norm"):
            a, b = results["blocks"][key], got[key]
            if abs(a - b) > 1e-10 * abs(a):
                raise SystemExit(f"{key}: blocks {a!r} vs {name} {b!r} differ by more than 1e-10 relative")
    seconds: dict[str, list[float]] = {name: [] for name in ways}
    for r in range(args.repeats):
        for name in list(ways)[r % len(ways):] + list(ways)[: r % len(ways)]:  # order rotated
            start = time.perf_counter()
            ways[name]()
            seconds[name].append(time.perf_counter() - start)
    med = {name: statistics.median(s) * 1e3 for name, s in seconds.items()}
    largest = {"matrix, ** 2": N_EXAMPLES * P * 8 / 1e6, "matrix": N_EXAMPLES * P * 8 / 1e6, "blocks": CHUNK * P * 8 / 1e6}
    lines = [
        "# Noise-scale instrument: per-example gradients reduced chunk by chunk vs as one matrix",
        "",
        f"`python benchmarks/noise_scale.py --repeats {args.repeats}` on {platform.machine()}, one torch thread, "
        f"CPU: one B_simple of an MNIST-1D MLP (64 hidden, {P:,} parameters, after 400 SGD steps at lr 0.16) "
        f"on {N_EXAMPLES} examples in float64, "
        f"chunks of {CHUNK}; the ways interleaved (order rotated every repeat), medians of {args.repeats}. "
        f"They agree to 1e-10 relative (b_simple {results['blocks']['b_simple']:.10g}).",
        "",
        "| way | ms per B_simple | largest gradient tensor MB (from its shape) |",
        "|---|---|---|",
        *(f"| {name} | {med[name]:.1f} | {largest[name]:.1f} |" for name in ways),
        "",
        f"Speed-up of blocks over the old way (matrix, ** 2): {med['matrix, ** 2'] / med['blocks']:.2f}x; "
        f"over the matrix with the new reduction: {med['matrix'] / med['blocks']:.2f}x. "
        "The critical-batch-size study calls it every 10 steps of its 25 batch-64 runs (1,000 calls a default run).",
    ]
    publish(lines, args.out)


if __name__ == "__main__":
    main()
