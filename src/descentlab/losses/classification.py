"""Classification losses beyond cross-entropy: squentropy, focal, Sørensen-Dice, the
spherical Z-loss.

Each is a plain function ``f(outputs, targets, ...)`` and a registered module.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import LOSSES, check_classification


def squentropy(outputs: torch.Tensor, targets: torch.Tensor, square_weight: float = 1.0) -> torch.Tensor:
    """Cross-entropy plus the average square loss over the incorrect classes.

    Hui, Belkin, Wright, "Cut your Losses with Squentropy", arXiv 2302.03952;
    as the authors' code (Like-Hui/Squentropy-for-classification):
    CE(z, y) + square_weight / (C - 1) * sum_{j != y} z_j^2, averaged over the batch,
    on raw logits. ``square_weight`` is their code's optional rescaling (1 in the paper).
    """
    check_classification(outputs, targets, "squentropy")
    num_classes = outputs.shape[1]
    if num_classes < 2:
        raise ValueError(f"squentropy: needs at least 2 classes, got C={num_classes}")
    wrong = 1.0 - F.one_hot(targets.long(), num_classes).to(outputs.dtype)
    square = (wrong * outputs**2).sum(dim=1).mean() / (num_classes - 1)
    return F.cross_entropy(outputs, targets.long()) + square_weight * square


@LOSSES.register("squentropy")
class Squentropy(nn.Module):
    """Squentropy (arXiv 2302.03952): CE + mean square of the wrong-class logits. No hyperparameters."""

    def __init__(self, square_weight: float = 1.0):
        super().__init__()
        if not square_weight >= 0:
            raise ValueError(f"squentropy: square_weight must be >= 0, got {square_weight}")
        self.square_weight = float(square_weight)

    def forward(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return squentropy(outputs, targets, self.square_weight)


def _check_binary(outputs: torch.Tensor, targets: torch.Tensor, loss: str) -> None:
    if not outputs.is_floating_point():
        raise TypeError(f"{loss}: outputs must be floating point, got {outputs.dtype}")
    if targets.shape != outputs.shape:
        raise ValueError(
            f"{loss}: float (binary) targets must have the outputs' shape, got "
            f"{tuple(targets.shape)} vs {tuple(outputs.shape)}"
        )


def focal_loss(
    outputs: torch.Tensor,
    targets: torch.Tensor,
    gamma: float = 2.0,
    alpha: float | Sequence[float] | torch.Tensor | None = None,
) -> torch.Tensor:
    """Focal loss, -alpha_t (1 - p_t)^gamma log p_t, averaged over the batch.

    Lin et al., "Focal Loss for Dense Object Detection", arXiv 1708.02002.
    - Integer class targets (N,) with logits (N, C): softmax p_t = p_y. ``alpha``
      is None (1), a constant multiplier, or per-class weights (alpha_t = alpha[y]).
      gamma = 0 is alpha-weighted cross-entropy.
    - Float 0/1 targets shaped like the outputs: the paper's sigmoid form,
      p_t = sigmoid(z) if y = 1 else 1 - sigmoid(z), and a float ``alpha`` gives
      alpha_t = alpha for y = 1 and 1 - alpha for y = 0 (the paper uses 0.25);
      averaged over all entries.
    """
    if gamma < 0:
        raise ValueError(f"focal: gamma must be >= 0, got {gamma}")
    if targets.is_floating_point():
        _check_binary(outputs, targets, "focal")
        log_p_t = -F.binary_cross_entropy_with_logits(outputs, targets, reduction="none")
        loss = -((1.0 - log_p_t.exp()) ** gamma) * log_p_t
        if alpha is not None:
            if not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
                raise ValueError(f"focal: binary targets take a float alpha in [0, 1], got {alpha!r}")
            loss = (alpha * targets + (1.0 - alpha) * (1.0 - targets)) * loss
        return loss.mean()
    check_classification(outputs, targets, "focal")
    log_p_t = F.log_softmax(outputs, dim=1).gather(1, targets.long().unsqueeze(1)).squeeze(1)
    loss = -((1.0 - log_p_t.exp()) ** gamma) * log_p_t
    if alpha is not None:
        if isinstance(alpha, (int, float)):
            loss = alpha * loss
        else:
            weights = torch.as_tensor(alpha, dtype=outputs.dtype, device=outputs.device)
            if weights.shape != (outputs.shape[1],):
                raise ValueError(
                    f"focal: per-class alpha needs {outputs.shape[1]} weights, got shape {tuple(weights.shape)}"
                )
            loss = weights[targets.long()] * loss
    return loss.mean()


@LOSSES.register("focal")
class FocalLoss(nn.Module):
    """Focal loss (arXiv 1708.02002); see ``focal_loss`` for the softmax and sigmoid forms."""

    def __init__(self, gamma: float = 2.0, alpha: float | Sequence[float] | None = None):
        super().__init__()
        if gamma < 0:
            raise ValueError(f"focal: gamma must be >= 0, got {gamma}")
        if isinstance(alpha, (int, float)):
            if alpha < 0:
                raise ValueError(f"focal: alpha must be >= 0, got {alpha}")
        elif alpha is not None:
            alpha = [float(a) for a in alpha]
            if any(a < 0 for a in alpha):
                raise ValueError(f"focal: per-class alpha must be >= 0, got {alpha}")
        self.gamma, self.alpha = float(gamma), alpha

    def forward(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return focal_loss(outputs, targets, self.gamma, self.alpha)


def dice_loss(
    outputs: torch.Tensor, targets: torch.Tensor, smooth: float = 1.0, from_logits: bool = True
) -> torch.Tensor:
    """Soft Sørensen-Dice loss, 1 - mean_c (2 sum p_c y_c + s) / (sum p_c + sum y_c + s).

    Sums run over the batch (and any spatial dims) for each class c; outputs are
    (N, C, *spatial) logits (softmax over C) or, with ``from_logits=False``,
    probabilities; targets are (N, *spatial) class indices. The smoothing s makes a
    class that is absent from both prediction and target count as perfect (as in
    pytorch-optimizer's DiceLoss, which also averages over all C classes); a
    perfect prediction gives 0. Milletari et al. (V-Net, arXiv 1606.04797) for
    the soft form.
    """
    if outputs.ndim < 2:
        raise ValueError(f"dice: outputs must be (N, C, ...) scores, got shape {tuple(outputs.shape)}")
    if not outputs.is_floating_point():
        raise TypeError(f"dice: outputs must be floating point, got {outputs.dtype}")
    expected = (outputs.shape[0], *outputs.shape[2:])
    if tuple(targets.shape) != expected:
        raise ValueError(
            f"dice: targets must be class indices of shape {expected}, got {tuple(targets.shape)}"
        )
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise TypeError(f"dice: targets must be integer class indices, got {targets.dtype}")
    if smooth < 0:
        raise ValueError(f"dice: smooth must be >= 0, got {smooth}")
    probs = outputs.softmax(dim=1) if from_logits else outputs
    onehot = F.one_hot(targets.long(), outputs.shape[1]).movedim(-1, 1).to(outputs.dtype)
    dims = [0, *range(2, outputs.ndim)]
    numerator = 2.0 * (probs * onehot).sum(dims) + smooth
    denominator = probs.sum(dims) + onehot.sum(dims) + smooth
    # A class empty in both prediction and target (only possible with smooth = 0) is perfect.
    empty = denominator == 0
    score = torch.where(empty, torch.ones_like(numerator), numerator / torch.where(empty, 1.0, denominator))
    return 1.0 - score.mean()


@LOSSES.register("dice")
class DiceLoss(nn.Module):
    """Soft Sørensen-Dice loss over classes; see ``dice_loss``."""

    def __init__(self, smooth: float = 1.0, from_logits: bool = True):
        super().__init__()
        if smooth < 0:
            raise ValueError(f"dice: smooth must be >= 0, got {smooth}")
        self.smooth, self.from_logits = float(smooth), bool(from_logits)

    def forward(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return dice_loss(outputs, targets, self.smooth, self.from_logits)


def spherical_z_loss(
    outputs: torch.Tensor, targets: torch.Tensor, a: float = 1.0, b: float = 1.0, eps: float = 1e-12
) -> torch.Tensor:
    """The Z-loss of de Brébisson & Vincent, arXiv 1604.08859, averaged over the batch.

    Per example, the logits o are z-normalised over the C classes,
    z = (o - mean(o)) / sigma with sigma^2 = mean((o - mean(o))^2) (the
    population variance, the paper's (1/C) sum o^2 - mean^2), and
    L = softplus(a (b - z_y)) / a = (1/a) log(1 + exp(a (b - z_y))).
    ``eps`` is added to sigma^2 so that equal logits give z = 0 rather than 0/0;
    the loss is invariant to adding a constant to the logits and, up to that
    eps, to multiplying them by a positive constant. It belongs to the
    spherical family (a function of sum o, sum o^2 and o_y).
    """
    check_classification(outputs, targets, "spherical_z_loss")
    if outputs.shape[1] < 2:
        raise ValueError(f"spherical_z_loss: needs at least 2 classes, got C={outputs.shape[1]}")
    centered = outputs - outputs.mean(dim=1, keepdim=True)
    sigma = (centered.square().mean(dim=1) + eps).sqrt()
    z_target = centered.gather(1, targets.long().unsqueeze(1)).squeeze(1) / sigma
    return (F.softplus(a * (b - z_target)) / a).mean()


@LOSSES.register("spherical_z_loss")
class SphericalZLoss(nn.Module):
    """The shift- and scale-invariant Z-loss (de Brébisson & Vincent, arXiv 1604.08859).

    ``a`` (> 0) sets how sharply the softplus bends, ``b`` where: examples whose
    z-normalised target logit z_y is well above b cost ~0. The z-scores of C
    classes lie within sqrt(C - 1) of 0, so b should stay below that. The paper
    tunes a and b per task by hyperparameter search; the defaults here (a = 1,
    b = 1) are a neutral starting point, not values taken from the paper.
    Not the log-partition penalty (PaLM's "z-loss", ``log_partition_penalty``).
    """

    def __init__(self, a: float = 1.0, b: float = 1.0, eps: float = 1e-12):
        super().__init__()
        if not a > 0:
            raise ValueError(f"spherical_z_loss: a must be > 0, got {a}")
        if not math.isfinite(b):
            raise ValueError(f"spherical_z_loss: b must be finite, got {b}")
        if not eps >= 0:
            raise ValueError(f"spherical_z_loss: eps must be >= 0, got {eps}")
        self.a, self.b, self.eps = float(a), float(b), float(eps)

    def forward(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return spherical_z_loss(outputs, targets, self.a, self.b, self.eps)
