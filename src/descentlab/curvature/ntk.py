"""Empirical neural tangent kernel Theta(x, x') = J(x) J(x')^T (Jacot, Gabriel, Hongler, arXiv 1806.07572)."""

from __future__ import annotations

import torch
from torch import nn

from .per_example import jacobian

__all__ = ["empirical_ntk", "ntk_eigenvalues"]


def empirical_ntk(model: nn.Module, x1, x2=None, chunk_size: int | None = 256,
                  dtype: torch.dtype | str | None = None) -> torch.Tensor:
    """(N1 * C, N2 * C) Gram matrix of output Jacobians; entry [n*C + c, m*C + d] = <df_c(x_n), df_d(x'_m)>.

    BatchNorm runs in eval mode; empty x1 or x2 and random models are refused. Memory is (N1 + N2) * C * P for the Jacobians.
    """
    if x2 is not None and len(x2) == 0:
        raise ValueError("x2 has no examples (first dimension 0): the kernel needs at least one")
    j1 = jacobian(model, x1, chunk_size=chunk_size, dtype=dtype)
    j2 = j1 if x2 is None else jacobian(model, x2, chunk_size=chunk_size, dtype=dtype)
    return j1 @ j2.T


def ntk_eigenvalues(model: nn.Module, x, **kwargs) -> torch.Tensor:
    """Eigenvalues (descending) of the empirical NTK Gram matrix on x."""
    theta = empirical_ntk(model, x, **kwargs).to(torch.float64)
    return torch.linalg.eigvalsh(0.5 * (theta + theta.T)).flip(0)
