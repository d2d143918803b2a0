"""Losses: the ``LOSSES`` registry (name -> builder returning a loss module).

A loss is called as ``loss(outputs, targets)`` and returns the mean over the
batch. Classification targets are int64 class indices of shape (N,); outputs
are logits of shape (N, C). Regression targets are float tensors shaped like
the outputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import Registry

LOSSES = Registry("loss")


def check_classification(outputs: torch.Tensor, targets: torch.Tensor, loss: str) -> None:
    """Raise a clear error for shapes or dtypes a classification loss cannot take."""
    if outputs.ndim != 2:
        raise ValueError(f"{loss}: outputs must be (N, C) logits, got shape {tuple(outputs.shape)}")
    if not outputs.is_floating_point():
        raise TypeError(f"{loss}: outputs must be floating point, got {outputs.dtype}")
    if targets.ndim != 1 or targets.shape[0] != outputs.shape[0]:
        raise ValueError(
            f"{loss}: targets must be (N,) class indices with N={outputs.shape[0]}, "
            f"got shape {tuple(targets.shape)}"
        )
    if targets.dtype not in (torch.int64, torch.int32, torch.uint8, torch.int16, torch.int8):
        raise TypeError(f"{loss}: targets must be integer class indices, got {targets.dtype}")


@LOSSES.register("cross_entropy")
class CrossEntropy(nn.Module):
    """Mean softmax cross-entropy, logsumexp(z) - z_y."""

    def forward(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        check_classification(outputs, targets, "cross_entropy")
        return F.cross_entropy(outputs, targets.long())


@LOSSES.register("label_smoothing")
class LabelSmoothing(nn.Module):
    """Cross-entropy against (1 - eps) * onehot + eps / C over all C classes."""

    def __init__(self, smoothing: float = 0.1):
        super().__init__()
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"label_smoothing: smoothing must be in [0, 1), got {smoothing}")
        self.smoothing = smoothing

    def forward(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        check_classification(outputs, targets, "label_smoothing")
        return F.cross_entropy(outputs, targets.long(), label_smoothing=self.smoothing)


@LOSSES.register("mse")
class MSE(nn.Module):
    """Mean squared error: on one-hot targets for classification, plain for regression.

    For classification (integer targets) it is (1/C) * sum_j (z_j - onehot_j)^2
    averaged over the batch, i.e. ``F.mse_loss`` against the one-hot vector.
    """

    def forward(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if targets.is_floating_point():
            if targets.shape != outputs.shape:
                raise ValueError(
                    f"mse: regression targets must match outputs, got {tuple(targets.shape)} "
                    f"vs {tuple(outputs.shape)}"
                )
            return F.mse_loss(outputs, targets)
        check_classification(outputs, targets, "mse")
        onehot = F.one_hot(targets.long(), outputs.shape[1]).to(outputs.dtype)
        return F.mse_loss(outputs, onehot)


def build_loss(spec: dict) -> nn.Module:
    return LOSSES.build(spec)
