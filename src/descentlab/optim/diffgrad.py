"""diffGrad: Adam whose momentum is damped where the gradient changes slowly.

Dubey et al., "diffGrad: An Optimization Method for Convolutional Neural
Networks", IEEE TNNLS 2019, arXiv 1909.11015:

    xi = sigmoid(|g_{t-1} - g_t|)          (in [0.5, 1); g_0 = 0)
    theta <- theta - lr * xi * m_hat / (sqrt(v_hat) + eps)

eps is added to sqrt(v_hat), as in the paper (the official code and
torch-optimizer add it to sqrt(v), i.e. eps / sqrt(1 - beta2^t)).
``weight_decay`` is the coupled L2 term of the official code (g += wd * theta,
before the moments and the friction coefficient).
State per parameter: ``step``, ``exp_avg``, ``exp_avg_sq``, ``previous_grad``.
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


@OPTIMIZERS.register("diffgrad")
class DiffGrad(MultiTensorOptimizer):
    """diffGrad (arXiv 1909.11015)."""

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
        for key in ("exp_avg", "exp_avg_sq", "previous_grad"):
            state[key] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def _update_reference(self, group, params, grads, steps) -> None:
        lr, wd, eps = as_float(group["lr"]), group["weight_decay"], group["eps"]
        beta1, beta2 = group["betas"]
        for p, g, t in zip(params, grads, steps):
            state = self.state[p]
            m, v, previous = state["exp_avg"], state["exp_avg_sq"], state["previous_grad"]
            if wd != 0:
                g = g.add(p, alpha=wd)
            m.lerp_(g, 1 - beta1)
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            friction = previous.sub_(g).abs_().sigmoid_()
            # m_hat / (sqrt(v_hat) + eps) = sqrt(bc2) / bc1 * m / (sqrt(v) + eps sqrt(bc2))
            bc2_sqrt = math.sqrt(1 - beta2**t)
            denom = v.sqrt().add_(eps * bc2_sqrt)
            p.addcdiv_(friction.mul_(m), denom, value=-lr * bc2_sqrt / (1 - beta1**t))
            previous.copy_(g)

    def _update_foreach(self, group, params, grads, step) -> None:
        lr, wd = as_float(group["lr"]), group["weight_decay"]
        beta1, beta2 = group["betas"]
        exp_avgs = [self.state[p]["exp_avg"] for p in params]
        exp_avg_sqs = [self.state[p]["exp_avg_sq"] for p in params]
        previous = [self.state[p]["previous_grad"] for p in params]
        # chunks that fit the one work buffer (see _base.work_chunks): u and g + wd p
        tensors = (params, grads, exp_avgs, exp_avg_sqs, previous)
        for chunk in work_chunks(self, tensors, 2 if wd != 0 else 1):
            p, g, m, v, prev = chunk.pieces
            if wd != 0:
                g = foreach_into("add", chunk.outs(1), g, p, alpha=wd)
            # u = m_hat / (sqrt(v_hat) + eps), moments updated (fused Adam kernel)
            direction = adam_direction_into(self, chunk.buffers[0], g, m, v, step, beta1, beta2, group["eps"])
            torch._foreach_sub_(prev, g)
            torch._foreach_abs_(prev)
            torch._foreach_sigmoid_(prev)  # prev now holds the friction xi
            torch._foreach_addcmul_(p, prev, direction, value=-lr)
            torch._foreach_copy_(prev, g)
