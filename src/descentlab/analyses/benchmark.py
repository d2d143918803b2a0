"""Optimizer benchmarks in the manner of DeepOBS / AlgoPerf: a declared
learning-rate search per (problem, optimizer), then the best setting rerun
over more seeds."""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

from ..spec import run_id
from . import ANALYSES, RunRef

if TYPE_CHECKING:  # pandas is imported where it is used, so the registry imports fast
    import pandas as pd

log = logging.getLogger("descentlab")


def final_value(run: RunRef, split: str, metric: str) -> float:
    """The run's last recorded (split, metric); NaN if it diverged or never recorded it."""
    import pandas as pd

    if run.status != "ok":
        return math.nan
    m = pd.read_parquet(run.dir / "metrics.parquet")
    sel = m[(m["split"] == split) & (m["metric"] == metric)]
    return float(sel.sort_values("step")["value"].iloc[-1]) if len(sel) else math.nan


def select_best(runs: list[RunRef], group_by: list[str], split: str, metric: str, mode: str) -> dict[tuple, RunRef | None]:
    """Per cell (the values of ``group_by``), the run with the best final value;
    None for a cell whose every setting diverged."""
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
    best: dict[tuple, tuple[float, RunRef] | None] = {}
    for run in runs:
        missing = [g for g in group_by if g not in run.labels]
        if missing:
            raise ValueError(f"group_by {missing} are not axes of the study; axes: {sorted(run.labels)}")
        cell = tuple(run.labels[g] for g in group_by)
        value = final_value(run, split, metric)
        best.setdefault(cell, None)
        if math.isnan(value):
            continue
        score = value if mode == "min" else -value
        if best[cell] is None or score < best[cell][0]:
            best[cell] = (score, run)
    return {cell: (entry[1] if entry else None) for cell, entry in best.items()}


def _train_one(spec: dict, data_path: str, out_dir: str, device: str) -> str:
    """One rerun, in a worker process (one torch thread: workers share the cores)."""
    import torch

    from ..data import SplitData
    from ..train import train_run

    torch.set_num_threads(1)
    return train_run(spec, SplitData.load(data_path), out_dir, device=device, progress=False).status


@ANALYSES.register("rerun_best")
def rerun_best(
    runs: list[RunRef],
    device: str = "cpu",
    threads: int = 1,
    group_by: tuple[str, ...] = ("problem", "optimizer"),
    split: str = "val",
    metric: str = "loss",
    mode: str = "min",
    seeds: tuple[int, ...] = (1, 2),
) -> pd.DataFrame:
    """Pick each cell's best run by its final (split, metric), train it again
    with each of ``seeds`` (runs are named by their spec hash, so reruns are
    cached like any run), and return the tidy metrics of the best run and its
    reruns with the cell's labels, the tuned axis labels, seed and status.
    The selection uses the validation split; report test metrics from the table.
    With ``threads`` > 1 the reruns train in that many worker processes.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    import pandas as pd

    group_by = list(group_by)
    cells = [(cell, best) for cell, best in sorted(select_best(runs, group_by, split, metric, mode).items(), key=lambda kv: str(kv[0]))]
    jobs = []  # (cell, best, rerun spec, run id)
    for cell, best in cells:
        if best is None:
            log.info("%s: every setting diverged; nothing to rerun", dict(zip(group_by, cell)))
            continue
        for seed in seeds:
            spec = dict(best.spec, seed=int(seed))
            jobs.append((cell, best, spec, run_id(spec)))
    args = [(spec, str(best.data), str(best.dir.parent / rid), device) for _, best, spec, rid in jobs]
    # Forked workers (spawned ones would re-run the calling script, e.g. a
    # Snakemake job's); CPU only, where forking a process that has not yet run
    # parallel torch work is safe. Elsewhere the reruns train one by one.
    parallel = threads > 1 and len(jobs) > 1 and device == "cpu" and "fork" in multiprocessing.get_all_start_methods()
    if parallel:
        with ProcessPoolExecutor(max_workers=int(threads), mp_context=multiprocessing.get_context("fork")) as pool:
            statuses = list(pool.map(_train_one, *zip(*args)))
    else:
        statuses = [_train_one(*a) for a in args]
    reruns: dict[str, list[tuple[str, int, str]]] = {}
    for (cell, best, spec, rid), status in zip(jobs, statuses):
        reruns.setdefault(best.run_id, []).append((rid, spec["seed"], status))
        log.info("%s seed %d: %s (%s)", dict(zip(group_by, cell)), spec["seed"], status, rid)
    frames = []
    for cell, best in cells:
        if best is None:
            continue
        for rid, seed, status in [(best.run_id, best.spec["seed"], best.status)] + reruns.get(best.run_id, []):
            m = pd.read_parquet(best.dir.parent / rid / "metrics.parquet")
            for key, value in best.labels.items():
                if key != "seed":
                    m[key] = value
            m["run_id"], m["seed"], m["status"], m["selected_from"] = rid, seed, status, best.run_id
            frames.append(m)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
