"""Grams: Gradient Descent with Adaptive Momentum Scaling.

Cao, Li, Song, "Grams: Gradient Descent with Adaptive Momentum Scaling", 2024,
arXiv 2412.17107, Algorithm 1. The direction is the sign of the current
gradient; the magnitude is that of the Adam update:

    m, v = EMAs of g, g^2;  u = m_hat / (sqrt(v_hat) + eps)
    theta <- theta - lr * (sign(g) * |u| + weight_decay * theta)

eps is added to sqrt(v_hat) (torch's Adam convention; the official
``grams-pytorch`` adds it to sqrt(v), i.e. eps / sqrt(1 - beta2^t)).
State per parameter: ``step``, ``exp_avg``, ``exp_avg_sq``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from . import OPTIMIZERS
from ._base import (
    MultiTensorOptimizer, adam_direction_into, as_float, check_betas, check_lr, check_non_negative,
    foreach_into, work_chunks,
)


@OPTIMIZERS.register("grams")
class Grams(MultiTensorOptimizer):
    """Grams (arXiv 2412.17107) with decoupled weight decay."""

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
    ):
        check_lr(lr)
        check_betas(betas)
        check_non_negative("eps", eps)
        check_non_negative("weight_decay", weight_decay)
        defaults = dict(
            lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
            maximize=maximize, foreach=foreach,
        )
        super().__init__(params, defaults)

    def _init_state(self, p: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def _update_reference(self, group, params, grads, steps) -> None:
        lr, wd, eps = as_float(group["lr"]), group["weight_decay"], group["eps"]
        beta1, beta2 = group["betas"]
        for p, g, t in zip(params, grads, steps):
            state = self.state[p]
            m, v = state["exp_avg"], state["exp_avg_sq"]
            m.lerp_(g, 1 - beta1)
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            # m_hat / (sqrt(v_hat) + eps) = sqrt(bc2) / bc1 * m / (sqrt(v) + eps sqrt(bc2))
            bc2_sqrt = math.sqrt(1 - beta2**t)
            denom = v.sqrt().add_(eps * bc2_sqrt)
            # |m / denom| == |m| / denom since denom > 0.
            signed_magnitude = m.abs().mul_(g.sign())
            if wd != 0:
                p.mul_(1 - lr * wd)
            p.addcdiv_(signed_magnitude, denom, value=-lr * bc2_sqrt / (1 - beta1**t))

    def _update_foreach(self, group, params, grads, step) -> None:
        lr, wd = as_float(group["lr"]), group["weight_decay"]
        beta1, beta2 = group["betas"]
        exp_avgs = [self.state[p]["exp_avg"] for p in params]
        exp_avg_sqs = [self.state[p]["exp_avg_sq"] for p in params]
        # chunks that fit the one work buffer (see _base.work_chunks): u and sign(g)
        for chunk in work_chunks(self, (params, grads, exp_avgs, exp_avg_sqs), 2):
            p, g, m, v = chunk.pieces
            # u = m_hat / (sqrt(v_hat) + eps), moments updated (fused Adam kernel)
            magnitude = adam_direction_into(self, chunk.buffers[0], g, m, v, step, beta1, beta2, group["eps"])
            torch._foreach_abs_(magnitude)
            signs = foreach_into("sign", chunk.outs(1), g)
            if wd != 0:
                torch._foreach_mul_(p, 1 - lr * wd)
            torch._foreach_addcmul_(p, magnitude, signs, value=-lr)
