"""EXAdam: Adam with adaptive cross-moment debiasing and a gradient term.

Adly, "EXAdam: The Power of Adaptive Cross-Moments", 2024, arXiv 2412.20302;
official code AhmedMostafa16/EXAdam. With beta1^t, beta2^t and
bc_i = 1 - beta_i^t:

    d1 = 1 + beta2^t * v / (v + eps)        d2 = 1 + beta1^t * m^2 / (m^2 + eps)
    m_tilde = d1 * m / bc1                  v_tilde = d2 * v / bc2
    g_tilde = d1 * g / bc1
    theta <- theta - alpha_t * (m_tilde + g_tilde) / (sqrt(v_tilde) + eps)

Step size: arXiv v2 (and pytorch-optimizer) use a constant alpha_t = lr; arXiv
v1 and the first commit of the official code use
alpha_t = lr * ln(sqrt(2) * sqrt(t + 1)); choose it with ``log_step_size=True``.
``weight_decay`` is decoupled (theta <- theta * (1 - lr * wd), applied before
the step), which is what the official code does although its docstring says
"L2 penalty".
State per parameter: ``step``, ``exp_avg`` (m), ``exp_avg_sq`` (v).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torch._C._nn import flatten_dense_tensors, unflatten_dense_tensors

from . import OPTIMIZERS
from ._base import (
    MultiTensorOptimizer, as_float, check_betas, check_lr, check_non_negative, foreach_into, split_small,
)


def exadam_step_size(lr: float, step: int, log_step_size: bool) -> float:
    """alpha_t: lr (arXiv v2) or lr * ln(sqrt(2 (t + 1))) (arXiv v1)."""
    return lr * math.log(math.sqrt(2.0) * math.sqrt(step + 1)) if log_step_size else lr


@OPTIMIZERS.register("exadam")
class EXAdam(MultiTensorOptimizer):
    """EXAdam (arXiv 2412.20302)."""

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        log_step_size: bool = False,
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
            log_step_size=bool(log_step_size), maximize=maximize, foreach=foreach,
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
            if wd != 0:
                p.mul_(1 - lr * wd)
            m.lerp_(g, 1 - beta1)
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            d1 = (v / (v + eps)).mul_(beta2**t).add_(1.0)
            m_sq = m * m
            d2 = (m_sq / (m_sq + eps)).mul_(beta1**t).add_(1.0)
            numerator = (m + g).mul_(d1)
            # sqrt(d2 v / bc2) + eps = (sqrt(d2 v) + eps sqrt(bc2)) / sqrt(bc2)
            bc2_sqrt = math.sqrt(1 - beta2**t)
            denom = (d2 * v).sqrt_().add_(eps * bc2_sqrt)
            alpha = exadam_step_size(lr, t, group["log_step_size"])
            p.addcdiv_(numerator, denom, value=-alpha * bc2_sqrt / (1 - beta1**t))

    @staticmethod
    def _direction(exp_avgs, exp_avg_sqs, grads, numerator_out, ratio_out, denom_out, group, step):
        """(m + g) d1 and sqrt(d2 v) for lists of tensors; results go into the *_out
        buffers where given (ratios x / (x + eps) are divided in place: out
        aliasing an input is exact for elementwise kernels)."""
        eps = group["eps"]
        beta1, beta2 = group["betas"]
        # d = 1 + beta^t * r with r in [0, 1) rounds to exactly 1 once beta^t is
        # below half an ulp of 1: skipping it then changes no bit (d2 after ~160
        # steps in float32 with beta1 = 0.9).
        half_ulp = min(torch.finfo(m.dtype).eps for m in exp_avgs) / 2
        numerator = foreach_into("add", numerator_out, exp_avgs, grads)
        if beta2**step >= half_ulp:
            d1 = foreach_into("add", ratio_out, exp_avg_sqs, eps)
            d1 = foreach_into("div", ratio_out, exp_avg_sqs, d1)
            torch._foreach_mul_(d1, beta2**step)
            torch._foreach_add_(d1, 1.0)
            torch._foreach_mul_(numerator, d1)
        if beta1**step >= half_ulp:
            m_sq = foreach_into("mul", ratio_out, exp_avgs, exp_avgs)
            denom = foreach_into("add", denom_out, m_sq, eps)
            denom = foreach_into("div", denom_out, m_sq, denom)
            torch._foreach_mul_(denom, beta1**step)
            torch._foreach_add_(denom, 1.0)
            torch._foreach_mul_(denom, exp_avg_sqs)
            torch._foreach_sqrt_(denom)
        else:
            denom = foreach_into("sqrt", denom_out, exp_avg_sqs)
        return numerator, denom

    def _update_foreach(self, group, params, grads, step) -> None:
        lr, wd, eps = as_float(group["lr"]), group["weight_decay"], group["eps"]
        beta1, beta2 = group["betas"]
        exp_avgs = [self.state[p]["exp_avg"] for p in params]
        exp_avg_sqs = [self.state[p]["exp_avg_sq"] for p in params]
        if wd != 0:
            torch._foreach_mul_(params, 1 - lr * wd)
        torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
        # Small CPU tensors: the direction on their concatenation (see split_small);
        # large tensors keep their own memory (no copies).
        numerator: list[Tensor | None] = [None] * len(params)
        denom: list[Tensor | None] = [None] * len(params)
        small, large = split_small(params)
        for idx in small:
            flat = [flatten_dense_tensors([ts[i] for i in idx]) for ts in (exp_avgs, exp_avg_sqs, grads)]
            num, den = self._direction(*[[t] for t in flat], None, None, None, group, step)
            like = [exp_avgs[i] for i in idx]
            num_views, den_views = (unflatten_dense_tensors(x[0], like) for x in (num, den))
            for i, n, d in zip(idx, num_views, den_views):
                numerator[i], denom[i] = n, d
        if large:
            sub = [params[i] for i in large]
            num, den = self._direction(
                [exp_avgs[i] for i in large], [exp_avg_sqs[i] for i in large], [grads[i] for i in large],
                self._scratch("numerator", sub), self._scratch("ratio", sub), self._scratch("denom", sub),
                group, step,
            )
            for i, n, d in zip(large, num, den):
                numerator[i], denom[i] = n, d
        # sqrt(d2 v / bc2) + eps = (sqrt(d2 v) + eps sqrt(bc2)) / sqrt(bc2)
        bc2_sqrt = math.sqrt(1 - beta2**step)
        torch._foreach_add_(denom, eps * bc2_sqrt)
        alpha = exadam_step_size(lr, step, group["log_step_size"])
        torch._foreach_addcdiv_(params, numerator, denom, value=-alpha * bc2_sqrt / (1 - beta1**step))
