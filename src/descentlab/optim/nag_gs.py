"""NAG-GS (Leplat et al., "NAG-GS: Semi-Implicit, Accelerated and Robust Stochastic
Optimizer", arXiv 2209.14937); official code skolai/nag-gs (PyTorch ``NAGGS``, Optax
``nag_gs``).

A Gauss-Seidel (semi-implicit) discretisation, with step alpha, of the accelerated
flow x' = v - x, v' = (mu/gamma)(x - v) - grad f(x)/gamma, gamma' = mu - gamma.
The paper's Algorithm 1, with a = alpha / (1 + alpha):
    gamma_{k+1} = (1 - a) gamma_k + a mu
    x_{k+1}     = (1 - a) x_k + a v_k
    v_{k+1}     = (v_k + (alpha mu/gamma_{k+1}) x_{k+1} - (alpha/gamma_{k+1}) grad f(x_{k+1}))
                  / (1 + alpha mu/gamma_{k+1}).
(Checked against the official Optax ``nag_gs`` and the authors' notebook
``notebooks/quadratic-and-non-convex-cases.ipynb``, whose NAG-GS loop has this
order: x first, the gradient at the new x, then v with gamma_{k+1}.) For
gamma = mu and a spectrum in [mu, L] the notebook's step
alpha* = (mu + gamma + 2 sqrt(gamma L)) / (L - mu) minimises the worst spectral
radius, 1/(1 + alpha*) (tested).
The parameters hold x (where the gradient is taken). A ``step()`` receives
grad f(x_{k+1}), finishes iteration k (the v update with gamma_{k+1}) and starts
iteration k+1 (gamma_{k+2}, x_{k+2}). Start: v_0 = x_0, so x_1 = x_0 and the
first step only needs gamma_1 = (1 - a) gamma_0 + a mu.

Differences from the official code (measured in tests/optim/test_nag_gs.py):
- PyTorch ``NAGGS`` uses gamma_k instead of gamma_{k+1} in the v update (it
  updates gamma after computing b). Identical when gamma_0 = mu; on f = x.x
  from ones(3) with alpha 0.05, mu 1, gamma_0 1.5 the iterates differ by up
  to 4.1e-3 (at step 28, where x ~ 0.38).
- Optax ``nag_gs`` follows the paper but spends its first call on gamma_1 and
  x_1 = x_0 without using the gradient: its iterate n+1 is our iterate n (its
  README's 200-step value -6.888961e-05 (float32) is our 199-step -6.888932e-05).
Defaults (alpha 0.05, mu 1, gamma 1.5) are those of the official README.
Complex parameters are updated as their real views, as torch.optim does.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch

from . import OPTIMIZERS
from ._base import as_real, check_gradients


@OPTIMIZERS.register("nag_gs")
class NAGGS(torch.optim.Optimizer):
    """NAG-GS (arXiv 2209.14937, Algorithm 1).

    Args:
        lr: the integration step alpha (> 0).
        mu: the strong-convexity parameter of the flow (>= 0).
        gamma: gamma_0 (> 0); gamma_k relaxes towards mu.
        foreach: multi-tensor (None/True) or per-parameter loop (False).
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 0.05,
        mu: float = 1.0,
        gamma: float = 1.5,
        foreach: bool | None = None,
    ):
        if not lr > 0.0:
            raise ValueError(f"Invalid learning rate (alpha > 0): {lr}")
        if not mu >= 0.0:
            raise ValueError(f"Invalid mu (>= 0): {mu}")
        if not gamma > 0.0:
            raise ValueError(f"Invalid gamma (> 0): {gamma}")
        super().__init__(params, dict(lr=lr, mu=mu, gamma=gamma, foreach=foreach))

    @staticmethod
    def coefficients(alpha: float, mu: float, gamma: float) -> tuple[float, float, float]:
        """(1 - b, b, c) of the v update v <- (1 - b) v + b x - c g, with
        b = alpha mu / (alpha mu + gamma) and c = alpha / (alpha mu + gamma)."""
        return gamma / (alpha * mu + gamma), alpha * mu / (alpha * mu + gamma), alpha / (alpha * mu + gamma)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        for group in self.param_groups:
            alpha, mu = group["lr"], group["mu"]
            a = alpha / (1.0 + alpha)
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            check_gradients(self, params)
            for p in params:
                state = self.state[p]
                if len(state) == 0:
                    state["v"] = p.detach().clone(memory_format=torch.preserve_format)
                    state["gamma"] = (1.0 - a) * group["gamma"] + a * mu  # gamma_1; x_1 = x_0
            gammas = [self.state[p]["gamma"] for p in params]
            keep, pull, push = (list(c) for c in zip(*(self.coefficients(alpha, mu, gamma) for gamma in gammas)))
            # complex parameters are updated as their real views (torch.optim's convention)
            vs = [as_real(self.state[p]["v"]) for p in params]
            grads = [as_real(p.grad) for p in params]
            xs = [as_real(p.detach()) for p in params]
            if group["foreach"] is False:
                for p, v, g, k, b, c in zip(xs, vs, grads, keep, pull, push):
                    v.mul_(k).add_(p * b).sub_(g * c)
                    p.lerp_(v, a)
            else:
                torch._foreach_mul_(vs, keep)
                torch._foreach_add_(vs, torch._foreach_mul(xs, pull))
                torch._foreach_sub_(vs, torch._foreach_mul(grads, push))
                torch._foreach_lerp_(xs, vs, a)
            for p, gamma in zip(params, gammas):
                self.state[p]["gamma"] = (1.0 - a) * gamma + a * mu
        return loss
