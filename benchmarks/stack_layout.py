"""How the batched pass should reach the stacked parameters: forward + backward
of R stacked MLPs (batched matmuls), three ways, side by side in one process.

- ``slices``: (R, *shape) slices of the (R, D) flat leaf taken in the graph
  (each slice's backward writes a zero-filled (R, D) gradient, summed);
- ``leaves`` (what ``ModelStack`` does): one leaf per tensor, a view of the
  flat storage, its ``.grad`` a view of the flat gradient, accumulated in place;
- ``split``: one autograd function returning every slice, whose backward is
  one ``cat``.

Medians of interleaved repeats, one torch thread; peak memory is not compared
(the three hold the same tensors; ``slices`` allocates R*D per tensor in
backward, freed at once).

    python benchmarks/stack_layout.py [--repeats 7]

Writes benchmarks/results/stack_layout.md.
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
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _publish import publish  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "stack_layout.md"
CASES = [(5, 256), (16, 64), (32, 64)]  # (runs, width): a 40 -> W -> W -> 10 MLP, batch 64


class _Split(torch.autograd.Function):
    @staticmethod
    def forward(ctx, flat, layout):
        ctx.R = flat.shape[0]
        return tuple(flat[:, a:b].view(ctx.R, *shape) for a, b, shape in layout)

    @staticmethod
    def backward(ctx, *grads):
        return torch.cat([g.reshape(ctx.R, -1) for g in grads], 1), None


def mlp_losses(params: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    h = torch.baddbmm(params["b0"].unsqueeze(1), x, params["w0"].transpose(1, 2)).relu()
    h = torch.baddbmm(params["b1"].unsqueeze(1), h, params["w1"].transpose(1, 2)).relu()
    out = torch.baddbmm(params["b2"].unsqueeze(1), h, params["w2"].transpose(1, 2))
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1), reduction="none").view(out.shape[0], -1).mean(1)


def ways(R: int, width: int):
    shapes = {"w0": (width, 40), "b0": (width,), "w1": (width, width), "b1": (width,), "w2": (10, width), "b2": (10,)}
    offsets, total = {}, 0
    for name, shape in shapes.items():
        offsets[name] = (total, total + torch.Size(shape).numel())
        total += torch.Size(shape).numel()
    flat = (torch.randn(R, total) * 0.05).requires_grad_(True)
    flat.grad = torch.zeros_like(flat)
    leaves = {}
    for name, (a, b) in offsets.items():
        leaf = flat.detach()[:, a:b].view(R, *shapes[name]).requires_grad_(True)
        leaf.grad = flat.grad[:, a:b].view(R, *shapes[name])
        leaves[name] = leaf
    layout = tuple((a, b, shapes[name]) for name, (a, b) in offsets.items())
    x, y = torch.randn(R, 64, 40), torch.randint(10, (R, 64))

    def step(params):
        flat.grad.zero_()
        mlp_losses(params, x, y).sum().backward()

    return {
        "slices": lambda: step({n: flat[:, a:b].view(R, *shapes[n]) for n, (a, b) in offsets.items()}),
        "leaves": lambda: step(leaves),
        "split": lambda: step(dict(zip(offsets, _Split.apply(flat, layout)))),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=30, help="steps per timed repeat")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    torch.set_num_threads(1)
    import warnings

    warnings.filterwarnings("ignore", message="grad and param do not obey the gradient layout contract")
    lines = [
        "# Batched pass: slices of the flat leaf vs one leaf per tensor",
        "",
        f"`python benchmarks/stack_layout.py --repeats {args.repeats}` on {platform.machine()}, {os.cpu_count()} cores,"
        f" one torch thread. Forward + backward of R stacked MLPs (40 -> W -> W -> 10, batch 64), ms per step,"
        f" medians of {args.repeats} interleaved repeats of {args.steps} steps.",
        "",
        "| runs | width | slices of the flat leaf | one leaf per tensor (ModelStack) | one split function |",
        "|---|---|---|---|---|",
    ]
    for R, width in CASES:
        fns = ways(R, width)
        times = {name: [] for name in fns}
        for _ in range(args.repeats):
            for name, fn in fns.items():
                fn()
                start = time.perf_counter()
                for _ in range(args.steps):
                    fn()
                times[name].append((time.perf_counter() - start) / args.steps * 1e3)
        med = {name: statistics.median(v) for name, v in times.items()}
        lines.append(f"| {R} | {width} | {med['slices']:.2f} | {med['leaves']:.2f} | {med['split']:.2f} |")
    lines.append("")
    publish(lines, args.out)


if __name__ == "__main__":
    main()
