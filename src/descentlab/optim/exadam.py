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

import functools
import math
from typing import Any

import torch
from torch import Tensor
from torch._C._nn import flatten_dense_tensors, unflatten_dense_tensors

from . import OPTIMIZERS
from ._base import (
    MultiTensorOptimizer, as_float, blocks, check_betas, check_lr, check_non_negative, split_blockable,
)


def exadam_step_size(lr: float, step: int, log_step_size: bool) -> float:
    """alpha_t: lr (arXiv v2) or lr * ln(sqrt(2 (t + 1))) (arXiv v1)."""
    return lr * math.log(math.sqrt(2.0) * math.sqrt(step + 1)) if log_step_size else lr


def exadam_direction(
    m: Tensor, v: Tensor, g: Tensor, step: int, betas: tuple[float, float], eps: float,
    numerator: Tensor | None = None, ratio: Tensor | None = None, denom: Tensor | None = None,
) -> tuple[Tensor, Tensor, float, float]:
    """(a, b, ka, kb) with (m + g) d1 = ka a and sqrt(d2 v) = kb b elementwise.

    a and b go into the given buffers (fresh tensors where None). Rewritten
    for fewer passes over memory (11 instead of 15 with the moments; equal to
    the reference path to rounding, no cancellation: each subtracted term is
    below half of what it is subtracted from):
        (m + g) d1 = (1 + beta2^t) [n - c2 n / (v + eps)],   n = m + g
        d2 v       = (1 + beta1^t) [v - c1 v / (m^2 + eps)]
    with c_i = beta_i^t eps / (1 + beta_i^t).
    """
    beta1, beta2 = betas
    # d = 1 + beta^t * r with r in [0, 1) rounds to exactly 1 once beta^t is below
    # half an ulp of 1: skipping it then changes nothing (d2 after ~160 steps in
    # float32 with beta1 = 0.9)
    half_ulp = torch.finfo(m.dtype).eps / 2
    numerator = torch.add(m, g, out=numerator)
    numerator_scale = denom_scale = 1.0
    if beta2**step >= half_ulp:
        numerator_scale = 1 + beta2**step
        v_eps = torch.add(v, eps, out=ratio)
        numerator.addcdiv_(numerator, v_eps, value=-(beta2**step) * eps / numerator_scale)
    if beta1**step >= half_ulp:
        m_sq_eps = torch.addcmul(scalar_tensor(eps, m.dtype, m.device), m, m, out=ratio)
        denom = torch.addcdiv(v, v, m_sq_eps, value=-(beta1**step) * eps / (1 + beta1**step), out=denom)
        return numerator, denom.sqrt_(), numerator_scale, math.sqrt(1 + beta1**step)
    return numerator, torch.sqrt(v, out=denom), numerator_scale, denom_scale


@functools.lru_cache(maxsize=32)
def scalar_tensor(value: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    """A 0-dim tensor of ``value``, made once (making one costs more than a
    block's kernel; never modified)."""
    return torch.tensor(value, dtype=dtype, device=device)


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

    def _update_foreach(self, group, params, grads, step) -> None:
        exp_avgs = [self.state[p]["exp_avg"] for p in params]
        exp_avg_sqs = [self.state[p]["exp_avg_sq"] for p in params]
        tensors = (params, grads, exp_avgs, exp_avg_sqs)
        blocked, rest = split_blockable(self, tensors)
        for i in blocked:
            self._step_blocks(group, tuple(ts[i] for ts in tensors), step)
        flattened: dict[tuple[torch.device, torch.dtype], list[int]] = {}
        for i in rest:
            flattened.setdefault((params[i].device, params[i].dtype), []).append(i)
        for idx in flattened.values():
            self._step_flattened(group, *([ts[i] for i in idx] for ts in tensors), step)

    def _step_blocks(self, group, quad, step) -> None:
        """A large contiguous CPU tensor a block at a time (see _base.blocks): the
        temporaries need only block-sized slots of the optimizer's one work
        buffer, and the update's passes hit cache instead of main memory."""
        lr, wd, eps = as_float(group["lr"]), group["weight_decay"], group["eps"]
        beta1, beta2 = group["betas"]
        scalars = None
        for (p, g, m, v), (numerator, ratio) in blocks(self, quad, ("numerator", "ratio")):
            if wd != 0:
                p.mul_(1 - lr * wd)
            m.lerp_(g, 1 - beta1)
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            # the denominator overwrites the ratio it is computed from (elementwise)
            numerator, denom, *scales = exadam_direction(m, v, g, step, group["betas"], eps, numerator, ratio, ratio)
            scalars = scalars or self._scalars(group, step, *scales)  # alike for every block
            p.addcdiv_(numerator, denom.add_(scalars[0]), value=scalars[1])

    def _step_flattened(self, group, params, grads, exp_avgs, exp_avg_sqs, step) -> None:
        """Tensors of one device and dtype: moments per tensor (foreach), the
        direction's long chain once on their concatenation (see split_small).
        Small CPU tensors come here, and everything on accelerators (one kernel
        per op for all tensors; the price is a copy of m, v and g per step)."""
        lr, wd, eps = as_float(group["lr"]), group["weight_decay"], group["eps"]
        beta1, beta2 = group["betas"]
        if wd != 0:
            torch._foreach_mul_(params, 1 - lr * wd)
        torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
        flat = [flatten_dense_tensors(ts) for ts in (exp_avgs, exp_avg_sqs, grads)]
        numerator, denom, *scales = exadam_direction(*flat, step, group["betas"], eps)
        shift, coefficient = self._scalars(group, step, *scales)
        denom.add_(shift)
        torch._foreach_addcdiv_(params, unflatten_dense_tensors(numerator, params),
                                unflatten_dense_tensors(denom, params), value=coefficient)

    @staticmethod
    def _scalars(group, step, numerator_scale: float, denom_scale: float) -> tuple[float, float]:
        """(shift, coefficient) of the step p += coefficient * a / (b + shift), given
        (m + g) d1 = ka a and sqrt(d2 v) = kb b (``exadam_direction``):
        alpha_t / bc1 (m + g) d1 / (sqrt(d2 v / bc2) + eps)
          = alpha_t sqrt(bc2) / bc1 * ka / kb * a / (b + eps sqrt(bc2) / kb)."""
        beta1, beta2 = group["betas"]
        bc2_sqrt = math.sqrt(1 - beta2**step)
        alpha = exadam_step_size(as_float(group["lr"]), step, group["log_step_size"])
        coefficient = -alpha * bc2_sqrt / (1 - beta1**step) * numerator_scale / denom_scale
        return group["eps"] * bc2_sqrt / denom_scale, coefficient
