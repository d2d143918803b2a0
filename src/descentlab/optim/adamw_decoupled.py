"""AdamW with the paper's decoupled weight decay.

Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019,
arXiv 1711.05101, Algorithm 2 (AdamW):

    theta_t <- theta_{t-1} - eta_t * (alpha * m_hat / (sqrt(v_hat) + eps) + lambda * theta_{t-1})

alpha is the learning rate and eta_t the schedule multiplier: the decay
follows the schedule but not the learning rate. ``torch.optim.AdamW`` decays
by ``lr_t * lambda = alpha * eta_t * lambda``, which couples the decay to the
learning rate again (its best ``lambda`` scales like 1 / alpha).

Here the decay step is ``p <- p * (1 - eta_t * weight_decay)`` with
``eta_t = lr_t / base_lr``: ``base_lr`` is the group's lr when it was added
(kept in the group under that key; torch's OneCycleLR rewrites
``initial_lr``, so that key is not used). descentlab's training loop
(``group["lr"] = base * factor``) and torch's LambdaLR scale the built lr by
the schedule's multiplier, so ``eta_t`` is exactly that multiplier.

Equivalently, ``AdamWDecoupled(lr=a, weight_decay=w)`` is
``torch.optim.AdamW(lr=a, weight_decay=w / a)`` under any schedule (the
tests check this, and the update against a float64 hand computation). The
Adam part is torch's Adam (with ``weight_decay=0``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from . import OPTIMIZERS
from ._base import as_float, check_non_negative, refuse_sparse


@OPTIMIZERS.register("adamw_decoupled")
class AdamWDecoupled(torch.optim.Adam):
    """AdamW whose decay is scaled by the schedule multiplier only (arXiv 1711.05101, Alg. 2)."""

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-4,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
    ):
        check_non_negative("weight_decay", weight_decay)
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                         maximize=maximize, foreach=foreach)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        check_non_negative("weight_decay", group["weight_decay"])
        group.setdefault("base_lr", as_float(group["lr"]))
        if group["weight_decay"] != 0 and not group["base_lr"] > 0:
            # eta_t = lr_t / base_lr is undefined: say so rather than decay by inf or nothing
            raise ValueError(f"AdamWDecoupled: a group with weight_decay={group['weight_decay']} needs lr > 0 "
                             f"when built (the decay follows lr / base lr), got lr={group['lr']!r}")

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:  # refuse before anything changes
            for p in group["params"]:
                refuse_sparse(self, p.grad)
            if "base_lr" not in group:
                raise KeyError("AdamWDecoupled: a param group has no 'base_lr' (a state dict of another optimizer?)")
        for group in self.param_groups:
            decay = as_float(group["lr"]) / group["base_lr"] * group["weight_decay"] if group["weight_decay"] else 0.0
            params = [torch.view_as_real(p) if p.is_complex() else p for p in group["params"] if p.grad is not None]
            if decay and params:
                torch._foreach_mul_(params, 1.0 - decay)  # theta_{t-1} * (1 - eta_t lambda), before the Adam step
        # torch's Adam must not add the decay a second time (as L2)
        decays = [group["weight_decay"] for group in self.param_groups]
        try:
            for group in self.param_groups:
                group["weight_decay"] = 0.0
            super().step()
        finally:
            for group, decay in zip(self.param_groups, decays):
                group["weight_decay"] = decay
        return loss
