"""Schedule-Free AdamW and SGD (Defazio et al., "The Road Less Scheduled", arXiv 2405.15682).

Three sequences per parameter: the base iterate z (plain AdamW/SGD steps), the
average x (evaluated, checkpointed) and the interpolation y = beta1*x + (1-beta1)*z
where the gradient is taken. Only z is stored; the parameter itself holds y in
train mode and x in eval mode, and ``train()``/``eval()`` convert between them
(x = lerp(y, z, 1 - 1/beta1), y = lerp(x, z, 1 - beta1)), as the official
``schedulefree`` package does. The training loop calls ``eval()`` before
evaluation/checkpointing and ``train()`` after; ``step()`` refuses to run in
eval mode.

Step k (0-based): lr_k = lr * min(1, (k+1)/warmup_steps) [* sqrt(1 - beta2^(k+1))
in the paper's AdamW]; c_k = (k+1)^r * max_{i<=k}(lr_i)^weight_lr_power;
ckp1 = c_k / sum_{i<=k} c_i; z <- z - lr_k * (d + lambda*y) with d the AdamW (or
SGD) direction; x <- (1-ckp1) x + ckp1 z; y <- beta1 x + (1-beta1) z. The x/y
updates are done on y directly (y <- lerp(y, z, ckp1) + lr_k(beta1(1-ckp1)-1) u).

AdamW ``bias_correction``:
- ``"paper"`` (default): lr_k includes sqrt(1 - beta2^(k+1)) (so do the weights
  c_k) and eps is added to the raw sqrt(v): the published algorithm, =
  ``schedulefree.AdamWScheduleFreePaper`` ("the version used in the published
  experiments", per its docstring).
- ``"denominator"``: denominator sqrt(v / (1 - beta2^(k+1))) + eps and no bias
  factor in lr_k: = ``schedulefree.AdamWScheduleFree`` (the default class in 1.4.1),
  ``AdamWScheduleFreeReference`` and pytorch-optimizer, which its authors found
  more stable. The two differ by ~1e-2 in x after 100 steps at lr 0.0025.
The averaging weights use the running max of lr_k, as the official code does
(the same as lr_k itself for warmup-then-constant lr). So an external
scheduler that lowers lr does not freeze the parameters: x keeps averaging
towards z (c_k ~ 1/k), and y with it.

Unlike the official classes, ``step()`` never writes into ``p.grad``. Complex
parameters are updated (and converted by ``train()``/``eval()``) as their real
views, as torch.optim does.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable

import torch

from . import OPTIMIZERS
from ._base import as_real, check_gradients

_BIAS_CORRECTIONS = ("paper", "denominator")


def _check_common(lr: float, weight_decay: float, warmup_steps: int, r: float, weight_lr_power: float):
    if not lr >= 0.0:
        raise ValueError(f"Invalid learning rate: {lr}")
    if not weight_decay >= 0.0:
        raise ValueError(f"Invalid weight_decay: {weight_decay}")
    if not (isinstance(warmup_steps, int) and warmup_steps >= 0):
        raise ValueError(f"Invalid warmup_steps (a non-negative int): {warmup_steps}")
    if not r >= 0.0:
        raise ValueError(f"Invalid r (polynomial averaging power, >= 0): {r}")
    if not weight_lr_power >= 0.0:
        raise ValueError(f"Invalid weight_lr_power: {weight_lr_power}")


class _ScheduleFree(torch.optim.Optimizer):
    """Shared machinery: modes, averaging weights, the y/z update."""

    def _interp_beta(self, group: dict[str, Any]) -> float:
        raise NotImplementedError

    @torch.no_grad()
    def eval(self) -> None:
        """Make the parameters hold x (the average) for evaluation/checkpointing."""
        for group in self.param_groups:
            if group["train_mode"]:
                beta = self._interp_beta(group)
                for p in group["params"]:
                    z = self.state[p].get("z")
                    if z is not None:
                        as_real(p.detach()).lerp_(as_real(z), 1.0 - 1.0 / beta)
                group["train_mode"] = False

    @torch.no_grad()
    def train(self) -> None:
        """Make the parameters hold y (where gradients are taken)."""
        for group in self.param_groups:
            if not group["train_mode"]:
                beta = self._interp_beta(group)
                for p in group["params"]:
                    z = self.state[p].get("z")
                    if z is not None:
                        as_real(p.detach()).lerp_(as_real(z), 1.0 - beta)
                group["train_mode"] = True

    def _schedule(self, group: dict[str, Any], bias_factor: float) -> tuple[float, float]:
        """Advance the group's averaging weights; return (lr_k, ckp1)."""
        k = group["k"]
        warmup = group["warmup_steps"]
        sched = (k + 1) / warmup if k < warmup else 1.0
        lr = group["lr"] * sched * bias_factor
        group["scheduled_lr"] = lr
        group["lr_max"] = lr_max = max(lr, group["lr_max"])
        weight = ((k + 1) ** group["r"]) * (lr_max ** group["weight_lr_power"])
        group["weight_sum"] = weight_sum = group["weight_sum"] + weight
        ckp1 = weight / weight_sum if weight_sum != 0 else 0.0
        group["k"] = k + 1
        return lr, ckp1

    def _check_train_mode(self) -> None:
        if not all(group["train_mode"] for group in self.param_groups):
            raise RuntimeError(
                f"{type(self).__name__}.step() called in eval mode: call optimizer.train() "
                "after evaluation/checkpointing and before training steps"
            )


