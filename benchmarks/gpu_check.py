"""The GPU path of batched training in one short run, for a session lent a GPU.

1. Batched equals one by one on the device, in float64: a job of 3 runs each
   (MLP with Adam, the digits CNN with BatchNorm and SGD, the small GPT with
   AdamW; different seeds, learning rates and schedules, 60 steps) trained by
   ``train_job`` batched and by ``train_run`` alone; prints the largest
   difference of final weights and of metrics, and fails above 1e-9.
2. Unless ``--skip-benchmark``: ``benchmarks/batched.py --only mlp-adam
   --mlp-runs 256`` on the device (the issue's target there: 20x), which
   writes benchmarks/results/batched_gpu.md.

    python benchmarks/gpu_check.py [--device cuda] [--skip-benchmark]

``--device cpu`` runs the same checks on a CPU (to check this script).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from descentlab.data import SplitData, build_dataset
from descentlab.train import train_run
from descentlab.train.batched import train_job

HERE = Path(__file__).resolve().parent
COMMON = {"batch_size": 16, "steps": 60, "log_every": 10, "eval_every": 30, "eval_splits": ["train", "val"]}
PROBLEMS = {
    "mlp-adam": dict(COMMON, dataset={"name": "gaussian_mixture", "n_samples": 400, "dim": 8, "n_classes": 4},
                     model={"name": "mlp", "width": 12, "depth": 2}, optimizer={"name": "adam", "lr": 1e-3}),
    "cnn-bn-sgd": dict(COMMON, dataset={"name": "digits"}, model={"name": "cnn", "channels": 4, "depth": 2, "batchnorm": True},
                       optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.9}),
    "gpt-adamw": dict(COMMON, dataset={"name": "charlm", "block_size": 8, "eval_windows": 16}, eval_splits=["val"],
                      model={"name": "gpt", "n_layer": 1, "n_head": 2, "n_embd": 8, "qk_layernorm": True},
                      optimizer={"name": "adamw", "lr": 3e-3, "weight_decay": 0.1}),
}
SCHEDULES = [{"name": "constant"}, {"name": "cosine", "warmup_steps": 10}, {"name": "linear"}]
TOLERANCE = 1e-9


def runs_of(base: dict) -> list[dict]:
    """Three runs: other seeds, learning rates and schedules."""
    return [dict(base, seed=k, schedule=SCHEDULES[k], optimizer=dict(base["optimizer"], lr=base["optimizer"]["lr"] * mult))
            for k, mult in enumerate((1.0, 3.0, 0.3))]


def in_float64(data: SplitData) -> SplitData:
    x = {k: v.double() if v.is_floating_point() else v for k, v in data.x.items()}
    return SplitData(x, dict(data.y), data.task, data.num_outputs, data.input_shape, data.info)


def largest_differences(alone: Path, batched: Path) -> tuple[float, float]:
    """Max abs difference of final weights and of metric values between two run folders."""
    wa, wb = (torch.load(d / "final.pt", weights_only=True) for d in (alone, batched))
    weights = max((wa[k].double() - wb[k].double()).abs().max().item() for k in wa)
    ma, mb = (pd.read_parquet(d / "metrics.parquet") for d in (alone, batched))
    if not ma[["step", "split", "metric"]].equals(mb[["step", "split", "metric"]]):
        raise AssertionError(f"{batched}: other metric rows than {alone}")
    return weights, float((ma.value - mb.value).abs().max())


def check_equivalence(device: str) -> bool:
    old_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        return _check_equivalence(device)
    finally:
        torch.set_default_dtype(old_dtype)


def _check_equivalence(device: str) -> bool:
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        for name, base in PROBLEMS.items():
            specs, data = runs_of(base), in_float64(build_dataset(base["dataset"]))
            alone = [Path(tmp) / f"{name}-alone{k}" for k in range(3)]
            batched = [Path(tmp) / f"{name}-batched{k}" for k in range(3)]
            start = time.perf_counter()
            for spec, out in zip(specs, alone):
                train_run(spec, data, out, device=device, progress=False)
            middle = time.perf_counter()
            train_job(specs, [data] * 3, batched, device=device, progress=False)
            end = time.perf_counter()
            diffs = [largest_differences(a, b) for a, b in zip(alone, batched)]
            weights, metrics = max(d[0] for d in diffs), max(d[1] for d in diffs)
            good = weights <= TOLERANCE and metrics <= TOLERANCE
            ok &= good
            print(f"{name}: float64 on {device}, max |diff| final weights {weights:.2e}, metrics {metrics:.2e}"
                  f" ({'ok' if good else 'FAILS'}; alone {middle - start:.1f} s, batched {end - middle:.1f} s)", flush=True)
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--skip-benchmark", action="store_true")
    args = parser.parse_args()
    if args.device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise SystemExit("gpu_check: no CUDA device here (torch.cuda.is_available() is False)")
        print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}", flush=True)
    ok = check_equivalence(args.device)
    if not args.skip_benchmark:
        subprocess.run([sys.executable, str(HERE / "batched.py"), "--only", "mlp-adam", "--mlp-runs", "256", "--device", args.device,
                        "--out", str(HERE / "results" / f"batched_{'gpu' if args.device != 'cpu' else 'cpu256'}.md")], check=True)
    if not ok:
        raise SystemExit("gpu_check: batched and one-by-one training differ on the device (see above)")


if __name__ == "__main__":
    main()
