"""1-D and 2-D loss/accuracy landscapes along directions (Li et al., arXiv 1712.09913),
returned as tidy DataFrames (one row per grid point)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from .directions import random_direction
from .evaluate import evaluate, offset_params

__all__ = ["loss_line", "loss_surface"]


def _base(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def loss_line(model: nn.Module, loss_fn, x, y, direction: dict[str, torch.Tensor] | None = None,
              alphas: Sequence[float] = tuple(np.linspace(-1, 1, 21)), chunk_size: int | None = 1024,
              seed: int = 0) -> pd.DataFrame:
    """Loss, accuracy and error at theta + alpha d; columns alpha, loss, accuracy, error.

    ``direction`` defaults to a filter-normalised random direction (ignore='biasbn').
    """
    d = random_direction(model, seed=seed) if direction is None else direction
    base = _base(model)
    rows = [{"alpha": float(a), **evaluate(model, loss_fn, x, y, offset_params(base, [d], [a]), chunk_size)}
            for a in alphas]
    return pd.DataFrame(rows, columns=["alpha", "loss", "accuracy", "error"])


def loss_surface(model: nn.Module, loss_fn, x, y, directions=None,
                 alphas: Sequence[float] = tuple(np.linspace(-1, 1, 11)),
                 betas: Sequence[float] | None = None, chunk_size: int | None = 1024,
                 seed: int = 0) -> pd.DataFrame:
    """Loss/accuracy at theta + alpha d1 + beta d2; columns alpha, beta, loss, accuracy, error.

    ``directions`` defaults to two independent filter-normalised random directions
    (seeds ``seed`` and ``seed + 1``), nearly orthogonal in high dimension.
    """
    if directions is None:
        directions = (random_direction(model, seed=seed), random_direction(model, seed=seed + 1))
    if len(directions) != 2:
        raise ValueError(f"loss_surface needs two directions, got {len(directions)}")
    betas = alphas if betas is None else betas
    base = _base(model)
    rows = []
    for a in alphas:
        for b in betas:
            params = offset_params(base, directions, [a, b])
            rows.append({"alpha": float(a), "beta": float(b), **evaluate(model, loss_fn, x, y, params, chunk_size)})
    return pd.DataFrame(rows, columns=["alpha", "beta", "loss", "accuracy", "error"])
