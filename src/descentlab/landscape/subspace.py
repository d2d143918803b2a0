"""Training in a random subspace, theta = theta_0 + P theta_d, for the intrinsic
dimension of Li, Farkhoor, Liu, Yosinski, "Measuring the Intrinsic Dimension of
Objective Landscapes" (arXiv 1804.08838).

P is a fixed dense Gaussian D x d matrix with unit-norm columns; theta_d starts
at 0, so training starts from the model's weights. d_int90 is the smallest d
whose subspace training reaches 90% of the full model's accuracy.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.func import functional_call

__all__ = ["RandomSubspace", "intrinsic_dimension"]


class RandomSubspace(nn.Module):
    """Wrap ``model`` so that the only trainable parameter is ``theta_d`` (size ``dim``).

    ``parameters()`` yields only ``theta_d``: the wrapped model is kept outside the
    module tree on purpose, so optimizers never see its weights (its buffers,
    e.g. BatchNorm statistics, still update in training mode). ``train()``/``eval()``
    are forwarded to it. Memory: D * dim floats for P.
    """

    def __init__(self, model: nn.Module, dim: int, seed: int = 0, persistent: bool = True):
        super().__init__()
        if int(dim) < 1:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        self._wrapped = [model]  # a list hides it from the module registry
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.names = [n for n, _ in named]
        self.shapes = [p.shape for _, p in named]
        theta0 = torch.cat([p.detach().reshape(-1) for _, p in named]).clone()
        gen = torch.Generator().manual_seed(int(seed))
        P = torch.randn(theta0.numel(), int(dim), generator=gen, dtype=torch.float64)
        P = P / P.norm(dim=0, keepdim=True)
        # persistent=False keeps theta_0 and P (D x d) out of the state dict; the
        # training loop rebuilds them from the run's seed and ``seed``.
        self.register_buffer("theta0", theta0, persistent=persistent)
        self.register_buffer("projection", P.to(theta0.dtype).to(theta0.device), persistent=persistent)
        self.theta_d = nn.Parameter(torch.zeros(int(dim), dtype=theta0.dtype, device=theta0.device))

    @property
    def model(self) -> nn.Module:
        return self._wrapped[0]

    def full_parameters(self) -> torch.Tensor:
        """theta_0 + P theta_d, flattened (differentiable in theta_d)."""
        return self.theta0 + self.projection @ self.theta_d

    def _unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        out, i = {}, 0
        for n, s in zip(self.names, self.shapes):
            k = s.numel()
            out[n] = flat[i : i + k].view(s)
            i += k
        return out

    def forward(self, *args, **kwargs):
        return functional_call(self.model, self._unflatten(self.full_parameters()), args, kwargs)

    def train(self, mode: bool = True):
        super().train(mode)
        self.model.train(mode)
        return self

    @torch.no_grad()
    def write_back(self) -> nn.Module:
        """Copy theta_0 + P theta_d into the wrapped model's parameters and return it."""
        params = dict(self.model.named_parameters())
        for n, t in self._unflatten(self.full_parameters()).items():
            params[n].copy_(t)
        return self.model


def intrinsic_dimension(dims: Sequence[int], accuracies: Sequence[float], baseline: float,
                        fraction: float = 0.9) -> int | None:
    """Smallest d with accuracy >= fraction * baseline (None if none reaches it)."""
    if len(dims) != len(accuracies):
        raise ValueError(f"{len(dims)} dims but {len(accuracies)} accuracies")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    hits = [d for d, a in sorted(zip(dims, accuracies)) if a >= fraction * baseline]
    return int(hits[0]) if hits else None
