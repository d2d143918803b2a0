"""The uncertainty-based gradient-matching merge of Daheim, Möllenhoff, Ponti,
Gurevych & Khan, "Model Merging by Uncertainty-Based Gradient Matching"
(ICLR 2024): task arithmetic preconditioned by diagonal Hessians,

    theta = theta_0 + sum_t alpha_t * (H_0 + H_t) / (H_0 + sum_s alpha_s H_s) * tau_t,

elementwise, with tau_t = theta_t - theta_0, H_t the diagonal Hessian (a
Fisher) of task t's loss at theta_t, and H_0 the precision of the pretrained
model (a scalar, the prior precision delta of the fine-tuning's quadratic
regulariser, or a diagonal). The Hessians must be on one scale: the paper's
H_t is the sum over task t's examples (``diagonal_fisher(..., reduction="sum")``).
H_t = 0 gives task arithmetic with weights alpha_t; H_0 -> 0 with equal alpha
gives Fisher-weighted averaging (both are tests).

Every floating tensor needs a Hessian in every ``hessians`` entry, except the
names in ``carry``, which are copied from theta_0 (e.g. BatchNorm running
statistics, to be recomputed after merging). Integer tensors come from theta_0.
One pass: each fine-tuned model and its Hessian are read once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch

from .states import Source, StateDict, is_merged, iter_states, load_state, task_vector

__all__ = ["gradient_matching_merge"]


def gradient_matching_merge(base: Source, finetuned: Iterable[Source], hessians: Iterable[Source],
                            prior_precision: float | Mapping[str, torch.Tensor],
                            alphas: float | Sequence[float] = 1.0, carry: Iterable[str] = ()) -> StateDict:
    theta0 = load_state(base)
    carry = set(carry)
    unknown = sorted(carry - set(theta0))
    if unknown:
        raise ValueError(f"carry names tensors the models do not have: {unknown}")
    names = [k for k, v in theta0.items() if is_merged(v) and k not in carry]
    if isinstance(prior_precision, Mapping):
        missing = [k for k in names if k not in prior_precision]
        if missing:
            raise ValueError(f"prior_precision has no tensor {missing[0]!r}")
        h0 = {k: prior_precision[k].to(torch.float64) for k in names}
    else:
        if not float(prior_precision) >= 0:
            raise ValueError(f"prior_precision must be >= 0, got {prior_precision!r}")
        h0 = {k: float(prior_precision) for k in names}
    numerator = {k: torch.zeros(theta0[k].shape, dtype=torch.float64, device=theta0[k].device) for k in names}
    denominator = {k: torch.zeros_like(numerator[k]) + h0[k] for k in names}
    hessians = iter(hessians)
    t = -1
    for t, state in enumerate(iter_states(finetuned, reference=theta0)):
        try:
            h = load_state(next(hessians))
        except StopIteration:
            raise ValueError(f"fewer Hessians than fine-tuned models (none for model {t})") from None
        alpha = float(alphas) if not isinstance(alphas, Sequence) else float(alphas[t]) if t < len(alphas) else None
        if alpha is None:
            raise ValueError(f"{len(alphas)} alphas for more than {len(alphas)} fine-tuned models")
        tau = task_vector(state, theta0)
        del state
        for k in names:
            if k not in h:
                raise ValueError(f"the Hessian of model {t} has no tensor {k!r} (name it in carry= to take it "
                                 "from the pretrained model)")
            if tuple(h[k].shape) != tuple(theta0[k].shape):
                raise ValueError(f"the Hessian of model {t}: tensor {k!r} has shape {tuple(h[k].shape)}, the "
                                 f"model's has shape {tuple(theta0[k].shape)}")
            hk = h[k].to(torch.float64)
            numerator[k].add_(alpha * (h0[k] + hk) * tau[k].to(torch.float64))
            denominator[k].add_(alpha * hk)
    if t < 0:
        raise ValueError("no fine-tuned models were given to merge")
    if next(hessians, None) is not None:
        raise ValueError(f"more Hessians than the {t + 1} fine-tuned models")
    if isinstance(alphas, Sequence) and len(alphas) != t + 1:
        raise ValueError(f"{len(alphas)} alphas for {t + 1} fine-tuned models")
    out: StateDict = {}
    for k, v in theta0.items():
        if k in numerator:
            if bool((denominator[k] <= 0).any()):
                raise ValueError(f"tensor {k!r}: H_0 + sum alpha_t H_t is not positive everywhere; use a positive "
                                 "prior_precision")
            out[k] = (v.to(torch.float64) + numerator[k] / denominator[k]).to(v.dtype)
        else:
            out[k] = v.clone()
    return out
