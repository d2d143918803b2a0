"""Per-example gradients and Jacobians with ``torch.func`` (vmap over examples).

BatchNorm runs in eval mode (batch statistics would couple the examples and
train-mode BatchNorm fails under vmap, pytorch#85533); a random model
(dropout in training mode) is refused.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import nn
from torch.func import grad, jacrev, vmap

from ._model import (LossFn, ParameterSnapshot, as_tensor, check_deterministic, chunks, module_modes, num_examples,
                     parse_dtype)

__all__ = ["per_example_gradients", "per_example_gradient_blocks", "jacobian"]


def per_example_gradients(model: nn.Module, loss_fn: LossFn, x, y, chunk_size: int | None = 256,
                          dtype: torch.dtype | str | None = None) -> torch.Tensor:
    """(N, P) matrix whose row i is the gradient of loss_fn on example i alone.

    Columns follow the flattened-parameter layout of the curvature operators.
    """
    return torch.cat(list(per_example_gradient_blocks(model, loss_fn, x, y, chunk_size, dtype)))


def per_example_gradient_blocks(model: nn.Module, loss_fn: LossFn, x, y, chunk_size: int | None = 256,
                                dtype: torch.dtype | str | None = None) -> Iterator[torch.Tensor]:
    """The rows of :func:`per_example_gradients`, one (chunk, P) block per chunk of examples,
    for a consumer that reduces them as they come (the matrix never exists at once)."""
    dtype = parse_dtype(dtype, model)
    snap = ParameterSnapshot(model, dtype)
    x = as_tensor(x, dtype, snap.device)
    y = as_tensor(y, dtype, snap.device)
    ranges = chunks(num_examples(x, y), chunk_size)

    def loss_one(params, xi, yi):
        return loss_fn(snap.call(model, params, xi.unsqueeze(0)), yi.unsqueeze(0))

    per_example = vmap(grad(loss_one), in_dims=(None, 0, 0))
    with module_modes(model, "eval"):
        check_deterministic(model, snap, x, ranges)
        for a, b in ranges:
            g = per_example(snap.tensors, x[a:b], y[a:b])
            yield torch.cat([g[n].reshape(b - a, -1) for n in snap.names], dim=1).detach()


def jacobian(model: nn.Module, x, chunk_size: int | None = 256, dtype: torch.dtype | str | None = None) -> torch.Tensor:
    """(N * C, P) Jacobian of the flattened outputs; row n * C + c is d f_c(x_n) / d theta."""
    dtype = parse_dtype(dtype, model)
    snap = ParameterSnapshot(model, dtype)
    x = as_tensor(x, dtype, snap.device)
    ranges = chunks(num_examples(x), chunk_size)

    def out_one(params, xi):
        return snap.call(model, params, xi.unsqueeze(0)).reshape(-1)

    jac = vmap(jacrev(out_one), in_dims=(None, 0))
    rows = []
    with module_modes(model, "eval"):
        check_deterministic(model, snap, x, ranges)
        for a, b in ranges:
            j = jac(snap.tensors, x[a:b])
            c = j[snap.names[0]].shape[1]
            rows.append(torch.cat([j[n].reshape(b - a, c, -1) for n in snap.names], dim=2).reshape((b - a) * c, -1))
    return torch.cat(rows).detach()
