"""Sharpness measures: the top Hessian eigenvalue and adaptive (ASAM) sharpness.

Adaptive sharpness (Kwon, Kim, Park, Choi, "ASAM", arXiv 2102.11600):
    S(w) = max_{||T_w^{-1} eps|| <= rho} L(w + eps) - L(w),  T_w = diag(|w| + eta),
where, as in the official SamsungLabs/ASAM code, T_w scales only parameters
whose name contains "weight" (others get T = 1) unless ``only_weights=False``.
With eps = T_w delta the constraint is the ball ||delta|| <= rho; the maximum is
estimated by projected, normalised gradient ascent on delta (the first step is
ASAM's eps = rho T_w^2 g / ||T_w g||), keeping the best value seen, so the
result is a lower bound of S(w). ``adaptive=False`` gives plain SAM sharpness
(T = Id).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ._model import (LossFn, ParameterSnapshot, as_tensor, check_batchnorm_chunks, check_batchnorm_mode,
                     check_deterministic, chunks, module_modes, num_examples, parse_dtype)
from .eigen import top_eigenvalues
from .operators import HessianOperator

__all__ = ["hessian_sharpness", "adaptive_sharpness"]


def hessian_sharpness(model: nn.Module, loss_fn: LossFn, x, y, tol: float = 1e-4, **operator_kwargs) -> dict[str, float]:
    """Top Hessian eigenvalue (Lanczos) with its residual and HVP count."""
    op = HessianOperator(model, loss_fn, x, y, **operator_kwargs)
    res = top_eigenvalues(op, k=1, tol=tol)
    return {"sharpness": float(res.eigenvalues[0]), "sharpness_residual": float(res.residuals[0]),
            "sharpness_hvps": float(res.n_hvps)}


class _FullBatchLoss:
    """Mean loss and its gradient at arbitrary flat parameters, chunked and size-weighted."""

    def __init__(self, model, loss_fn, x, y, chunk_size, dtype, batchnorm):
        self.model, self.loss_fn, self.batchnorm = model, loss_fn, check_batchnorm_mode(batchnorm)
        self.snap = ParameterSnapshot(model, parse_dtype(dtype, model))
        self.x = as_tensor(x, self.snap.dtype, self.snap.device)
        self.y = as_tensor(y, self.snap.dtype, self.snap.device)
        self.ranges = chunks(num_examples(self.x, self.y), chunk_size)
        check_batchnorm_chunks(model, self.batchnorm, self.ranges)
        with module_modes(model, self.batchnorm):
            check_deterministic(model, self.snap, self.x, self.ranges)

    def __call__(self, flat: torch.Tensor, need_grad: bool = True):
        total, grad = 0.0, torch.zeros_like(flat)
        n = len(self.x)
        with module_modes(self.model, self.batchnorm):
            for a, b in self.ranges:
                leaf = flat.detach().requires_grad_(need_grad)
                with torch.set_grad_enabled(need_grad):
                    loss = self.loss_fn(self.snap.call(self.model, self.snap.unflatten(leaf), self.x[a:b]),
                                        self.y[a:b]) * ((b - a) / n)
                    if need_grad:
                        grad += torch.autograd.grad(loss, leaf)[0]
                total += float(loss.detach())
        return total, grad


def adaptive_sharpness(model: nn.Module, loss_fn: LossFn, x, y, rho: float = 0.5, eta: float = 0.01,
                       n_steps: int = 5, adaptive: bool = True, only_weights: bool = True,
                       chunk_size: int | None = None, dtype=None, batchnorm: str = "eval",
                       seed: int = 0) -> dict[str, float]:
    """Estimate max_{||T_w^{-1} eps|| <= rho} L(w + eps) - L(w) with ``n_steps`` ascent steps.

    Returns ``sharpness`` (best value), ``loss`` (L(w)), ``eps_norm`` and
    ``scaled_eps_norm`` (||T_w^{-1} eps||, = rho unless the optimum is interior),
    and ``n_gradients``. The model is not modified.
    """
    if not rho > 0:
        raise ValueError(f"rho must be positive, got {rho!r}")
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta!r}")
    if int(n_steps) < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps!r}")
    f = _FullBatchLoss(model, loss_fn, x, y, chunk_size, dtype, batchnorm)
    snap = f.snap
    w = snap.vector()
    if adaptive:
        parts = [(snap.tensors[n].abs() + eta) if ("weight" in n or not only_weights) else torch.ones_like(snap.tensors[n])
                 for n in snap.names]
        scale = snap.flatten(parts)
    else:
        scale = torch.ones_like(w)
    if adaptive and bool((scale == 0).any()):
        raise ValueError("T_w has zero entries (eta=0 and zero weights): use eta > 0")
    base, grad = f(w)
    delta = torch.zeros_like(w)
    best, best_delta, n_grads = -np.inf, delta, 1
    rng = torch.Generator().manual_seed(seed)
    for step in range(int(n_steps)):
        g_delta = scale * grad  # d/d delta of L(w + T delta)
        norm = float(g_delta.norm())
        if norm <= 1e-12 * max(1.0, float(delta.norm())):
            # stationary point (e.g. an exact minimum): take a random direction instead
            g_delta = torch.randn(w.shape, generator=rng, dtype=w.dtype).to(w.device)
            norm = float(g_delta.norm())
        delta = delta + rho * g_delta / norm
        dn = float(delta.norm())
        if dn > rho:
            delta = delta * (rho / dn)
        value, grad = f(w + scale * delta, need_grad=step < int(n_steps) - 1)
        n_grads += int(step < int(n_steps) - 1)
        if value - base > best:
            best, best_delta = value - base, delta
    eps = scale * best_delta
    return {"sharpness": float(best), "loss": float(base), "eps_norm": float(eps.norm()),
            "scaled_eps_norm": float(best_delta.norm()), "n_gradients": float(n_grads), "rho": float(rho)}
