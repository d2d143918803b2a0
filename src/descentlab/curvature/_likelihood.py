"""Which likelihood a loss is the mean negative log-likelihood of, for the true Fisher.

The Fisher of the likelihood p(y | f(x)) whose mean negative log-likelihood is
the loss (up to a constant) equals the GGN of that loss for the two
exponential-family pairs recognised here, which fixes the scaling:

* cross-entropy on (N, C) logits: categorical p = softmax(f), output Fisher diag(p) - p p^T;
* mean squared error, mean(||f - y||^2) / C over C output numbers per example:
  Gaussian N(f, s Id) with s = C / 2, output Fisher Id / s = 2 Id / C (the GGN of MSE).

Anything else (label smoothing, class weights, sum reduction, Hui-Belkin k != 1,
penalties, user losses) is refused: pass ``likelihood=`` explicitly.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from .. import losses

LIKELIHOODS = ("categorical", "gaussian")


def _is_cross_entropy(loss_fn) -> bool:
    if isinstance(loss_fn, losses.CrossEntropy) or loss_fn in (F.cross_entropy, losses.cross_entropy):
        return True
    return (type(loss_fn) is nn.CrossEntropyLoss and loss_fn.reduction == "mean" and loss_fn.weight is None
            and loss_fn.label_smoothing == 0.0)


def _is_mean_squared_error(loss_fn) -> bool:
    if isinstance(loss_fn, losses.MSE):
        return loss_fn.k == 1.0  # k != 1 weights the label's term: not one Gaussian for every label
    if loss_fn in (F.mse_loss, losses.mse):
        return True
    return type(loss_fn) is nn.MSELoss and loss_fn.reduction == "mean"


def infer_likelihood(loss_fn) -> str:
    """'categorical' for mean cross-entropy, 'gaussian' for mean squared error; ValueError otherwise."""
    if _is_cross_entropy(loss_fn):
        return "categorical"
    if _is_mean_squared_error(loss_fn):
        return "gaussian"
    raise ValueError(
        f"cannot tell which likelihood {loss_fn!r} is the negative log-likelihood of (recognised: mean "
        "cross-entropy -> 'categorical', mean squared error -> 'gaussian'); pass likelihood='categorical' "
        "or likelihood='gaussian' with a variance"
    )


def gaussian_variance(loss_fn, variance: float | None) -> float | None:
    """The Gaussian variance: as given, or None for 'C / 2' (matched to a mean-squared-error loss)."""
    if variance is not None:
        if not variance > 0:
            raise ValueError(f"variance must be positive, got {variance!r}")
        return float(variance)
    if not _is_mean_squared_error(loss_fn):
        raise ValueError(f"likelihood='gaussian' with loss {loss_fn!r} needs a variance: only for mean "
                         "squared error is it implied (C / 2 for C outputs per example)")
    return None
