"""Linear interpolation between two weight sets, with loss and error barriers.

theta(alpha) = (1 - alpha) theta_A + alpha theta_B for parameters and floating
buffers; integer buffers (BatchNorm's ``num_batches_tracked``) are taken from A.
Barriers (REFERENCES 4.5):
  loss barrier  (Entezari et al., arXiv 2110.06296): max_alpha L(alpha) - ((1 - alpha) L_A + alpha L_B)
  error barrier (Frankle et al., arXiv 1912.05671): max_alpha Err(alpha) - (Err_A + Err_B) / 2
With ``bn_data`` the BatchNorm running statistics are recomputed at every
alpha (averaged interpolated statistics are wrong for the interpolated
weights, which inflates barriers), on a copy of the model.
"""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..curvature._model import chunks
from .evaluate import evaluate

__all__ = ["interpolate_states", "interpolation_path", "barriers"]


def _state(obj) -> dict[str, torch.Tensor]:
    return obj.state_dict() if isinstance(obj, nn.Module) else obj


def interpolate_states(state_a: dict, state_b: dict, alpha: float) -> dict[str, torch.Tensor]:
    if set(state_a) != set(state_b):
        raise ValueError(f"state dicts differ in keys: {sorted(set(state_a) ^ set(state_b))}")
    out = {}
    for k, a in state_a.items():
        b = state_b[k]
        if a.shape != b.shape:
            raise ValueError(f"{k}: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")
        out[k] = torch.lerp(a, b.to(a.dtype), float(alpha)) if a.is_floating_point() else a.clone()
    return out


@torch.no_grad()
def recompute_batchnorm(model: nn.Module, x, chunk_size: int | None = None):
    """Reset every BatchNorm layer's running statistics and recompute them on ``x``
    (train-mode forward passes of ``chunk_size`` examples, cumulative average;
    None: one pass, the exact mean and unbiased variance);
    leaves ``model`` in eval mode. A no-op for models without BatchNorm."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    saved = [(m, m.momentum) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the chunks
    model.train()
    for a, b in chunks(len(x), chunk_size):
        model(x[a:b])
    for m, mom in saved:
        m.momentum = mom
    model.eval()


def interpolation_path(model: nn.Module, state_a, state_b, loss_fn, x, y, n_points: int = 11,
                       chunk_size: int | None = 1024, bn_data=None, bn_chunk_size: int | None = None) -> pd.DataFrame:
    """Loss, accuracy and error along the segment; columns alpha, loss, accuracy, error.

    ``model`` only supplies the architecture (a deep copy is loaded at each alpha);
    ``state_a``/``state_b`` are state dicts or models. ``n_points`` >= 3 (use >= 11).
    BatchNorm statistics are recomputed from ``bn_data`` in train mode with a
    cumulative average over chunks of ``bn_chunk_size`` (None: one pass over all
    of ``bn_data``, which gives its exact mean and unbiased variance; smaller
    chunks average per-chunk statistics, like ``torch.optim.swa_utils.update_bn``).
    """
    if int(n_points) < 3:
        raise ValueError(f"n_points must be >= 3, got {n_points!r}")
    sa, sb = _state(state_a), _state(state_b)
    work = copy.deepcopy(model)
    rows = []
    for alpha in np.linspace(0.0, 1.0, int(n_points)):
        work.load_state_dict(interpolate_states(sa, sb, alpha))
        if bn_data is not None:
            recompute_batchnorm(work, bn_data, bn_chunk_size)
        rows.append({"alpha": float(alpha), **evaluate(work, loss_fn, x, y, chunk_size=chunk_size)})
    return pd.DataFrame(rows, columns=["alpha", "loss", "accuracy", "error"])


def barriers(path: pd.DataFrame) -> dict[str, float]:
    """Loss and error barriers of an interpolation path (rows sorted by alpha from 0 to 1)."""
    path = path.sort_values("alpha")
    alpha = path["alpha"].to_numpy()
    if not (np.isclose(alpha[0], 0.0) and np.isclose(alpha[-1], 1.0)):
        raise ValueError("the path must include alpha = 0 and alpha = 1")
    loss = path["loss"].to_numpy()
    line = (1 - alpha) * loss[0] + alpha * loss[-1]
    out = {"loss_barrier": float(np.max(loss - line)), "loss_barrier_alpha": float(alpha[np.argmax(loss - line)])}
    if "error" in path and not path["error"].isna().any():
        err = path["error"].to_numpy()
        excess = err - 0.5 * (err[0] + err[-1])
        out["error_barrier"] = float(np.max(excess))
        out["error_barrier_alpha"] = float(alpha[np.argmax(excess)])
    return out
