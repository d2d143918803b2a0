"""AdamP and SGDP: remove the radial component of the update of scale-invariant weights.

Heo et al., "AdamP: Slowing Down the Slowdown for Momentum Optimizers on
Scale-invariant Weights", ICLR 2021, arXiv 2006.08217; official code = PyPI
``adamp``. For a parameter w with more than one dimension, the weight is
deemed scale-invariant when the gradient is nearly orthogonal to it:
max |cos(g, w)| < delta / sqrt(dim) in the channel view (one row per output
channel), else in the layer view (the whole tensor). Then the update p loses
its radial part, p <- p - w_unit <w_unit, p> (per row of the view that
matched), and weight decay is scaled by ``wd_ratio``. One-dimensional
parameters, and updates that are not projected, are plain AdamW / SGD.

AdamP:  p = m / (sqrt(v_hat) + eps)  (nesterov: (beta1 m + (1 - beta1) g) / ...)
        w <- w (1 - lr wd ratio) - lr / bc1 * p
SGDP:   b <- mu b + (1 - dampening) g;  p = b  (nesterov: g + mu b)
        w <- w (1 - lr wd ratio / (1 - mu)) - lr p      (official SGDP decay)
Note that SGDP's buffer starts at 0 (b_1 = (1 - dampening) g, unlike torch's SGD).

The paper (Algorithm 1) projects the update q_t = Pi(p_t) and keeps the buffer
p_t. The official SGDP without Nesterov projects in place, so its momentum
buffer is projected as well; ``project_buffer=True`` reproduces that (default
False: the paper).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from . import OPTIMIZERS
from ._base import (
    MultiTensorOptimizer, as_float, check_beta, check_betas, check_lr, check_non_negative,
)


def project_radial(
    weight: Tensor, grad: Tensor, update: Tensor, delta: float, wd_ratio: float, eps: float
) -> tuple[Tensor, float]:
    """(update without its radial part, wd_ratio) for scale-invariant weights, else (update, 1).

    Row dot products and norms are computed once (fused ``vecdot`` /
    ``vector_norm``); the layer view's are sums of the channel view's. Norms are
    clamped below by eps in the cosine and eps is added to the norm of w, as in
    the official code.
    """
    w = weight.reshape(weight.shape[0], -1)
    g = grad.reshape(grad.shape[0], -1)
    dots = torch.linalg.vecdot(w, g, dim=1)
    w_norms = torch.linalg.vector_norm(w, dim=1)
    g_norms = torch.linalg.vector_norm(g, dim=1)
    channel_cos = dots.abs() / (w_norms.clamp_min(eps) * g_norms.clamp_min(eps))
    if channel_cos.max() < delta / math.sqrt(w.shape[1]):
        w_unit = w / w_norms.add(eps).unsqueeze(1)
    else:
        w_norm = w_norms.square().sum().sqrt()
        layer_cos = dots.sum().abs() / (w_norm.clamp_min(eps) * g_norms.square().sum().sqrt().clamp_min(eps))
        if not layer_cos < delta / math.sqrt(w.numel()):
            return update, 1.0
        w_unit = (w / w_norm.add(eps)).reshape(1, -1)
    u = update.reshape(w_unit.shape)
    radial = torch.linalg.vecdot(w_unit, u, dim=1).unsqueeze(1)
    return torch.addcmul(u, w_unit, radial, value=-1.0).reshape(update.shape), wd_ratio


def _check_projection(delta: float, wd_ratio: float, eps: float) -> None:
    check_non_negative("delta", delta)
    check_non_negative("wd_ratio", wd_ratio)
    check_non_negative("eps", eps)


@OPTIMIZERS.register("adamp")
class AdamP(MultiTensorOptimizer):
    """AdamP (arXiv 2006.08217); defaults are the official code's."""

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        delta: float = 0.1,
        wd_ratio: float = 0.1,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
    ):
        check_lr(lr)
        check_betas(betas)
        check_non_negative("weight_decay", weight_decay)
        _check_projection(delta, wd_ratio, eps)
        defaults = dict(
            lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, delta=delta,
            wd_ratio=wd_ratio, nesterov=bool(nesterov), maximize=maximize, foreach=foreach,
        )
        super().__init__(params, defaults)

    def _init_state(self, p: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def _project(self, group, p: Tensor, g: Tensor, update: Tensor) -> tuple[Tensor, float]:
        if p.dim() <= 1:
            return update, 1.0
        return project_radial(p, g, update, group["delta"], group["wd_ratio"], group["eps"])

    def _update_reference(self, group, params, grads, steps) -> None:
        lr, wd, eps = as_float(group["lr"]), group["weight_decay"], group["eps"]
        beta1, beta2 = group["betas"]
        for p, g, t in zip(params, grads, steps):
            state = self.state[p]
            m, v = state["exp_avg"], state["exp_avg_sq"]
            m.lerp_(g, 1 - beta1)
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            # m / (sqrt(v / bc2) + eps) = sqrt(bc2) * m / (sqrt(v) + eps sqrt(bc2)); the
            # projection is linear, so sqrt(bc2) can go into the step size.
            bc2_sqrt = math.sqrt(1 - beta2**t)
            denom = v.sqrt().add_(eps * bc2_sqrt)
            momentum = (m * beta1).add_(g, alpha=1 - beta1) if group["nesterov"] else m
            update, ratio = self._project(group, p, g, momentum / denom)
            if wd != 0:
                p.mul_(1 - lr * wd * ratio)
            p.add_(update, alpha=-lr * bc2_sqrt / (1 - beta1**t))

    def _update_foreach(self, group, params, grads, step) -> None:
        lr, wd, eps = as_float(group["lr"]), group["weight_decay"], group["eps"]
        beta1, beta2 = group["betas"]
        exp_avgs = [self.state[p]["exp_avg"] for p in params]
        exp_avg_sqs = [self.state[p]["exp_avg_sq"] for p in params]
        torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
        bc2_sqrt = math.sqrt(1 - beta2**step)
        denom = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_add_(denom, eps * bc2_sqrt)
        if group["nesterov"]:
            updates = list(torch._foreach_mul(exp_avgs, beta1))
            torch._foreach_add_(updates, grads, alpha=1 - beta1)
            torch._foreach_div_(updates, denom)
        else:
            updates = list(torch._foreach_div(exp_avgs, denom))
        # The projection test is data-dependent and per tensor.
        ratios = [1.0] * len(params)
        for i, (p, g) in enumerate(zip(params, grads)):
            updates[i], ratios[i] = self._project(group, p, g, updates[i])
        if wd != 0:
            torch._foreach_mul_(params, [1 - lr * wd * r for r in ratios])
        torch._foreach_add_(params, updates, alpha=-lr * bc2_sqrt / (1 - beta1**step))


@OPTIMIZERS.register("sgdp")
class SGDP(MultiTensorOptimizer):
    """SGDP (arXiv 2006.08217); defaults are the official code's (lr has none there)."""

    counts_steps = False

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        eps: float = 1e-8,
        delta: float = 0.1,
        wd_ratio: float = 0.1,
        project_buffer: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
    ):
        check_lr(lr)
        check_beta("momentum", momentum)
        check_non_negative("dampening", dampening)
        check_non_negative("weight_decay", weight_decay)
        _check_projection(delta, wd_ratio, eps)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError(
                f"nesterov needs momentum > 0 and dampening == 0 "
                f"(got momentum={momentum!r}, dampening={dampening!r})"
            )
        defaults = dict(
            lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
            nesterov=bool(nesterov), eps=eps, delta=delta, wd_ratio=wd_ratio,
            project_buffer=bool(project_buffer), maximize=maximize, foreach=foreach,
        )
        super().__init__(params, defaults)

    def _init_state(self, p: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def _project(self, group, p: Tensor, g: Tensor, update: Tensor) -> tuple[Tensor, float]:
        if p.dim() <= 1:
            return update, 1.0
        return project_radial(p, g, update, group["delta"], group["wd_ratio"], group["eps"])

    @staticmethod
    def _maybe_project_buffer(group, buf: Tensor, update: Tensor) -> None:
        """Official-code behaviour: without Nesterov the projected update is the buffer."""
        if group["project_buffer"] and not group["nesterov"] and update is not buf:
            buf.copy_(update)

    def _decay_factor(self, group, lr: float, ratio: float) -> float:
        return 1 - lr * group["weight_decay"] * ratio / (1 - group["momentum"])

    def _update_reference(self, group, params, grads, steps) -> None:
        lr, mu = as_float(group["lr"]), group["momentum"]
        for p, g in zip(params, grads):
            buf = self.state[p]["momentum_buffer"]
            buf.mul_(mu).add_(g, alpha=1 - group["dampening"])
            direction = g + mu * buf if group["nesterov"] else buf
            update, ratio = self._project(group, p, g, direction)
            self._maybe_project_buffer(group, buf, update)
            if group["weight_decay"] != 0:
                p.mul_(self._decay_factor(group, lr, ratio))
            p.add_(update, alpha=-lr)

    def _update_foreach(self, group, params, grads, step) -> None:
        lr, mu = as_float(group["lr"]), group["momentum"]
        bufs = [self.state[p]["momentum_buffer"] for p in params]
        torch._foreach_mul_(bufs, mu)
        torch._foreach_add_(bufs, grads, alpha=1 - group["dampening"])
        if group["nesterov"]:
            updates = list(torch._foreach_add(grads, torch._foreach_mul(bufs, mu)))
        else:
            updates = list(bufs)
        ratios = [1.0] * len(params)
        for i, (p, g) in enumerate(zip(params, grads)):
            updates[i], ratios[i] = self._project(group, p, g, updates[i])
            self._maybe_project_buffer(group, bufs[i], updates[i])
        if group["weight_decay"] != 0:
            torch._foreach_mul_(params, [self._decay_factor(group, lr, r) for r in ratios])
        torch._foreach_add_(params, updates, alpha=-lr)
