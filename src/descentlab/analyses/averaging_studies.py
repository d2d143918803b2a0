"""Analyses of the weight-averaging studies (``swa``, ``averaging-during-training``).

- ``swa_line`` (Izmailov et al. 2018, Fig. 5): loss and error at points on the
  line through a run's SGD solution (the parent weights it started from) and
  its SWA solution (``final.<averager>.pt``), extrapolated past both ends.
- ``posthoc_ema_lengths`` (Karras et al. 2024, EDM2): each run's post-hoc EMA
  reconstructed after training at many EMA lengths (``sigma_rel``) from the
  snapshots its ``posthoc_ema`` averager saved, and evaluated.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from ..losses import build_loss
from ..runs import Run
from . import ANALYSES

if TYPE_CHECKING:  # pandas is imported where it is used, so the registry imports fast
    import pandas as pd


def _averager(run: Run, name: str, kind: str) -> dict | None:
    """The run's averager ``name`` (None: the run has none of that name); an
    averager of that name but another kind is an error."""
    for entry in run.spec.get("averaging", []):
        if entry["name"] == name:
            if entry["kind"] != kind:
                raise ValueError(f"run {run.run_id}: averager {name!r} is a {entry['kind']}, not a {kind}")
            return entry
    return None


def _splits(data, splits: Sequence[str], run: Run) -> dict:
    unknown = [s for s in splits if s not in data.x]
    if unknown:
        raise ValueError(f"run {run.run_id}: splits {unknown} are not in its data; splits: {sorted(data.x)}")
    return {s: (data.x[s], data.y[s]) for s in splits}


def parent_weights_file(run: Run):
    """The file of the weights ``run`` started from (its ``init``: the parent's
    checkpoint at the branch step, or its ``final.pt`` at its last step)."""
    from ..checkpoints import weights_path

    init = run.spec.get("init")
    if not init:
        raise ValueError(f"run {run.run_id} does not start from another run (no init): it has no SGD solution to compare with")
    parent_dir = run.dir.parent / init["run"]
    path = weights_path(parent_dir, init["step"])
    return path if path.exists() else parent_dir / "final.pt"


def _posthoc_record(path) -> dict:
    """A post-hoc EMA record read once (``reconstruct_posthoc_ema`` would read its file per length)."""
    from ..checkpoints import CorruptArtifact, read_torch_file
    from ..train.averagers.power_ema import FORMAT

    record = read_torch_file(path)
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise CorruptArtifact(f"{path}: not a post-hoc EMA record (format {FORMAT!r})")
    return record


def line_points(lo: float, hi: float, n_points: int) -> np.ndarray:
    """``n_points`` evenly spaced alphas on [lo, hi], with 0 and 1 (the two solutions) among them."""
    if not lo <= 0.0 < 1.0 <= hi:
        raise ValueError(f"the line must cover both solutions: need lo <= 0 and hi >= 1, got lo={lo}, hi={hi}")
    if int(n_points) < 3:
        raise ValueError(f"n_points must be >= 3, got {n_points!r}")
    return np.unique(np.concatenate([np.linspace(lo, hi, int(n_points)), [0.0, 1.0]]))


@ANALYSES.register("swa_line")
def swa_line(runs: list[Run], device: str = "cpu", averager: str = "swa", lo: float = -1.0, hi: float = 2.0,
             n_points: int = 31, splits: Sequence[str] = ("train", "test"), chunk_size: int | None = 1024,
             bn_chunk_size: int | None = None) -> pd.DataFrame:
    """Per run with the SWA averager ``averager``: loss, accuracy and error on
    each split at theta(alpha) = (1 - alpha) theta_SWA + alpha theta_SGD for
    alpha on [lo, hi] (0: SWA, 1: the SGD solution the run started from; past
    1 beyond SGD, below 0 beyond SWA). ``distance`` = alpha * ||theta_SGD -
    theta_SWA|| (floating parameters and buffers). BatchNorm statistics are
    recomputed on the training split at every point (a no-op without BN).
    Runs without the averager (e.g. the study's continued-SGD runs) and runs
    that did not finish ``ok`` are left out; no run left is an error."""
    import pandas as pd
    import torch

    from ..averaging import interpolate, load_state, recompute_batchnorm
    from ..landscape.evaluate import evaluate
    from ..train.averagers import final_file

    alphas = line_points(lo, hi, n_points)
    rows = []
    for run in runs:
        if _averager(run, averager, "swa") is None or run.status != "ok":
            continue
        model, data = run.load(device=device)
        swa = {k: v.to(device) for k, v in load_state(run.dir / final_file(averager)).items()}
        sgd = {k: v.to(device) for k, v in load_state(parent_weights_file(run)).items()}
        length = float(torch.sqrt(sum(((sgd[k].double() - v.double()) ** 2).sum() for k, v in swa.items()
                                      if v.is_floating_point())))
        loss_fn = build_loss(run.spec["loss"], model=model)
        parts = {s: (x.to(device), y.to(device)) for s, (x, y) in _splits(data, splits, run).items()}
        for alpha in alphas:
            model.load_state_dict(interpolate(swa, sgd, float(alpha)))
            recompute_batchnorm(model, data.x["train"].to(device), bn_chunk_size)
            for split, (x, y) in parts.items():
                rows.append({"run_id": run.run_id, **run.labels, "alpha": float(alpha), "distance": float(alpha) * length,
                             "sgd_swa_distance": length, "split": split, **evaluate(model, loss_fn, x, y, chunk_size=chunk_size)})
    if not rows:
        raise ValueError(f"swa_line: no finished run with an SWA averager {averager!r} among {len(runs)} runs")
    return pd.DataFrame(rows)


@ANALYSES.register("posthoc_ema_lengths")
def posthoc_ema_lengths(runs: list[Run], device: str = "cpu", averager: str = "posthoc_ema",
                        sigma_rels: Sequence[float] = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3),
                        splits: Sequence[str] = ("val", "test"), chunk_size: int | None = 1024) -> pd.DataFrame:
    """Per run with the post-hoc EMA averager ``averager`` and per ``sigma_rel``:
    the EMA of that relative length at the run's last step, reconstructed by
    least squares from the saved snapshots (``reconstruct_posthoc_ema``), and
    its loss, accuracy and error on each split. Runs without the averager and
    runs that did not finish ``ok`` are left out; no run left is an error."""
    import pandas as pd

    from ..landscape.evaluate import evaluate
    from ..train.averagers import final_file, reconstruct_posthoc_ema, sigma_rel_to_gamma

    sigma_rels = [float(s) for s in sigma_rels]
    if not sigma_rels:
        raise ValueError("posthoc_ema_lengths: sigma_rels is empty")
    for sigma in sigma_rels:
        sigma_rel_to_gamma(sigma)  # a clear error for a length no power profile has
    rows = []
    for run in runs:
        if _averager(run, averager, "posthoc_ema") is None or run.status != "ok":
            continue
        model, data = run.load(device=device)
        loss_fn = build_loss(run.spec["loss"], model=model)
        parts = {s: (x.to(device), y.to(device)) for s, (x, y) in _splits(data, splits, run).items()}
        record = _posthoc_record(run.dir / final_file(averager))
        for sigma in sigma_rels:
            model.load_state_dict(reconstruct_posthoc_ema(record, sigma))
            for split, (x, y) in parts.items():
                rows.append({"run_id": run.run_id, **run.labels, "sigma_rel": sigma, "split": split,
                             **evaluate(model, loss_fn, x, y, chunk_size=chunk_size)})
    if not rows:
        raise ValueError(f"posthoc_ema_lengths: no finished run with a post-hoc EMA averager {averager!r} among {len(runs)} runs")
    return pd.DataFrame(rows)
