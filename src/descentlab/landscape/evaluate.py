"""Full-dataset loss and accuracy at given weights, chunked and weighted by chunk size."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.func import functional_call

from ..curvature._model import chunks, module_modes

__all__ = ["evaluate", "offset_params"]


def offset_params(base: dict[str, torch.Tensor], directions, coefficients) -> dict[str, torch.Tensor]:
    """base + sum_k c_k d_k, per parameter."""
    out = {}
    for name, w in base.items():
        t = w.clone()
        for d, c in zip(directions, coefficients):
            if name in d and c != 0:
                t = t + c * d[name].to(t.dtype)
        out[name] = t
    return out


@torch.no_grad()
def evaluate(model: nn.Module, loss_fn, x, y, params: dict[str, torch.Tensor] | None = None,
             chunk_size: int | None = 1024) -> dict[str, float]:
    """Mean loss and accuracy (NaN for non-classification targets) in eval mode.

    ``params`` (name -> tensor, any subset of parameters/buffers) replace the
    model's own for this evaluation only; the model and its mode are unchanged.
    Chunk results are weighted by chunk size, so any chunk_size gives the same answer.
    """
    n = len(x)
    if n == 0 or len(y) != n:
        raise ValueError(f"x and y need the same non-zero number of examples, got {len(x)} and {len(y)}")
    total, correct = 0.0, 0.0
    classify = not y.is_floating_point()
    with module_modes(model):
        model.eval()
        for a, b in chunks(n, chunk_size):
            out = model(x[a:b]) if params is None else functional_call(model, params, (x[a:b],))
            total += float(loss_fn(out, y[a:b])) * (b - a)
            if classify and out.ndim == 2:
                correct += float((out.argmax(dim=1) == y[a:b]).sum())
    acc = correct / n if classify else math.nan
    return {"loss": total / n, "accuracy": acc, "error": 1.0 - acc}
