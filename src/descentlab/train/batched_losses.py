"""Every run's loss in one call, for the losses the studies train sweeps with.

``ModelStack`` holds the outputs of R runs as (R, B, ..., K). Vmapping a loss
module over them works for any loss but costs Python time per call; for
softmax cross-entropy (``CrossEntropy``) and the log-partition penalty over it
(``LogPartitionPenalty``, the z-loss), per example or per token
(``PerTokenLoss``), the R losses are written here over all R*B(*T) rows at
once. The loss module itself first checks one run's shapes, so bad input
raises the error it raises alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..losses import CrossEntropy
from ..losses.penalties import LogPartitionPenalty
from ..losses.sequence import PerTokenLoss

__all__ = ["stacked_losses"]


def stacked_losses(loss: torch.nn.Module, outs: torch.Tensor, y: torch.Tensor, batched_y: bool) -> torch.Tensor | None:
    """Each run's loss (R,) of ``outs`` (R, B, ..., K) against ``y`` ((R, B, ...) when
    ``batched_y``, else (B, ...) for every run); None when ``loss`` has no form here."""
    per_token = type(loss) is PerTokenLoss
    base = loss.base if per_token else loss
    if y.is_floating_point() or outs.dim() != (4 if per_token else 3):
        return None
    coefficient = 0.0
    if type(base) is LogPartitionPenalty:
        base, coefficient = base.base, base.coefficient
    if type(base) is not CrossEntropy:
        return None
    loss(outs[0, :1], (y[0] if batched_y else y)[:1])  # the module's own checks, on one run's shapes
    R, K = outs.shape[0], outs.shape[-1]
    logits = outs.reshape(-1, K)
    targets = (y if batched_y else y.unsqueeze(0).expand(R, *y.shape)).reshape(-1).long()
    losses = F.cross_entropy(logits, targets, reduction="none").view(R, -1).mean(1)
    if coefficient:
        losses = losses + coefficient * (torch.logsumexp(logits, dim=-1) ** 2).view(R, -1).mean(1)
    return losses