def _yz_update_foreach(ys, zs, updates, lr: float, ckp1: float, beta: float) -> None:
    torch._foreach_lerp_(ys, zs, ckp1)
    torch._foreach_add_(ys, updates, alpha=lr * (beta * (1.0 - ckp1) - 1.0))
    torch._foreach_sub_(zs, updates, alpha=lr)


def _yz_update(y, z, update, lr: float, ckp1: float, beta: float) -> None:
    y.lerp_(z, ckp1)
    y.add_(update, alpha=lr * (beta * (1.0 - ckp1) - 1.0))
    z.sub_(update, alpha=lr)


@OPTIMIZERS.register("sfadamw")
class ScheduleFreeAdamW(_ScheduleFree):
    """Schedule-Free AdamW (arXiv 2405.15682, Algorithm 1); defaults from ``schedulefree``.

    Weight decay is decoupled and taken at y (z <- z - lr_k*lambda*y).
    ``foreach=None`` or ``True`` uses the multi-tensor path, ``False`` the
    per-parameter reference loop (same arithmetic).
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 0.0025,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        r: float = 0.0,
        weight_lr_power: float = 2.0,
        bias_correction: str = "paper",
        foreach: bool | None = None,
    ):
        _check_common(lr, weight_decay, warmup_steps, r, weight_lr_power)
        beta1, beta2 = betas
        if not 0.0 < beta1 < 1.0:
            raise ValueError(f"Invalid beta1 (must lie in (0, 1) so x can be recovered from y): {beta1}")
        if not 0.0 <= beta2 < 1.0:
            raise ValueError(f"Invalid beta2: {beta2}")
        if not eps >= 0.0:
            raise ValueError(f"Invalid eps: {eps}")
        if bias_correction not in _BIAS_CORRECTIONS:
            raise ValueError(f"Invalid bias_correction {bias_correction!r}; expected one of {_BIAS_CORRECTIONS}")
        defaults = dict(
            lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=weight_decay,
            warmup_steps=warmup_steps, r=r, weight_lr_power=weight_lr_power,
            bias_correction=bias_correction, foreach=foreach,
            k=0, weight_sum=0.0, lr_max=-1.0, scheduled_lr=0.0, train_mode=True,
        )
        super().__init__(params, defaults)

    def _interp_beta(self, group: dict[str, Any]) -> float:
        return group["betas"][0]

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None):
        self._check_train_mode()
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            bias_correction2 = 1.0 - beta2 ** (group["k"] + 1)
            paper = group["bias_correction"] == "paper"
            lr, ckp1 = self._schedule(group, math.sqrt(bias_correction2) if paper else 1.0)
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            check_gradients(self, params)
            for p in params:
                state = self.state[p]
                if "z" not in state:
                    state["z"] = p.detach().clone(memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            # complex parameters are updated as their real views (torch.optim's convention)
            tensors = [[as_real(t) for t in ts] for ts in (
                [p.detach() for p in params], [p.grad for p in params],
                [self.state[p]["z"] for p in params], [self.state[p]["exp_avg_sq"] for p in params])]
            args = (group, *tensors, lr, ckp1, beta1, beta2, bias_correction2, paper)
            if group["foreach"] is False:
                self._update_loop(*args)
            else:
                self._update_foreach(*args)
        return loss

    def _update_foreach(self, group, params, grads, zs, vs, lr, ckp1, beta1, beta2, bias_correction2, paper):
        torch._foreach_mul_(vs, beta2)
        torch._foreach_addcmul_(vs, grads, grads, value=1.0 - beta2)
        denom = torch._foreach_sqrt(vs) if paper else torch._foreach_sqrt(torch._foreach_div(vs, bias_correction2))
        torch._foreach_add_(denom, group["eps"])
        updates = torch._foreach_div(grads, denom)
        if group["weight_decay"] != 0:
            torch._foreach_add_(updates, params, alpha=group["weight_decay"])
        _yz_update_foreach(params, zs, updates, lr, ckp1, beta1)

    def _update_loop(self, group, params, grads, zs, vs, lr, ckp1, beta1, beta2, bias_correction2, paper):
        for p, g, z, v in zip(params, grads, zs, vs):
            v.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
            denom = v.sqrt() if paper else v.div(bias_correction2).sqrt_()
            denom.add_(group["eps"])
            update = g.div(denom)
            if group["weight_decay"] != 0:
                update.add_(p, alpha=group["weight_decay"])
            _yz_update(p, z, update, lr, ckp1, beta1)


@OPTIMIZERS.register("sfsgd")
class ScheduleFreeSGD(_ScheduleFree):
    """Schedule-Free SGD (arXiv 2405.15682); defaults from ``schedulefree``.

    ``momentum`` is the interpolation beta (y = momentum*x + (1-momentum)*z);
    weight decay is coupled and taken at y (g + lambda*y), as in the official code.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1.0,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        r: float = 0.0,
        weight_lr_power: float = 2.0,
        foreach: bool | None = None,
    ):
        _check_common(lr, weight_decay, warmup_steps, r, weight_lr_power)
        if not 0.0 < momentum < 1.0:
            raise ValueError(f"Invalid momentum (must lie in (0, 1)): {momentum}")
        defaults = dict(
            lr=lr, momentum=momentum, weight_decay=weight_decay,
            warmup_steps=warmup_steps, r=r, weight_lr_power=weight_lr_power, foreach=foreach,
            k=0, weight_sum=0.0, lr_max=-1.0, scheduled_lr=0.0, train_mode=True,
        )
        super().__init__(params, defaults)

    def _interp_beta(self, group: dict[str, Any]) -> float:
        return group["momentum"]

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None):
        self._check_train_mode()
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        for group in self.param_groups:
            lr, ckp1 = self._schedule(group, 1.0)
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            check_gradients(self, params)
            for p in params:
                state = self.state[p]
                if "z" not in state:
                    state["z"] = p.detach().clone(memory_format=torch.preserve_format)
            zs = [as_real(self.state[p]["z"]) for p in params]
            grads = [as_real(p.grad) for p in params]
            params = [as_real(p.detach()) for p in params]  # complex: their real views
            decay, beta = group["weight_decay"], group["momentum"]
            if group["foreach"] is False:
                for p, z, g in zip(params, zs, grads):
                    update = g.add(p, alpha=decay) if decay != 0 else g
                    _yz_update(p, z, update, lr, ckp1, beta)
            else:
                updates = torch._foreach_add(grads, params, alpha=decay) if decay != 0 else grads
                _yz_update_foreach(params, zs, updates, lr, ckp1, beta)
        return loss
