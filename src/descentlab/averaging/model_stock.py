"""Model Stock (Jang, Yun & Han, ECCV 2024): per layer, move from the pretrained
anchor theta_0 towards the average of k fine-tuned models by

    t = k cos / (1 + (k - 1) cos),    theta = t * mean_i(theta_i) + (1 - t) * theta_0,

where cos is the cosine of the angle between the layers' task vectors
tau_i = theta_i - theta_0. The paper assumes one angle for every pair; with
k > 2 models we use the mean pairwise cosine (as mergekit does), computed in
one streaming pass from the unit task vectors u_i = tau_i / ||tau_i||:
||sum_i u_i||^2 = k + 2 sum_{i<j} cos_ij. A "layer" is one tensor of the
state dict (a weight and its bias get their own ratios). Floating buffers
(BatchNorm statistics) follow the same rule; integer tensors come from theta_0.

A tensor that no model changed stays at theta_0; one that some models changed
and others did not has no angle and raises, as does 1 + (k - 1) cos = 0.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from .states import Source, StateDict, is_merged, iter_states, load_state, task_vector

__all__ = ["model_stock", "stock_ratio"]


def stock_ratio(cos: float, k: int) -> float:
    """t = k cos / (1 + (k - 1) cos), the weight of the fine-tuned average."""
    if k < 2:
        raise ValueError(f"Model Stock needs k >= 2 fine-tuned models, got {k}")
    denom = 1.0 + (k - 1) * cos
    if denom == 0.0:
        raise ValueError(f"Model Stock's ratio is undefined at cos = -1/(k - 1) = {cos!r} (k = {k})")
    return k * cos / denom


def model_stock(base: Source, finetuned: Iterable[Source], return_ratios: bool = False, carry: Iterable[str] = ()):
    """theta_0 moved per tensor towards the fine-tuned average; with ``return_ratios`` also {name: (cos, t)}.

    ``carry``: floating tensors taken from theta_0 unchanged (e.g. BatchNorm statistics: a negative
    cosine gives t < 0, which could make a running variance negative)."""
    theta0 = load_state(base)
    carry = set(carry)
    unknown = sorted(carry - set(theta0))
    if unknown:
        raise ValueError(f"carry names tensors the models do not have: {unknown}")
    unit_sum: dict[str, torch.Tensor] = {}
    theta_sum: dict[str, torch.Tensor] = {}
    zero_count: dict[str, int] = {}
    k = 0
    for state in iter_states(finetuned, reference=theta0):
        tau = {k: v for k, v in task_vector(state, theta0).items() if k not in carry}
        for name, t in tau.items():
            t64 = t.to(torch.float64)
            norm = float(t64.norm())
            unit = t64 / norm if norm > 0 else torch.zeros_like(t64)
            zero_count[name] = zero_count.get(name, 0) + (norm == 0)
            if name in unit_sum:
                unit_sum[name].add_(unit)
                theta_sum[name].add_(state[name].to(torch.float64))
            else:
                unit_sum[name], theta_sum[name] = unit, state[name].to(torch.float64).clone()
        k += 1
        del state, tau
    if k < 2:
        raise ValueError(f"Model Stock needs k >= 2 fine-tuned models, got {k}")
    out: StateDict = {}
    ratios: dict[str, tuple[float, float]] = {}
    for name, v in theta0.items():
        if not is_merged(v) or name in carry:
            out[name] = v.clone()
            continue
        zeros = zero_count[name]
        if zeros == k:
            out[name] = v.clone()
            ratios[name] = (float("nan"), 0.0)
            continue
        if zeros:
            raise ValueError(f"Model Stock: tensor {name!r} is unchanged in {zeros} of the {k} fine-tuned models, "
                             "so the angle between their task vectors is undefined")
        cos = (float(unit_sum[name].pow(2).sum()) - k) / (k * (k - 1))
        try:
            t = stock_ratio(cos, k)
        except ValueError as err:
            raise ValueError(f"Model Stock: tensor {name!r}: {err}") from None
        mean = theta_sum[name] / k
        out[name] = (t * mean + (1.0 - t) * v.to(torch.float64)).to(v.dtype)
        ratios[name] = (cos, t)
    return (out, ratios) if return_ratios else out
