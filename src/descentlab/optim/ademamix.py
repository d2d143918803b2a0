"""AdEMAMix: Adam with a mixture of a fast and a slow gradient EMA.

Pagliardini, Ablin, Grangier, "The AdEMAMix Optimizer: Better, Faster,
Older", 2024, arXiv 2409.03137, Algorithm 1; official code apple/ml-ademamix:

    m1 = EMA_beta1(g)  (bias-corrected)     m2 = EMA_beta3(g)  (NOT bias-corrected)
    v = EMA_beta2(g^2)
    theta <- theta - lr * [(m1 / bc1 + alpha * m2) / (sqrt(v / bc2) + eps) + wd * theta]

Warmups (both optional, counted in steps of each parameter):
- ``alpha_warmup``: alpha_t = alpha * t / T_alpha for t < T_alpha;
- ``beta3_warmup``: beta3 is interpolated linearly in half-life
  f(beta) = ln(0.5) / ln(beta + 1e-8) - 1 from beta1 to beta3, and
  beta3_t = f^-1(...) = 0.5 ** (1 / (f + 1)) (the 1e-8 is the official code's).
State per parameter: ``step``, ``exp_avg_fast``, ``exp_avg_slow``, ``exp_avg_sq``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from . import OPTIMIZERS
from ._base import (
    MultiTensorOptimizer, adamw_update, as_float, check_betas, check_lr, check_non_negative, foreach_into,
    work_chunks,
)


def alpha_at(step: int, alpha: float, warmup: int | None) -> float:
    """Linear warmup of alpha from 0 (official ``linear_warmup_scheduler``)."""
    if warmup is not None and step < warmup:
        return alpha * (step / float(warmup))
    return alpha


def _half_life(beta: float) -> float:
    return math.log(0.5) / math.log(beta + 1e-8) - 1.0


def beta3_at(step: int, beta_start: float, beta_end: float, warmup: int | None) -> float:
    """Warmup of beta3, linear in half-life (official ``linear_hl_warmup_scheduler``)."""
    if warmup is not None and step < warmup:
        a = step / float(warmup)
        half_life = (1.0 - a) * _half_life(beta_start) + a * _half_life(beta_end)
        return math.pow(0.5, 1.0 / (half_life + 1.0))
    return beta_end


def _check_warmup(name: str, value: int | None) -> None:
    if value is not None and not (isinstance(value, int) and value > 0):
        raise ValueError(f"invalid {name}: {value!r} (must be None or a positive int)")


@OPTIMIZERS.register("ademamix")
class AdEMAMix(MultiTensorOptimizer):
    """AdEMAMix (arXiv 2409.03137); defaults are the official code's."""

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float, float] = (0.9, 0.999, 0.9999),
        alpha: float = 2.0,
        beta3_warmup: int | None = None,
        alpha_warmup: int | None = None,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
    ):
        check_lr(lr)
        check_betas(betas, count=3)
        check_non_negative("alpha", alpha)
        check_non_negative("eps", eps)
        check_non_negative("weight_decay", weight_decay)
        _check_warmup("beta3_warmup", beta3_warmup)
        _check_warmup("alpha_warmup", alpha_warmup)
        defaults = dict(
            lr=lr, betas=tuple(betas), alpha=alpha, beta3_warmup=beta3_warmup,
            alpha_warmup=alpha_warmup, eps=eps, weight_decay=weight_decay,
            maximize=maximize, foreach=foreach,
        )
        super().__init__(params, defaults)

    def _init_state(self, p: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        for key in ("exp_avg_fast", "exp_avg_slow", "exp_avg_sq"):
            state[key] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def _coefficients(self, group: dict[str, Any], step: int) -> tuple[float, float]:
        beta1, _, beta3 = group["betas"]
        return (
            alpha_at(step, group["alpha"], group["alpha_warmup"]),
            beta3_at(step, beta1, beta3, group["beta3_warmup"]),
        )

    def _update_reference(self, group, params, grads, steps) -> None:
        lr, wd, eps = as_float(group["lr"]), group["weight_decay"], group["eps"]
        beta1, beta2, _ = group["betas"]
        for p, g, t in zip(params, grads, steps):
            state = self.state[p]
            fast, slow, v = state["exp_avg_fast"], state["exp_avg_slow"], state["exp_avg_sq"]
            alpha, beta3 = self._coefficients(group, t)
            fast.lerp_(g, 1 - beta1)
            slow.lerp_(g, 1 - beta3)
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            # x / (sqrt(v / bc2) + eps) = sqrt(bc2) * x / (sqrt(v) + eps sqrt(bc2))
            bc2_sqrt = math.sqrt(1 - beta2**t)
            denom = v.sqrt().add_(eps * bc2_sqrt)
            numerator = (fast / (1 - beta1**t)).add_(slow, alpha=alpha)
            if wd != 0:
                p.mul_(1 - lr * wd)
            p.addcdiv_(numerator, denom, value=-lr * bc2_sqrt)

    def _update_foreach(self, group, params, grads, step) -> None:
        lr, wd = as_float(group["lr"]), group["weight_decay"]
        beta1, beta2, _ = group["betas"]
        alpha, beta3 = self._coefficients(group, step)
        fast = [self.state[p]["exp_avg_fast"] for p in params]
        slow = [self.state[p]["exp_avg_slow"] for p in params]
        exp_avg_sqs = [self.state[p]["exp_avg_sq"] for p in params]
        if beta1 == 0:
            self._update_chain(group, params, grads, fast, slow, exp_avg_sqs, step)
            return
        # The fused Adam kernel divides lerp(C, g, 1 - beta1) / bc1 by sqrt(v_hat) + eps
        # for its first moment C. With C = fast + (alpha bc1 / beta1) slow that
        # numerator is (fast_new + alpha bc1 slow) / bc1 = fast_hat + alpha slow:
        # AdEMAMix's whole direction in one pass (equal to rounding).
        bc1 = 1 - beta1**step
        # chunks that fit the one work buffer (see _base.work_chunks): C (and u
        # where the fused AdamW kernel cannot run on the parameters)
        for chunk in work_chunks(self, (params, grads, fast, slow, exp_avg_sqs), 2):
            p, g, f, s, v = chunk.pieces
            torch._foreach_lerp_(s, g, 1 - beta3)
            combined = foreach_into("add", chunk.outs(1), f, s, alpha=alpha * bc1 / beta1)
            torch._foreach_lerp_(f, g, 1 - beta1)
            adamw_update(self, chunk, p, g, combined, v, step, lr, beta1, beta2, group["eps"], wd)

    def _update_chain(self, group, params, grads, fast, slow, exp_avg_sqs, step) -> None:
        """The update as a plain chain of foreach ops (beta1 = 0)."""
        lr, wd, eps = as_float(group["lr"]), group["weight_decay"], group["eps"]
        beta1, beta2, _ = group["betas"]
        alpha, beta3 = self._coefficients(group, step)
        torch._foreach_lerp_(fast, grads, 1 - beta1)
        torch._foreach_lerp_(slow, grads, 1 - beta3)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
        bc2_sqrt = math.sqrt(1 - beta2**step)
        denom = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_add_(denom, eps * bc2_sqrt)
        numerator = torch._foreach_div(fast, 1 - beta1**step)
        torch._foreach_add_(numerator, slow, alpha=alpha)
        if wd != 0:
            torch._foreach_mul_(params, 1 - lr * wd)
        torch._foreach_addcdiv_(params, numerator, denom, value=-lr * bc2_sqrt)
