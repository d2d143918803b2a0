"""Random directions in weight space, filter-normalised as in Li, Xu, Taylor, Studer,
Goldstein, "Visualizing the Loss Landscape of Neural Nets" (arXiv 1712.09913;
tomgoldstein/loss-landscape ``net_plotter.py``).

A Gaussian direction d gets, per output filter/neuron i (slice i along dim 0 of
a weight tensor), d_i <- d_i * ||w_i|| / (||d_i|| + 1e-10), so a step along d is
as large relative to each filter as the filter itself, which removes the scale
invariance of ReLU/BN nets from the picture. Parameters with one dimension
(biases, BatchNorm affine) are zeroed with ``ignore='biasbn'`` (the reference
default) or copied from the weights otherwise, as the reference does.
Directions are dicts name -> tensor over ``named_parameters()``; frozen
parameters (``requires_grad=False``) get zeros, so a step along a direction
never moves them.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["random_direction", "normalize_direction", "direction_norms"]

NORMS = ("filter", "layer", "none")
IGNORES = ("biasbn", None)


def normalize_direction(direction: dict[str, torch.Tensor], weights: dict[str, torch.Tensor],
                        norm: str = "filter", ignore: str | None = "biasbn") -> dict[str, torch.Tensor]:
    """Rescale ``direction`` against ``weights`` (new tensors; inputs unchanged)."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if ignore not in IGNORES:
        raise ValueError(f"ignore must be 'biasbn' or None, got {ignore!r}")
    out = {}
    for name, d in direction.items():
        w = weights[name].detach().to(d.dtype)
        if d.dim() <= 1:
            out[name] = torch.zeros_like(d) if ignore == "biasbn" else w.clone()
        elif norm == "filter":
            d_flat, w_flat = d.reshape(d.shape[0], -1), w.reshape(w.shape[0], -1)
            scale = w_flat.norm(dim=1) / (d_flat.norm(dim=1) + 1e-10)
            out[name] = (d_flat * scale[:, None]).reshape(d.shape)
        elif norm == "layer":
            out[name] = d * (w.norm() / (d.norm() + 1e-10))
        else:
            out[name] = d.clone()
    return out


def random_direction(model: nn.Module, norm: str = "filter", ignore: str | None = "biasbn",
                     seed: int | None = 0) -> dict[str, torch.Tensor]:
    """A Gaussian direction over the model's parameters, normalised with :func:`normalize_direction`;
    zero on frozen parameters (``requires_grad=False``)."""
    gen = torch.Generator()
    if seed is not None:
        gen.manual_seed(int(seed))
    else:
        gen.seed()
    weights = {n: p.detach() for n, p in model.named_parameters()}
    raw = {n: torch.randn(w.shape, generator=gen, dtype=torch.float64).to(dtype=w.dtype, device=w.device)
           for n, w in weights.items()}
    direction = normalize_direction(raw, weights, norm=norm, ignore=ignore)
    for name, p in model.named_parameters():
        if not p.requires_grad:
            direction[name] = torch.zeros_like(direction[name])
    return direction


def direction_norms(direction: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per-filter norms of each tensor (the quantity filter normalisation matches to the weights)."""
    return {n: (d.reshape(d.shape[0], -1).norm(dim=1) if d.dim() > 1 else d.abs()) for n, d in direction.items()}
