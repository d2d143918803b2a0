"""Cost of in-training weight averagers on a training step of the MNIST-1D MLP.

Two measurements, each side by side in one process with the configurations
interleaved (none, ema, swa, ..., none, ema, ...) so machine load hits all
alike; medians of the ratios to "none" are reported:

- per step: one built run per configuration; ``Training.take_step()``
  (minibatch, forward, backward, optimizer step, then the averagers' update)
  and the next step's lr, timed in blocks of ``--block`` steps, a block of
  each configuration in turn, ``--rounds`` rounds (short interleaved blocks:
  on a shared machine the load changes within seconds);
- update alone: the averagers' update (``observe``, and SWA's ``set_lr``)
  on a second built run per configuration, in blocks interleaved with the
  per-step blocks, as a share of the step without averagers measured next
  to it (the least noisy of the three on a loaded machine);
- whole run: ``train_run`` of ``--steps`` steps with evaluation off
  (``eval_every: 0``), so what is added is the averagers' updates, SWA's lr,
  their evaluation at the last step, their resume-point state and their
  final files; ``--repeats`` interleaved repeats.

SWA averages every step from step 0 with its SWALR learning rate (its most
expensive setting); the EMA is updated every step. Memory: the bytes of the
tensors each averager holds at the end (its state), next to the model's.

    python benchmarks/averaging_overhead.py [--block 100] [--rounds 41] [--steps 1000] [--repeats 5]

Writes benchmarks/results/averaging_overhead.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from descentlab.data import build_dataset
from descentlab.spec import validate
from descentlab.train import train_run
from descentlab.train.training import Training

OUT = Path(__file__).resolve().parent / "results" / "averaging_overhead.md"

CONFIGS = {
    "none": [],
    "ema": [{"kind": "ema", "decay": 0.999}],
    "swa": [{"kind": "swa", "start": 0, "every": 1, "lr": 0.02}],
    "ema + swa": [{"kind": "ema", "decay": 0.999}, {"kind": "swa", "start": 0, "every": 1, "lr": 0.02}],
    "switch_ema": [{"kind": "switch_ema", "decay": 0.999}],
    "lawa (k 5, every 10)": [{"kind": "lawa", "k": 5, "every": 10}],
    "posthoc_ema (2 profiles, snapshots every 100)": [{"kind": "posthoc_ema", "snapshot_every": 100}],
}
TARGETS = ("ema", "swa", "ema + swa")  # the target: at most +5%


def spec(steps: int, averaging: list) -> dict:
    return {
        "dataset": {"name": "mnist1d", "n_samples": 5000},
        "model": {"name": "mlp", "width": 100, "depth": 2},
        "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
        "batch_size": 64,
        "steps": steps,
        "eval_every": 0,
        "averaging": averaging,
    }


def built_run(s: dict, data) -> Training:
    run = Training(validate(s), data, torch.device("cpu"))
    run.averagers.observe(0, run.model, epoch_end=False)
    run.set_lr(0)
    return run


def time_steps(run: Training, steps: int) -> float:
    """Seconds for the next ``steps`` steps of ``run``."""
    start = time.perf_counter()
    for _ in range(steps):
        run.take_step()
        run.set_lr(run.step)
    return time.perf_counter() - start


def state_bytes(obj) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(state_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(state_bytes(v) for v in obj)
    return 0


def time_updates(run: Training, steps: int, counter: list[int]) -> float:
    """Seconds for ``steps`` averager updates (and SWA lrs) at the steps after ``counter[0]``."""
    start = time.perf_counter()
    for _ in range(steps):
        counter[0] += 1
        run.averagers.observe(counter[0], run.model, epoch_end=False)
        run.averagers.set_lr(counter[0])
    return time.perf_counter() - start


def time_run(s: dict, data) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        train_run(s, data, tmp, progress=False)
        return time.perf_counter() - start


def interleaved(measure, repeats: int) -> dict[str, list[float]]:
    """``repeats`` rounds of every configuration, each round starting one later (no
    configuration always runs first, or right after another)."""
    names = list(CONFIGS)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            times[name].append(measure(name))
    return times


def ratio_rows(times: dict[str, list[float]]) -> list[str]:
    rows = []
    for name, values in times.items():
        ratios = [v / base for v, base in zip(values, times["none"])]
        r = statistics.median(ratios)
        rows.append(f"| {name} | {statistics.median(values):.3f} | {r:.3f} | {min(ratios):.3f}–{max(ratios):.3f} | {100 * (r - 1):+.1f}% |")
    return rows


def share_rows(updates: dict[str, list[float]], steps: list[float]) -> list[str]:
    rows = []
    for name, values in updates.items():
        shares = [u / t for u, t in zip(values, steps)]
        rows.append(f"| {name} | {1e6 * statistics.median(values):.1f} | {100 * statistics.median(shares):+.1f}% | "
                    f"{100 * min(shares):.1f}–{100 * max(shares):.1f}% |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--block", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=41)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = build_dataset(spec(1, [])["dataset"])
    total = args.block * (args.rounds + 1)
    runs = {name: built_run(spec(total, CONFIGS[name]), data) for name in CONFIGS}
    for name in CONFIGS:  # warm up (imports, allocator, the first artifacts written)
        time_steps(runs[name], args.block)
        time_run(spec(50, CONFIGS[name]), data)
    updated = {name: built_run(spec(total, CONFIGS[name]), data) for name in CONFIGS}
    counters = {name: [0] for name in CONFIGS}
    update_times: dict[str, list[float]] = {name: [] for name in CONFIGS}

    def step_then_update(name: str) -> float:
        seconds = time_steps(runs[name], args.block) / args.block
        update_times[name].append(time_updates(updated[name], args.block, counters[name]) / args.block)
        return seconds

    step_times = interleaved(step_then_update, args.rounds)
    held = {name: state_bytes(run.averagers.state_dict()) for name, run in runs.items()}
    print(step_times, flush=True)
    run_times = interleaved(lambda name: time_run(spec(args.steps, CONFIGS[name]), data), args.repeats)
    print(run_times, flush=True)
    model_bytes = state_bytes(dict(Training(validate(spec(1, [])), data, torch.device("cpu")).model.state_dict()))
    header = "| averagers | median time | ratio to none (median) | ratio range | overhead |"
    lines = [
        "# In-training weight averaging: overhead on a training step",
        "",
        f"MNIST-1D MLP (40-100-100-10), SGD (momentum 0.9), batch 64, {args.threads} thread(s), configurations "
        "interleaved, medians of the ratios to no averager. Target (issue 11): EMA and SWA updates "
        "add at most 5% to a training step. Command: `python benchmarks/averaging_overhead.py "
        f"--block {args.block} --rounds {args.rounds} --steps {args.steps} --repeats {args.repeats}` "
        f"(load average at the start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; other jobs shared the machine).",
        "",
        f"## Per step (`Training.take_step`; {args.rounds} rounds of a {args.block}-step block per configuration; time in ms a step)",
        "",
        header,
        "|---|---|---|---|---|",
        *ratio_rows({k: [1000 * t for t in v] for k, v in step_times.items()}),
        "",
        f"## Update alone (µs a step; share of the step without averagers of the same round, {args.rounds} rounds)",
        "",
        "| averagers | median update (µs) | share of a step (median) | share range |",
        "|---|---|---|---|",
        *share_rows(update_times, step_times["none"]),
        "",
        f"## Whole run (`train_run`, {args.steps} steps, {args.repeats} repeats, evaluation off; the averagers' "
        "evaluation at the last step, resume points and files included; time in s)",
        "",
        header,
        "|---|---|---|---|---|",
        *ratio_rows(run_times),
        "",
        f"## Memory: tensors each configuration's averagers hold after {total} steps (the model: {model_bytes / 1024:.1f} KiB)",
        "",
        "| averagers | bytes held | in models |",
        "|---|---|---|",
        *[f"| {name} | {b / 1024:.1f} KiB | {b / model_bytes:.2f} |" for name, b in held.items()],
        "",
    ]
    for title, rows, limit in (("Per step", ratio_rows(step_times), 1.05),
                               ("Update alone", share_rows(update_times, step_times["none"]), 5.0)):
        values = [float(r.split("|")[3].strip().rstrip("%")) for r in rows if r.split("|")[1].strip() in TARGETS]
        met = all(v <= limit for v in values)
        lines.append(f"{title}: target (EMA, SWA, both at most +5%) {'met' if met else 'NOT met'} in this measurement.  ")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(lines) + "\n")
    print(OUT.read_text())


if __name__ == "__main__":
    main()
