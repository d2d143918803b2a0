"""Runs per hour: batched training against one run after another.

The same job's runs, trained by ``train_job`` with ``batched=True`` (the
compatible runs as one computation) and ``batched=False`` (``train_run`` after
``train_run``), side by side. Workloads:

- ``mlp-adam``: 32 MNIST-1D MLP runs with Adam, 8 learning rates x 4 seeds;
- ``optimizer-slice``: the MNIST-1D slice of the optimizer benchmark study
  (config/studies/optimizer-benchmark.yaml): every optimizer x its lr grid
  (1, 3, 10, 30 x its default); AdaHessian's runs batch with each other;
- ``cnn-bn``: the digits CNN with BatchNorm (the study's problem), Adam, 4
  learning rates x 4 seeds;
- ``gpt``: the character-level GPT of config/studies/small-scale-proxies.yaml
  (its recipe: AdamWDecoupled, z-loss, qk-layernorm), 8 learning rates x 2
  seeds, without its logit-growth instrument.

Each measurement runs in its own process (one torch thread, as the workflow's
default ``threads_per_job: 1``), so its peak memory (max RSS, torch included)
can be reported next to its time; repeats are interleaved (one by one,
batched, one by one, ...) so machine load hits both alike, and medians are
reported. After an untimed warm-up job of two runs (imports), wall time covers the whole job (building runs, evaluations every
``eval_every`` steps, writing every run's files), as in the workflow. The
float32 columns compare the final validation losses of the two modes with
the spread between seeds (std over seeds at one setting, median over settings).

    python benchmarks/batched.py [--repeats 3] [--steps 300] [--slice-steps 300] [--only mlp-adam]
    python benchmarks/batched.py --only mlp-adam --mlp-runs 256 --device cuda --out benchmarks/results/batched_gpu.md
                                                        # where a GPU is lent: the issue's 256-run measurement

Writes benchmarks/results/batched.md.
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
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _publish import publish  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "batched.md"
STUDY = Path(__file__).resolve().parents[1] / "config" / "studies" / "optimizer-benchmark.yaml"
GPT_STUDY = Path(__file__).resolve().parents[1] / "config" / "studies" / "small-scale-proxies.yaml"
MNIST1D = {"dataset": {"name": "mnist1d", "n_samples": 5000}, "model": {"name": "mlp", "width": 64, "depth": 2}}
DIGITS_CNN = {"dataset": {"name": "digits"}, "model": {"name": "cnn", "channels": 16, "depth": 2, "batchnorm": True}}


def study_base(steps: int) -> dict:
    base = yaml.safe_load(STUDY.read_text())["base"]
    schedule = dict(base["schedule"], warmup_steps=min(base["schedule"]["warmup_steps"], steps // 10))
    return dict(base, steps=steps, schedule=schedule, log_every=min(base["log_every"], steps), eval_every=min(base["eval_every"], steps))


def workload(name: str, steps: int, slice_steps: int, mlp_runs: int = 32) -> list[dict]:
    """The run specs of a workload; "setting" groups the seeds of one setting."""
    if name == "mlp-adam":  # 8 learning rates x mlp_runs / 8 seeds
        base = dict(study_base(steps), **MNIST1D)
        seeds = range(max(1, mlp_runs // 8))
        return [dict(base, seed=s, optimizer={"name": "adam", "lr": lr}) for lr in [1e-4 * 2**k for k in range(8)] for s in seeds]
    if name == "cnn-bn":
        base = dict(study_base(steps), **DIGITS_CNN)
        return [dict(base, seed=s, optimizer={"name": "adam", "lr": lr}) for lr in (1e-3, 3e-3, 1e-2, 3e-2) for s in range(4)]
    if name == "gpt":
        base = dict(yaml.safe_load(GPT_STUDY.read_text())["base"], steps=steps, instruments=[])
        base["schedule"] = dict(base["schedule"], warmup_steps=min(base["schedule"]["warmup_steps"], steps // 10))
        return [dict(base, seed=s, optimizer=dict(base["optimizer"], lr=lr)) for lr in [1e-3 * 2**k for k in range(8)] for s in range(2)]
    if name == "optimizer-slice":
        study = yaml.safe_load(STUDY.read_text())
        base = dict(study_base(slice_steps), **MNIST1D)
        specs = []
        for opt in study["axes"]["optimizer"]:
            for mult in (1, 3, 10, 30):
                spec = dict(base, **{k: v for k, v in opt["set"].items()})
                spec["optimizer"] = dict(spec["optimizer"], lr=spec["optimizer"]["lr"] * mult)
                if "schedule" in opt["set"]:
                    spec["schedule"] = opt["set"]["schedule"]
                specs.append(spec)
        return specs
    raise ValueError(f"unknown workload {name!r}")


WORKLOADS = ("mlp-adam", "optimizer-slice", "cnn-bn", "gpt")


def child(name: str, mode: str, steps: int, slice_steps: int, mlp_runs: int, device: str) -> None:
    """One measurement, in this process: print seconds, max RSS (and on a GPU its peak allocation) and final val losses."""
    import pandas as pd
    import torch

    from descentlab.data import build_dataset
    from descentlab.train.batched import train_job

    torch.set_num_threads(1)
    specs = workload(name, steps, slice_steps, mlp_runs)
    data = build_dataset(specs[0]["dataset"])
    with tempfile.TemporaryDirectory() as tmp:
        # Warm-up (imports, the code fingerprint), not timed: the per-run cost is what is compared.
        warm = [dict(s, steps=2, log_every=1, eval_every=1, schedule={"name": "constant"}) for s in specs[:2]]
        train_job(warm, [data] * 2, [Path(tmp) / "warm0", Path(tmp) / "warm1"], batched=(mode == "batched"), progress=False, device=device)
        if device != "cpu":
            torch.cuda.reset_peak_memory_stats()
        dirs = [Path(tmp) / f"run{k}" for k in range(len(specs))]
        start, cpu_start = time.perf_counter(), time.process_time()
        train_job(specs, [data] * len(specs), dirs, batched=(mode == "batched"), progress=False, device=device)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
        finals = []
        for d in dirs:
            m = pd.read_parquet(d / "metrics.parquet")
            v = m[(m.split == "val") & (m.metric == "loss")].sort_values("step").value
            finals.append(float(v.iloc[-1]) if len(v) else float("nan"))
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    gpu_mb = torch.cuda.max_memory_allocated() / 2**20 if device != "cpu" else None
    print(json.dumps({"seconds": seconds, "cpu_seconds": cpu_seconds, "rss_mb": rss_mb, "gpu_mb": gpu_mb, "finals": finals, "runs": len(specs)}))


def update_paths(specs: list[dict]) -> dict[str, list[str]]:
    """How each optimizer of ``specs`` updates in a batch: the labels of ``batched._update_groups``."""
    import torch

    from descentlab.data import build_dataset
    from descentlab.spec import validate
    from descentlab.train.hessian_update import needs_hessian
    from descentlab.train.rowwise_update import rowwise_update_key
    from descentlab.train.sam_update import is_sharpness_aware
    from descentlab.train.shared_update import shared_update_key
    from descentlab.train.stacked_update import stacked_update_key
    from descentlab.train.training import Training

    data = build_dataset(specs[0]["dataset"])
    paths: dict[str, list[str]] = {}
    for spec in specs:
        run = Training(validate(spec), data, torch.device("cpu"))
        if is_sharpness_aware(run):
            path = "SAM/ASAM batched closure (a second batched pass)"
        elif needs_hessian(run):
            path = "AdaHessian batched closure (one double backward)"
        elif stacked_update_key(run) is not None:
            path = "stacked update (one elementwise step, per-run lr and decay)"
        elif shared_update_key(run) is not None:
            path = "shared instance (per-tensor reductions, per-run lr)"
        elif rowwise_update_key(run) is not None:
            path = "rowwise update (per-run reductions along each run's row, one elementwise step)"
        else:
            path = "each run's own instance, stepped per run on its rows"
        names = paths.setdefault(path, [])
        if spec["optimizer"]["name"] not in names:
            names.append(spec["optimizer"]["name"])
    return paths


def measure(name: str, mode: str, args) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run(
        [sys.executable, __file__, "--child", name, mode, "--steps", str(args.steps), "--slice-steps", str(args.slice_steps),
         "--mlp-runs", str(args.mlp_runs), "--device", args.device],
        check=True, capture_output=True, text=True, env=env,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def seed_spread(specs: list[dict], finals: list[float]) -> float:
    """Median over settings of the std of the final val loss over seeds (NaN if one seed each)."""
    groups: dict[str, list[float]] = {}
    for spec, value in zip(specs, finals):
        key = json.dumps({k: v for k, v in spec.items() if k != "seed"}, sort_keys=True)
        groups.setdefault(key, []).append(value)
    spreads = [statistics.stdev(v) for v in groups.values() if len(v) > 1 and all(x == x for x in v)]
    return statistics.median(spreads) if spreads else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=300, help="steps of the mlp-adam and cnn-bn runs (the study's 300)")
    parser.add_argument("--slice-steps", type=int, default=300, help="steps of the optimizer-slice runs (the study's 300)")
    parser.add_argument("--only", choices=WORKLOADS, action="append")
    parser.add_argument("--mlp-runs", type=int, default=32, help="runs of mlp-adam (8 lrs x runs/8 seeds; 256 on a GPU)")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda where a GPU is lent")
    parser.add_argument("--child", nargs=2, metavar=("WORKLOAD", "MODE"))
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    if args.child:
        child(*args.child, args.steps, args.slice_steps, args.mlp_runs, args.device)
        return
    rows = []
    loads = [os.getloadavg()[0]]
    for name in args.only or WORKLOADS:
        specs = workload(name, args.steps, args.slice_steps, args.mlp_runs)
        results: dict[str, list[dict]] = {"alone": [], "batched": []}
        for rep in range(args.repeats):
            for mode in ("alone", "batched"):
                results[mode].append(measure(name, mode, args))
                loads.append(os.getloadavg()[0])
                print(f"{name} {mode} repeat {rep}: {results[mode][-1]['seconds']:.1f} s (CPU {results[mode][-1]['cpu_seconds']:.1f} s),"
                      f" load {loads[-1]:.1f}", file=sys.stderr, flush=True)
        med = {m: statistics.median(r["seconds"] for r in results[m]) for m in results}
        cpu = {m: statistics.median(r["cpu_seconds"] for r in results[m]) for m in results}
        rss = {m: max(r["rss_mb"] for r in results[m]) for m in results}
        gpu = {m: max(r["gpu_mb"] or 0.0 for r in results[m]) for m in results}
        a, b = results["alone"][-1]["finals"], results["batched"][-1]["finals"]
        diffs = [(abs(x - y), k) for k, (x, y) in enumerate(zip(a, b)) if x == x and y == y]
        diff, worst = max(diffs) if diffs else (float("nan"), 0)
        where = f"{specs[worst]['optimizer']['name']} lr {specs[worst]['optimizer']['lr']:g}"
        n = len(specs)
        if name == "optimizer-slice":
            paths = update_paths(specs)
        rows.append((name, n, specs[0]["steps"], 3600 * n / med["alone"], 3600 * n / med["batched"], med["alone"] / med["batched"],
                     cpu["alone"] / cpu["batched"], rss["alone"], rss["batched"], diff, where, seed_spread(specs, a),
                     gpu["alone"], gpu["batched"]))
    write(rows, args, loads, paths if "optimizer-slice" in (args.only or WORKLOADS) else None)


def write(rows, args, loads, paths) -> None:
    on_gpu = args.device != "cpu"
    options = f" --mlp-runs {args.mlp_runs}" if args.mlp_runs != 32 else ""
    options += f" --device {args.device}" if on_gpu else ""
    if on_gpu:
        import torch

        where = f"on {torch.cuda.get_device_name()} (host: {os.cpu_count()} cores, one torch thread per job)"
    else:
        where = (f"on {platform.processor() or platform.machine()}, {os.cpu_count()} cores, one torch thread per job, CPU only"
                 " (no GPU was available)")
    lines = [
        "# Batched training vs one run after another",
        "",
        f"`python benchmarks/batched.py --repeats {args.repeats} --steps {args.steps} --slice-steps {args.slice_steps}{options}`"
        f" {where}, a shared machine under load. Medians of interleaved repeats; after an untimed"
        " warm-up job of two runs, wall time of the whole job (building, evaluation,"
        " every run's files). Speed-up: the ratio of those medians (wall time); CPU speed-up: the same for the"
        " measuring process's CPU time, less hit by other processes on the machine (the 1-minute load average"
        f" ranged from {min(loads):.1f} to {max(loads):.1f} on {os.cpu_count()} cores during the measurements, median"
        f" {statistics.median(loads):.1f}). Peak memory: the max RSS of the measuring process, torch included"
        + ("; on the GPU, torch's peak allocation." if on_gpu else "."),
        "",
        "| workload | runs | steps | runs/hour one by one | runs/hour batched | speed-up | CPU speed-up | peak MB one by one | peak MB batched"
        " | max abs diff of final val loss (float32) | its run | seed spread of final val loss |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    if on_gpu:
        lines[-2] += " peak GPU MB one by one | peak GPU MB batched |"
        lines[-1] += "---|---|"
    for name, n, steps, rh_a, rh_b, speedup, cpu_speedup, m_a, m_b, diff, worst, spread, g_a, g_b in rows:
        lines.append(f"| {name} | {n} | {steps} | {rh_a:,.0f} | {rh_b:,.0f} | {speedup:.2f}x | {cpu_speedup:.2f}x | {m_a:,.0f} | {m_b:,.0f}"
                     f" | {diff:.2e} | {worst} | {spread:.2e} |" + (f" {g_a:,.0f} | {g_b:,.0f} |" if on_gpu else ""))
    lines += [
        "",
        f"Workloads: mlp-adam: MNIST-1D MLP (64x2), Adam, 8 learning rates x {max(1, args.mlp_runs // 8)} seeds; optimizer-slice: the MNIST-1D"
        " problem of config/studies/optimizer-benchmark.yaml, every optimizer x lr multipliers 1, 3, 10, 30"
        " (one seed, so no seed spread); cnn-bn: the digits CNN (16 channels, 2"
        " blocks, BatchNorm), Adam, 4 learning rates x 4 seeds. The study's schedule (cosine, 30 warmup steps),"
        " batch 64, evaluation every 25 steps. gpt: the character-level GPT of"
        " config/studies/small-scale-proxies.yaml (2 layers, width 64, 32-token windows, batch 16, AdamWDecoupled,"
        " z-loss, qk-layernorm), 8 learning rates x 2 seeds.",
        "",
    ]
    if paths:
        lines += ["How the optimizer slice's runs update in a batch:", ""]
        lines += [f"- {path}: {', '.join(names)}" for path, names in paths.items()]
        lines.append("")
    publish(lines, args.out)


if __name__ == "__main__":
    main()
