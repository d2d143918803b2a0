"""Losses: the ``LOSSES`` registry (name -> builder returning a loss module).

A loss is called as ``loss(outputs, targets)`` and returns the mean over the
batch. Classification targets are int64 class indices of shape (N,); outputs
are logits of shape (N, C). Regression targets are float tensors shaped like
the outputs. Each loss also exists as a plain function (``squentropy``,
``focal_loss``, ``dice_loss``, ``spherical_z_loss``, ``madl``, ``gmadl``,
``log_partition_penalty``, ``norm_penalty`` ...).

Registered names: cross_entropy, label_smoothing, mse (with the Hui-Belkin
rescaling k, M), squentropy, focal, dice, spherical_z_loss (the Z-loss of arXiv
1604.08859) (classification.py); madl, gmadl (returns.py);
log_partition_penalty (PaLM's "z-loss"; ``z_loss`` is its deprecated name) and
norm_loss, wrappers that add a penalty to a base loss (penalties.py). ``norm_loss`` needs the model: build it with
``build_loss(spec, model=model)``, or call ``loss.bind_model(model)`` once.
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


def cross_entropy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean softmax cross-entropy, logsumexp(z) - z_y, with the shape and dtype checks."""
    check_classification(outputs, targets, "cross_entropy")
    return F.cross_entropy(outputs, targets.long())


def label_smoothing(outputs: torch.Tensor, targets: torch.Tensor, smoothing: float = 0.1) -> torch.Tensor:
    """Cross-entropy against (1 - eps) * onehot + eps / C (Szegedy et al., arXiv 1512.00567)."""
    check_classification(outputs, targets, "label_smoothing")
    return F.cross_entropy(outputs, targets.long(), label_smoothing=smoothing)


@LOSSES.register("cross_entropy")
class CrossEntropy(nn.Module):
    """Mean softmax cross-entropy, logsumexp(z) - z_y."""

    def forward(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return cross_entropy(outputs, targets)


@LOSSES.register("label_smoothing")
class LabelSmoothing(nn.Module):
    """Cross-entropy against (1 - eps) * onehot + eps / C over all C classes."""

    def __init__(self, smoothing: float = 0.1):
        super().__init__()
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"label_smoothing: smoothing must be in [0, 1), got {smoothing}")
        self.smoothing = smoothing

    def forward(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return label_smoothing(outputs, targets, self.smoothing)


def check_regression(outputs: torch.Tensor, targets: torch.Tensor, loss: str) -> None:
    """Raise a clear error unless outputs and targets are floating tensors of one shape."""
    if not outputs.is_floating_point():
        raise TypeError(f"{loss}: outputs must be floating point, got {outputs.dtype}")
    if not targets.is_floating_point():
        raise TypeError(f"{loss}: targets must be floating point, got {targets.dtype}")
    if targets.shape != outputs.shape:
        raise ValueError(
            f"{loss}: targets must have the outputs' shape, got {tuple(targets.shape)} "
            f"vs {tuple(outputs.shape)}"
        )


def mse(outputs: torch.Tensor, targets: torch.Tensor, k: float = 1.0, M: float = 1.0) -> torch.Tensor:
    """Mean squared error; for class-index targets against ``M * onehot`` with weight k at the label.

    Hui & Belkin, "Evaluation of Neural Architectures Trained with Square Loss vs
    Cross-Entropy in Classification Tasks", arXiv 2006.07322:
    (1/C) [k (z_y - M)^2 + sum_{j != y} z_j^2], averaged over the batch, as the
    authors' code (Like-Hui/Squentropy_vision: weights ``onehot * (k - 1) + 1``).
    k = M = 1 is plain ``F.mse_loss`` against the one-hot vector.
    """
    if targets.is_floating_point():
        if k != 1.0 or M != 1.0:
            raise ValueError(f"mse: k and M apply to class-index targets only, got k={k}, M={M}")
        if targets.shape != outputs.shape:
            raise ValueError(
                f"mse: regression targets must match outputs, got {tuple(targets.shape)} "
                f"vs {tuple(outputs.shape)}"
            )
        return F.mse_loss(outputs, targets)
    check_classification(outputs, targets, "mse")
    onehot = F.one_hot(targets.long(), outputs.shape[1]).to(outputs.dtype)
    if k == 1.0 and M == 1.0:
        return F.mse_loss(outputs, onehot)
    weights = 1.0 + (k - 1.0) * onehot
    return (weights * (outputs - M * onehot) ** 2).mean()


@LOSSES.register("mse")
class MSE(nn.Module):
    """Mean squared error: on one-hot targets for classification, plain for regression.

    For classification (integer targets) it is (1/C) * sum_j (z_j - onehot_j)^2
    averaged over the batch, i.e. ``F.mse_loss`` against the one-hot vector. With
    the rescaling of Hui & Belkin (arXiv 2006.07322), ``k`` weights the true
    class's term and ``M`` is the target value of the true class:
    (1/C) [k (z_y - M)^2 + sum_{j != y} z_j^2]. Their large-class settings are
    e.g. k = 15, M = 30 for ImageNet; k = M = 1 (the default) for few classes.
    """

    def __init__(self, k: float = 1.0, M: float = 1.0):
        super().__init__()
        if not k > 0:
            raise ValueError(f"mse: k must be > 0, got {k}")
        if not M > 0:
            raise ValueError(f"mse: M must be > 0, got {M}")
        self.k, self.M = float(k), float(M)

    def forward(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return mse(outputs, targets, self.k, self.M)


def build_loss(spec: dict | str, model: nn.Module | None = None) -> nn.Module:
    """Build a loss from ``{"name": ..., **kwargs}``.

    Losses that need the model (``norm_loss``, possibly nested inside another
    wrapper) are bound to ``model`` here; building one without a model is fine,
    but calling it before ``bind_model`` raises.
    """
    loss = LOSSES.build(spec)
    if model is not None:
        for module in loss.modules():
            if hasattr(module, "bind_model"):
                module.bind_model(model)
    return loss


# Modules that register more losses; imported last so they can use the names above.
from . import classification, penalties, returns  # noqa: E402,F401
from .classification import dice_loss, focal_loss, spherical_z_loss, squentropy  # noqa: E402,F401
from .penalties import log_partition_penalty, norm_penalty, z_loss_penalty  # noqa: E402,F401
from .returns import gmadl, madl  # noqa: E402,F401
