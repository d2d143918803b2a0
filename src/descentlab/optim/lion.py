"""Lion (EvoLved Sign Momentum).

Chen et al., "Symbolic Discovery of Optimization Algorithms", NeurIPS 2023,
arXiv 2302.06675, Algorithm 2:

    c = beta1 * m + (1 - beta1) * g
    theta <- theta * (1 - lr * weight_decay) - lr * sign(c)
    m <- beta2 * m + (1 - beta2) * g

Every coordinate moves by exactly +-lr (or 0 where c == 0) besides the decay.
State per parameter: ``exp_avg`` (m). Lion has no bias correction, so it keeps
no ``step`` counter.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from . import OPTIMIZERS
from ._base import (
    MultiTensorOptimizer, as_float, blocks, check_betas, check_lr, check_non_negative, split_blockable,
)


@OPTIMIZERS.register("lion")
class Lion(MultiTensorOptimizer):
    """Lion (arXiv 2302.06675). Defaults follow the paper / lion-pytorch."""

    counts_steps = False

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
    ):
        check_lr(lr)
        check_betas(betas)
        check_non_negative("weight_decay", weight_decay)
        defaults = dict(
            lr=lr, betas=tuple(betas), weight_decay=weight_decay, maximize=maximize, foreach=foreach
        )
        super().__init__(params, defaults)

    def _init_state(self, p: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def _update_reference(self, group, params, grads, steps) -> None:
        lr, wd = as_float(group["lr"]), group["weight_decay"]
        beta1, beta2 = group["betas"]
        for p, g in zip(params, grads):
            m = self.state[p]["exp_avg"]
            direction = m.lerp(g, 1 - beta1).sign_()
            if wd != 0:
                p.mul_(1 - lr * wd)
            p.add_(direction, alpha=-lr)
            m.lerp_(g, 1 - beta2)

    def _update_foreach(self, group, params, grads, step) -> None:
        exp_avgs = [self.state[p]["exp_avg"] for p in params]
        blocked, rest = split_blockable(self, (params, grads, exp_avgs))
        for i in blocked:
            self._step_blocks(group, (params[i], grads[i], exp_avgs[i]))
        if rest:
            self._step_lists(group, *([ts[i] for i in rest] for ts in (params, grads, exp_avgs)))

    def _step_lists(self, group, params, grads, exp_avgs) -> None:
        lr, wd = as_float(group["lr"]), group["weight_decay"]
        beta1, beta2 = group["betas"]
        # lerp(m, g, w) = m + w (g - m): one kernel for beta m + (1 - beta) g. It
        # rounds differently from mul+add (lion-pytorch) in the last bit only,
        # which can flip a sign only where |c| is ~1e-16 |m|.
        direction = torch._foreach_lerp(exp_avgs, grads, 1 - beta1)
        torch._foreach_sign_(direction)
        if wd != 0:
            torch._foreach_mul_(params, 1 - lr * wd)
        torch._foreach_add_(params, direction, alpha=-lr)
        torch._foreach_lerp_(exp_avgs, grads, 1 - beta2)

    def _step_blocks(self, group, triple) -> None:
        """The same update on a large contiguous CPU tensor, a block at a time
        (see _base.blocks): its four passes then hit cache, not main memory."""
        lr, wd = as_float(group["lr"]), group["weight_decay"]
        beta1, beta2 = group["betas"]
        for (p, g, m), (direction,) in blocks(self, triple, ("direction",)):
            torch.lerp(m, g, 1 - beta1, out=direction).sign_()
            if wd != 0:
                p.mul_(1 - lr * wd)
            p.add_(direction, alpha=-lr)
            m.lerp_(g, 1 - beta2)
