"""AdaGrad-Norm: one AdaGrad step size per parameter group.

Ward, Wu, Bottou, "AdaGrad stepsizes: sharp convergence over nonconvex
landscapes", ICML 2019, arXiv 1806.01811:

    b_{t+1}^2 = b_t^2 + ||g_t||^2,    theta <- theta - lr * g_t / b_{t+1}

where ||g_t|| is the Euclidean norm of the gradient of all parameters of the
group that have one. With ``clip`` = lambda, the gradient is clipped before it
is accumulated and used, g <- g * min(1, lambda / ||g||), as in Clip-AdaGrad-Norm
(Chezhegov et al., "Gradient Clipping Improves AdaGrad when the Noise Is
Heavy-Tailed" / "Clipping Improves Adam-Norm and AdaGrad-Norm when the Noise
Is Heavy-Tailed", arXiv 2406.04443).

State: the accumulator b_t^2 is one number per group, so it lives in the
param group as a Python float, ``group["b_sq"]`` (initialised to ``b0**2``),
and round-trips through ``state_dict`` with the group's hyperparameters. There
is no per-parameter state.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from . import OPTIMIZERS
from ._base import MultiTensorOptimizer, as_float, check_lr


@OPTIMIZERS.register("adagrad_norm")
class AdaGradNorm(MultiTensorOptimizer):
    """AdaGrad-Norm (arXiv 1806.01811), optionally clipped (arXiv 2406.04443)."""

    counts_steps = False

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1e-2,
        b0: float = 1e-8,
        clip: float | None = None,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
    ):
        check_lr(lr)
        if not b0 > 0.0:
            raise ValueError(f"invalid b0: {b0!r} (must be > 0)")
        if clip is not None and not clip > 0.0:
            raise ValueError(f"invalid clip: {clip!r} (must be None or > 0)")
        defaults = dict(lr=lr, b0=b0, clip=clip, maximize=maximize, foreach=foreach)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        group.setdefault("b_sq", float(group["b0"]) ** 2)

    def _init_state(self, p: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        pass  # all state is in the group

    @staticmethod
    def step_size(group: dict[str, Any], grad_norm: float) -> float:
        """Accumulate the (clipped) ``grad_norm`` into the group's ``b_sq``; return
        this step's size, lr * scale / b (the batched update uses it per run too)."""
        scale = 1.0
        if group["clip"] is not None and grad_norm > group["clip"]:
            scale = group["clip"] / grad_norm
            grad_norm = group["clip"]
        group["b_sq"] = group["b_sq"] + grad_norm**2
        return as_float(group["lr"]) * scale / math.sqrt(group["b_sq"])

    def _apply(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
               grad_norm: float, foreach: bool) -> None:
        step_size = self.step_size(group, grad_norm)
        if foreach:
            torch._foreach_add_(params, grads, alpha=-step_size)
        else:
            for p, g in zip(params, grads):
                p.add_(g, alpha=-step_size)

    def _update_reference(self, group, params, grads, steps) -> None:
        grad_norm = math.sqrt(sum(float(g.double().square().sum()) for g in grads))
        self._apply(group, params, grads, grad_norm, foreach=False)

    def _update_foreach(self, group, params, grads, step) -> None:
        norms = torch._foreach_norm(grads)
        grad_norm = float(torch.linalg.vector_norm(torch.stack(norms).double()))
        self._apply(group, params, grads, grad_norm, foreach=True)
