"""MARS: variance-reduced preconditioned updates ("approx" mode).

Yuan et al., "MARS: Unleashing the Power of Variance Reduction for Training
Large Models", 2024, arXiv 2411.10438; official code AGI-Arena/MARS
(``MARS/optimizers/mars.py``), which this follows. For a matrix parameter:

    c = g_t + gamma * beta1 / (1 - beta1) * (g_t - g_{t-1})     (g_0 = 0)
    c <- c / ||c|| if ||c|| > 1                                   (per tensor)
    m = EMA_beta1(c)
    AdamW flavour: v = EMA_beta2(c^2),
        theta <- theta - lr * (wd * theta + m / ((sqrt(v / bc2) + eps) * bc1))
    Lion flavour (``mars_type="lion"``): theta <- theta - lr * (wd * theta + sign(m))

g_{t-1} is the previous step's gradient of the same parameter (the paper's
approximate variant; the exact variant needs a second backward and is not
implemented). With gamma = 0 and ||g|| <= 1 the AdamW flavour is AdamW.

Parameters with fewer than two dimensions use plain AdamW with ``betas_1d``,
``weight_decay_1d`` and the learning rate ``lr * lr_1d_factor`` with
``lr_1d_factor = lr_1d / lr`` of the constructor (so a schedule or a group's
own lr scales it too), as in the official code; ``optimize_1d=True`` runs
MARS on them as well. The official code applies MARS to parameters with
exactly 2 dims (its GPT-2 has no others); here every parameter with >= 2 dims
gets MARS (as pytorch-optimizer and timm do).
A complex parameter is updated as its real view (one more trailing dimension
of size 2): a complex vector gets MARS, not the 1-D AdamW.
State per parameter: ``step``, ``exp_avg``, ``exp_avg_sq``, ``last_grad``;
group key ``lr_1d_factor`` = lr_1d / (lr at construction).
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

MARS_TYPES = ("adamw", "lion")


@OPTIMIZERS.register("mars")
class MARS(MultiTensorOptimizer):
    """MARS (arXiv 2411.10438), AdamW or Lion flavour; defaults are the official code's."""

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 3e-3,
        betas: tuple[float, float] = (0.95, 0.99),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        gamma: float = 0.025,
        mars_type: str = "adamw",
        optimize_1d: bool = False,
        lr_1d: float = 3e-3,
        betas_1d: tuple[float, float] = (0.9, 0.95),
        weight_decay_1d: float = 0.1,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
    ):
        check_lr(lr)
        check_lr(lr_1d)
        check_betas(betas)
        check_betas(betas_1d)
        check_non_negative("eps", eps)
        check_non_negative("weight_decay", weight_decay)
        check_non_negative("weight_decay_1d", weight_decay_1d)
        check_non_negative("gamma", gamma)
        if mars_type not in MARS_TYPES:
            raise ValueError(f"invalid mars_type: {mars_type!r} (choose from {MARS_TYPES})")
        defaults = dict(
            lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, gamma=gamma,
            mars_type=mars_type, optimize_1d=bool(optimize_1d), lr_1d=lr_1d,
            betas_1d=tuple(betas_1d), weight_decay_1d=weight_decay_1d,
            maximize=maximize, foreach=foreach,
        )
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        # The 1-D learning rate is a fixed multiple of the group's lr, so that
        # schedules (and a group's own lr) scale it too. The official code uses
        # one factor, lr_1d / lr of the constructor; a group that sets its own
        # lr_1d gets lr_1d / (its lr).
        own_lr_1d = "lr_1d" in param_group
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        if "lr_1d_factor" in group:
            return
        lr = as_float(group["lr"] if own_lr_1d else self.defaults["lr"])
        if lr <= 0.0:
            raise ValueError(f"MARS needs an initial lr > 0 to scale lr_1d (got lr={lr!r})")
        group["lr_1d_factor"] = group["lr_1d"] / lr

    def _init_state(self, p: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        for key in ("exp_avg", "exp_avg_sq", "last_grad"):
            state[key] = torch.zeros_like(p, memory_format=torch.preserve_format)

    @staticmethod
    def _uses_mars(group: dict[str, Any], p: Tensor) -> bool:
        return group["optimize_1d"] or p.dim() >= 2

    # --- reference path ---------------------------------------------------------
    def _update_reference(self, group, params, grads, steps) -> None:
        for p, g, t in zip(params, grads, steps):
            if self._uses_mars(group, p):
                self._mars_one(group, p, g, t)
            else:
                self._adamw_one(group, p, g, t)
            self.state[p]["last_grad"].copy_(g)

    def _mars_one(self, group, p: Tensor, g: Tensor, t: int) -> None:
        state = self.state[p]
        lr, wd, eps = as_float(group["lr"]), group["weight_decay"], group["eps"]
        beta1, beta2 = group["betas"]
        m, v = state["exp_avg"], state["exp_avg_sq"]
        k = group["gamma"] * beta1 / (1 - beta1)
        c = (g * (1 + k)).sub_(state["last_grad"], alpha=k)  # g + k (g - g_prev)
        c_norm = c.norm()
        if c_norm > 1.0:
            c = c / c_norm
        m.lerp_(c, 1 - beta1)
        if wd != 0:
            p.mul_(1 - lr * wd)
        if group["mars_type"] == "lion":
            p.add_(m.sign(), alpha=-lr)
        else:
            v.mul_(beta2).addcmul_(c, c, value=1 - beta2)
            # m / ((sqrt(v / bc2) + eps) bc1) = sqrt(bc2) / bc1 * m / (sqrt(v) + eps sqrt(bc2))
            bc2_sqrt = math.sqrt(1 - beta2**t)
            denom = v.sqrt().add_(eps * bc2_sqrt)
            p.addcdiv_(m, denom, value=-lr * bc2_sqrt / (1 - beta1**t))

    def _adamw_one(self, group, p: Tensor, g: Tensor, t: int) -> None:
        state = self.state[p]
        lr = as_float(group["lr"]) * group["lr_1d_factor"]
        wd, eps = group["weight_decay_1d"], group["eps"]
        beta1, beta2 = group["betas_1d"]
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        bc2_sqrt = math.sqrt(1 - beta2**t)
        denom = v.sqrt().add_(eps * bc2_sqrt)
        if wd != 0:
            p.mul_(1 - lr * wd)
        p.addcdiv_(m, denom, value=-lr * bc2_sqrt / (1 - beta1**t))

    # --- multi-tensor path --------------------------------------------------------
    def _update_foreach(self, group, params, grads, step) -> None:
        mars, adamw = [], []
        for i, p in enumerate(params):
            (mars if self._uses_mars(group, p) else adamw).append(i)
        if mars:
            self._mars_foreach(group, [params[i] for i in mars], [grads[i] for i in mars], step)
        if adamw:
            self._adamw_foreach(group, [params[i] for i in adamw], [grads[i] for i in adamw], step)
            torch._foreach_copy_([self.state[params[i]]["last_grad"] for i in adamw], [grads[i] for i in adamw])

    def _mars_foreach(self, group, params, grads, t: int) -> None:
        lr, wd, eps = as_float(group["lr"]), group["weight_decay"], group["eps"]
        beta1, beta2 = group["betas"]
        exp_avgs = [self.state[p]["exp_avg"] for p in params]
        exp_avg_sqs = [self.state[p]["exp_avg_sq"] for p in params]
        last_grads = [self.state[p]["last_grad"] for p in params]
        k = group["gamma"] * beta1 / (1 - beta1)
        tensors = (params, grads, exp_avgs, exp_avg_sqs, last_grads)
        # c = g + k (g - g_prev) = lerp(g_prev, g, 1 + k) is formed in place of g_prev,
        # which gets g at the end of the step anyway. Clipping needs ||c|| of whole
        # tensors: those split into blocks (see _base.work_chunks) form c and its
        # norm in a first pass, others in their chunk.
        block_norms: dict[int, list[Tensor]] = {}
        for chunk in work_chunks(self, tensors, 1):
            if chunk.blocked:
                (c,) = chunk.pieces[4]
                block_norms.setdefault(chunk.index[0], []).append(c.lerp_(chunk.pieces[1][0], 1 + k).norm())
        # a tensor in blocks: the norm of its blocks' norms (equal to rounding)
        norms = {i: torch.linalg.vector_norm(torch.stack(ns)) for i, ns in block_norms.items()}
        for chunk in work_chunks(self, tensors, 1):
            p, g, m, v, c = chunk.pieces
            if chunk.blocked:
                clip = [norms[chunk.index[0]].clamp_min(1.0)]
            else:
                torch._foreach_lerp_(c, g, 1 + k)
                clip = torch._foreach_norm(c)
                torch._foreach_clamp_min_(clip, 1.0)  # dividing by 1 leaves c unclipped
            torch._foreach_div_(c, clip)
            if group["mars_type"] == "lion":
                torch._foreach_lerp_(m, c, 1 - beta1)
                if wd != 0:
                    torch._foreach_mul_(p, 1 - lr * wd)
                torch._foreach_add_(p, foreach_into("sign", chunk.outs(0), m), alpha=-lr)
            else:  # the AdamW flavour is AdamW on c: one fused pass
                adamw_update(self, chunk, p, c, m, v, t, lr, beta1, beta2, eps, wd)
            torch._foreach_copy_(c, g)  # g_prev of the next step

    def _adamw_foreach(self, group, params, grads, t: int) -> None:
        lr = as_float(group["lr"]) * group["lr_1d_factor"]
        wd, eps = group["weight_decay_1d"], group["eps"]
        beta1, beta2 = group["betas_1d"]
        exp_avgs = [self.state[p]["exp_avg"] for p in params]
        exp_avg_sqs = [self.state[p]["exp_avg_sq"] for p in params]
        for chunk in work_chunks(self, (params, grads, exp_avgs, exp_avg_sqs), 1):
            adamw_update(self, chunk, *chunk.pieces, t, lr, beta1, beta2, eps, wd)
