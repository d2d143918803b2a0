"""Curvature of trained runs: sharpness, trace and spectrum of the training-loss
Hessian, computed with ``descentlab.curvature`` on a fixed training subset."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from ..losses import build_loss
from ..runs import Run
from . import ANALYSES

if TYPE_CHECKING:  # pandas is imported where it is used, so the registry imports fast
    import pandas as pd


def _subset(run: Run, data, n_examples: int | None, device: str):
    """The first ``n_examples`` training examples (the split is already shuffled)."""
    n = data.size("train") if n_examples is None else min(int(n_examples), data.size("train"))
    return data.x["train"][:n].to(device), data.y["train"][:n].to(device)


def _operator(run: Run, device: str, n_examples: int | None, chunk_size: int | None, dtype: str):
    from ..curvature import HessianOperator

    model, data = run.load(device=device)
    loss_fn = build_loss(run.spec["loss"], model=model)
    x, y = _subset(run, data, n_examples, device)
    return HessianOperator(model, loss_fn, x, y, chunk_size=chunk_size, dtype=dtype), model, data, loss_fn


@ANALYSES.register("curvature_summary")
def curvature_summary(
    runs: list[Run],
    device: str = "cpu",
    n_examples: int | None = 1000,
    chunk_size: int | None = None,
    dtype: str = "float32",
    eig_tol: float = 1e-4,
    trace_probes: int = 50,
    adaptive_rho: float | None = None,
    split: str = "test",
) -> pd.DataFrame:
    """Per run: top Hessian eigenvalue (with its residual), Hutchinson trace
    (with its standard error), both of the training loss on ``n_examples``
    training examples, the accuracy on ``split``, with ``adaptive_rho`` the
    adaptive sharpness of ASAM (Kwon et al. 2021), and, for data with label
    noise, ``noisy_label_fit``: the fraction of the flipped training labels
    the model predicts (1: the noise is memorised)."""
    import pandas as pd

    from ..curvature import adaptive_sharpness, hutchinson, top_eigenvalues
    from ..train.loop import evaluate

    rows = []
    for run in runs:
        row = {"run_id": run.run_id, **run.labels, "status": run.status}
        if run.status == "ok":
            op, model, data, loss_fn = _operator(run, device, n_examples, chunk_size, dtype)
            top = top_eigenvalues(op, k=1, tol=eig_tol)
            trace = hutchinson(op, n_probes=trace_probes, seed=0)
            row.update(
                top_eigenvalue=float(top.eigenvalues[0]),
                top_eigenvalue_residual=float(top.residuals[0]),
                trace=trace.estimate,
                trace_stderr=trace.stderr,
                train_loss=op.loss(),
                **{f"{split}_{k}": v for k, v in evaluate(model, loss_fn, data.x[split].to(device), data.y[split].to(device), data.task).items()},
            )
            noisy = data.info.get("noisy_indices")
            if noisy:  # how many of the flipped training labels the weights reproduce (memorisation)
                idx = torch.as_tensor(noisy)
                with torch.no_grad():
                    fitted = model(data.x["train"][idx].to(device)).argmax(dim=1).cpu() == data.y["train"][idx]
                row["noisy_label_fit"] = float(fitted.float().mean())
            if adaptive_rho is not None:
                x, y = _subset(run, data, n_examples, device)
                row["adaptive_sharpness"] = float(adaptive_sharpness(model, loss_fn, x, y, rho=adaptive_rho)["sharpness"])
        rows.append(row)
    return pd.DataFrame(rows)


def count_outliers(eigenvalues: np.ndarray) -> int:
    """Outliers = the eigenvalues above the largest ratio gap among the top ones
    (Sagun et al.: about C of them, then the bulk)."""
    lam = np.sort(np.asarray(eigenvalues))[::-1]
    positive = lam[lam > 0]
    if len(positive) < 2:
        return len(positive)
    ratios = positive[:-1] / positive[1:]
    return int(np.argmax(ratios) + 1)


def bulk_edge(eigenvalues: np.ndarray, outliers: int) -> float:
    """The largest eigenvalue that is not an outlier: the (outliers + 1)-th
    largest. (A quantile of the density would not do: the density of an
    over-parametrised net's Hessian is almost all at zero, so its 0.99 quantile
    sits inside the spike at zero, not at the bulk's edge.)"""
    lam = np.sort(np.asarray(eigenvalues))[::-1]
    if not 0 <= outliers < len(lam):
        raise ValueError(f"bulk_edge: {outliers} outliers among {len(lam)} eigenvalues; ask for more eigenvalues (top_k)")
    return float(lam[outliers])


@ANALYSES.register("hessian_spectrum")
def hessian_spectrum(
    runs: list[Run],
    device: str = "cpu",
    n_examples: int | None = 1000,
    chunk_size: int | None = None,
    dtype: str = "float64",
    top_k: int = 20,
    eig_tol: float = 1e-6,
    slq_iter: int = 60,
    slq_runs: int = 5,
    grid: int = 400,
) -> pd.DataFrame:
    """Per run: the top ``top_k`` eigenvalues (rows ``kind = eigenvalue``, with
    residuals), the SLQ spectral density on ``grid`` points (``kind =
    density``), and a summary row (``kind = summary``): the outlier count
    (eigenvalues above the largest ratio gap of the top ``top_k``), the bulk
    edge (the largest non-outlier eigenvalue), the gap ratio at that edge, the
    trace estimate from the density, the density's 0.99 quantile, and the
    training loss on the subset."""
    import pandas as pd

    from ..curvature import spectral_density, top_eigenvalues

    frames = []
    for run in runs:
        base = {"run_id": run.run_id, **run.labels, "status": run.status}
        if run.status != "ok":
            frames.append(pd.DataFrame([dict(base, kind="summary")]))
            continue
        op, _, _, _ = _operator(run, device, n_examples, chunk_size, dtype)
        k = min(int(top_k), op.shape[0] - 2)
        top = top_eigenvalues(op, k=k, tol=eig_tol)
        density = spectral_density(op, n_iter=slq_iter, n_runs=slq_runs, n_grid=grid, seed=0)
        cdf = density.cdf(density.grid)
        quantile99 = float(density.grid[np.searchsorted(cdf, 0.99)]) if cdf[-1] >= 0.99 else float(density.grid[-1])
        lam = np.sort(top.eigenvalues)[::-1]
        outliers = count_outliers(lam)
        edge = bulk_edge(lam, outliers) if outliers < len(lam) else float("nan")
        frames.append(pd.DataFrame([dict(base, kind="eigenvalue", index=i + 1, value=float(v), residual=float(r))
                                    for i, (v, r) in enumerate(zip(top.eigenvalues, top.residuals))]))
        frames.append(pd.DataFrame(dict(base, kind="density", eigenvalue=density.grid, value=density.density)))
        frames.append(pd.DataFrame([dict(base, kind="summary", outliers=outliers, bulk_edge=edge,
                                         gap_ratio=float(lam[outliers - 1] / edge) if 0 < outliers < len(lam) else float("nan"),
                                         trace=density.moment(1) * op.shape[0], density_q99=quantile99,
                                         top_eigenvalue=float(lam[0]), num_params=op.shape[0], train_loss=op.loss())]))
    return pd.concat(frames, ignore_index=True)


@ANALYSES.register("minibatch_sharpness")
def minibatch_sharpness(
    runs: list[Run],
    device: str = "cpu",
    where: dict | None = None,
    batch_sizes: tuple[int, ...] = (8, 32, 128, 512),
    batches: int = 5,
    eig_tol: float = 1e-3,
    dtype: str = "float32",
    seed: int = 0,
) -> pd.DataFrame:
    """Top eigenvalue of the minibatch Hessian vs batch size, at the final
    weights of the first run whose labels match ``where``: for each batch size,
    ``batches`` random training minibatches (drawn with ``seed``), plus the
    full training set (``batch_size`` = its size, ``full = True``)."""
    import pandas as pd

    from ..curvature import HessianOperator, top_eigenvalues

    where = where or {}
    chosen = [r for r in runs if r.status == "ok" and all(str(r.labels.get(k)) == str(v) for k, v in where.items())]
    if not chosen:
        raise ValueError(f"minibatch_sharpness: no finished run has labels {where}")
    run = chosen[0]
    model, data = run.load(device=device)
    loss_fn = build_loss(run.spec["loss"], model=model)
    x, y = data.x["train"].to(device), data.y["train"].to(device)
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for b in [int(b) for b in batch_sizes if int(b) < len(x)] + [len(x)]:
        draws = 1 if b == len(x) else int(batches)
        for k in range(draws):
            idx = torch.randperm(len(x), generator=gen)[:b].to(device)
            op = HessianOperator(model, loss_fn, x[idx], y[idx], dtype=dtype)
            top = top_eigenvalues(op, k=1, tol=eig_tol, seed=k)
            rows.append({"run_id": run.run_id, **run.labels, "batch_size": b, "draw": k, "full": b == len(x),
                         "top_eigenvalue": float(top.eigenvalues[0]), "residual": float(top.residuals[0])})
    return pd.DataFrame(rows)
