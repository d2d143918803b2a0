"""In-training gradient noise scale B_simple = tr(Sigma) / |G|^2 (McCandlish et al., arXiv
1812.06162), from per-example gradients on a fixed subset of the training set
(:func:`descentlab.curvature.noise_scale.noise_scale_from_per_example`)."""

from __future__ import annotations

import math

import torch
from torch import nn

from .noise_scale import noise_scale_from_per_example
from .per_example import per_example_gradient_blocks

__all__ = ["NoiseScale"]


class NoiseScale:
    """B_simple every ``every`` steps (the loop calls instruments after each step, from step 1).

    ``n_examples`` training examples, drawn once with ``seed``, give the per-example
    gradients (in eval mode; parameters, modes and gradients are left as found).
    Returns ``{"b_simple", "grad_sq_norm", "trace_sigma"}``, or ``{}`` off its steps
    and when the weights are not finite (a diverging run)."""

    def __init__(self, every: int = 10, n_examples: int = 512, seed: int = 0, chunk_size: int | None = 256):
        if int(every) < 1:
            raise ValueError(f"noise_scale: every must be a positive integer, got {every!r}")
        if int(n_examples) < 2:
            raise ValueError(f"noise_scale: n_examples must be at least 2, got {n_examples!r}")
        self.every, self.n_examples, self.seed, self.chunk_size = int(every), int(n_examples), int(seed), chunk_size
        self.indices: torch.Tensor | None = None

    def __call__(self, step: int, model: nn.Module, loss_fn, x_train, y_train) -> dict[str, float]:
        if step % self.every:
            return {}
        if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
            return {}
        if self.indices is None:
            n = x_train.shape[0]
            if self.n_examples > n:
                raise ValueError(f"noise_scale: n_examples={self.n_examples} but the training set has {n}")
            gen = torch.Generator().manual_seed(self.seed)
            self.indices = torch.randperm(n, generator=gen)[: self.n_examples].to(x_train.device)
        idx = self.indices.to(x_train.device)
        # reduced chunk by chunk: the (n_examples, P) matrix is never built
        out = noise_scale_from_per_example(per_example_gradient_blocks(
            model, loss_fn, x_train[idx], y_train[idx], chunk_size=self.chunk_size, dtype=torch.float64))
        values = {"b_simple": out["b_simple"], "grad_sq_norm": out["grad_sq_norm"], "trace_sigma": out["trace_sigma"]}
        return values if all(math.isfinite(v) for v in values.values()) else {}

    def state_dict(self) -> dict:
        return {"indices": None if self.indices is None else self.indices.cpu()}

    def load_state_dict(self, state: dict) -> None:
        self.indices = state["indices"]
