"""Overhead of descentlab's training loop against a bare PyTorch loop.

Both train the same MNIST-1D MLP with the same optimizer on the same batches
for the same number of steps; repeats are interleaved (ours, bare, ours, ...)
so machine load hits both alike, and the median ratio is reported. Ours runs
with its defaults (train loss and lr logged every 10 steps, resume points,
artifacts written at the end), with evaluation off (``eval_every: 0``), so the
comparison is of the loop itself.

    python benchmarks/train_loop.py [--steps 2000] [--repeats 7]

Writes benchmarks/results/train_loop.md.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from descentlab.data import build_dataset
from descentlab.models import build_model
from descentlab.train import train_run

OUT = Path(__file__).resolve().parent / "results" / "train_loop.md"


def spec(steps: int, optimizer: dict) -> dict:
    return {
        "dataset": {"name": "mnist1d", "n_samples": 5000},
        "model": {"name": "mlp", "width": 100, "depth": 2},
        "optimizer": optimizer,
        "schedule": {"name": "constant"},
        "batch_size": 64,
        "steps": steps,
        "eval_every": 0,
    }


def bare_loop(s: dict, data) -> float:
    """What a researcher would write by hand: same init, batches, updates."""
    start = time.perf_counter()
    torch.manual_seed(s["seed"] if "seed" in s else 0)
    model = build_model(s["model"], data.input_shape, data.num_outputs)
    opt_spec = dict(s["optimizer"])
    opt = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}[opt_spec.pop("name")](model.parameters(), **opt_spec)
    x, y = data.x["train"], data.y["train"]
    gen = torch.Generator().manual_seed(0)
    n, bs = x.shape[0], s["batch_size"]
    pos, perm = n, None
    for _ in range(s["steps"]):
        if pos + bs > n:
            perm, pos = torch.randperm(n, generator=gen), 0
        idx = perm[pos : pos + bs]
        pos += bs
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        loss.backward()
        opt.step()
    return time.perf_counter() - start


def ours(s: dict, data) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        train_run(s, data, tmp, progress=False)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for optimizer in ({"name": "sgd", "lr": 0.05, "momentum": 0.9}, {"name": "adam", "lr": 1e-3}):
        s = spec(args.steps, optimizer)
        data = build_dataset(s["dataset"])
        ours(dict(s, steps=50), data), bare_loop(dict(s, steps=50), data)  # warm up
        t_ours, t_bare, ratios = [], [], []
        for _ in range(args.repeats):
            a, b = ours(s, data), bare_loop(s, data)
            t_ours.append(a)
            t_bare.append(b)
            ratios.append(a / b)
        rows.append((optimizer["name"], statistics.median(t_bare), statistics.median(t_ours), statistics.median(ratios), min(ratios), max(ratios)))
        print(rows[-1], flush=True)
    lines = [
        "# Training-loop overhead vs a bare PyTorch loop",
        "",
        f"MNIST-1D MLP (40-100-100-10), batch 64, {args.steps} steps, {args.threads} thread(s), "
        f"median of {args.repeats} interleaved repeats; ours includes building the model, logging, "
        "resume points and writing its artifacts. Command: `python benchmarks/train_loop.py`.",
        "",
        "| optimizer | bare loop (s) | descentlab (s) | ratio (median) | ratio range | overhead |",
        "|---|---|---|---|---|---|",
    ]
    for name, bare, our, ratio, lo, hi in rows:
        lines.append(f"| {name} | {bare:.3f} | {our:.3f} | {ratio:.3f} | {lo:.3f}–{hi:.3f} | {100 * (ratio - 1):+.1f}% |")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(lines) + "\n")
    print(OUT.read_text())


if __name__ == "__main__":
    main()
