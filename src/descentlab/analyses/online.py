"""Online convex problems on which Adam fails (Reddi, Kale, Kumar, "On the
Convergence of Adam and Beyond", ICLR 2018, arXiv 1904.09237).

The problem is one-dimensional and runs for millions of steps, where a torch
optimizer call (~100 us) would dominate; ``adam_scalar`` is torch's Adam /
AMSGrad update on Python floats (tests check it against ``torch.optim.Adam``
step by step in float64).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from . import ANALYSES

if TYPE_CHECKING:  # pandas is imported where it is used, so the registry imports fast
    import pandas as pd


def counterexample_gradients(steps: int, big: float, small: float, period: int) -> np.ndarray:
    """g_t of f_t(x) = big * x if t mod period == 1 else -small * x, t = 1..steps."""
    t = np.arange(1, steps + 1)
    return np.where(t % period == 1, big, -small).astype(np.float64)


def adam_scalar(
    grads: np.ndarray,
    lrs: np.ndarray,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    amsgrad: bool = False,
    bounds: tuple[float, float] | None = None,
    x0: float = 0.0,
) -> np.ndarray:
    """Iterates x_1..x_T of torch's Adam (or AMSGrad: running max of v, then
    divided by sqrt(1 - beta2^t)) on given gradients, with step sizes ``lrs``
    and, if ``bounds``, projection by clamping after each step. ``grads[t]`` is
    the gradient at the iterate returned in position ``t - 1`` (x0 for t = 0),
    so it is for problems whose gradient does not depend on x (linear losses).
    """
    beta1, beta2 = betas
    m = v = v_max = 0.0
    x = x0
    out = np.empty(len(grads))
    lo, hi = bounds if bounds is not None else (-math.inf, math.inf)
    for t, (g, lr) in enumerate(zip(grads.tolist(), lrs.tolist()), start=1):
        m += (g - m) * (1.0 - beta1)  # torch: exp_avg.lerp_(grad, 1 - beta1)
        v = v * beta2 + (1.0 - beta2) * g * g
        bc2_sqrt = math.sqrt(1.0 - beta2**t)
        if amsgrad:
            v_max = max(v_max, v)
            denom = math.sqrt(v_max) / bc2_sqrt + eps
        else:
            denom = math.sqrt(v) / bc2_sqrt + eps
        x -= lr / (1.0 - beta1**t) * m / denom
        x = min(max(x, lo), hi)
        out[t - 1] = x
    return out


def regret_floor(big: float, small: float, period: int) -> float:
    """Average regret, per step over whole periods, of staying at the worst
    point -x* of the counterexample: 2 |big - (period - 1) small| / period."""
    return 2.0 * abs(big - (period - 1) * small) / period


@ANALYSES.register("adam_counterexample")
def adam_counterexample(
    runs,
    device: str = "cpu",
    steps: int = 1_000_000,
    big: float = 1010.0,
    small: float = 10.0,
    period: int = 101,
    lr: float = 0.5,
    betas: tuple[float, float] = (0.9, 0.99),
    records: int = 400,
) -> pd.DataFrame:
    """x_t and the average regret R_t / t of Adam and AMSGrad on the synthetic
    problem of Reddi et al. (Sec. 5): x in [-1, 1], f_t(x) = 1010 x every 101st
    step and -10 x otherwise, step size lr / sqrt(t). The optimum is x* = -1
    since a period's gradients sum to 1010 - 100 * 10 = 10 > 0.

    torch's AMSGrad divides the running max of v by sqrt(1 - beta2^t); the paper
    states AMSGrad without bias correction. The conclusion (Adam drifts to +1,
    AMSGrad converges to -1) holds for both. ``records`` log-spaced steps are kept.

    ``regret_floor`` (a column, the same on every row): the average regret of
    an iterate that sits at the worst point -x*. f_t is linear, so its regret
    at step t is g_t (x_t - x*) = 2 |g_t| sign-matched, and a period of
    ``period`` steps sums to 2 |big - (period - 1) small|: the floor is
    2 |big - (period - 1) small| / period = 2 * 10 / 101 = 0.198 here. Adam,
    which drifts to -x*, stays above it (its iterate dips below +1 after each
    large gradient, where the small ones then cost a little more).
    """
    import pandas as pd

    del runs, device  # a standalone experiment
    grads = counterexample_gradients(steps, big, small, period)
    x_star = -1.0 if big - (period - 1) * small > 0 else 1.0
    floor = regret_floor(big, small, period)
    lrs = lr / np.sqrt(np.arange(1, steps + 1))
    keep = np.unique(np.geomspace(1, steps, records).astype(int)) - 1
    frames = []
    for method, amsgrad in (("Adam", False), ("AMSGrad", True)):
        xs = adam_scalar(grads, lrs, betas=tuple(betas), amsgrad=amsgrad, bounds=(-1.0, 1.0))
        played = np.concatenate([[0.0], xs[:-1]])  # x_t, played before seeing f_t
        regret = np.cumsum(grads * (played - x_star))  # f_t linear: f_t(x_t) - f_t(x*)
        frames.append(pd.DataFrame({
            "method": method,
            "step": keep + 1,
            "x": xs[keep],
            "average_regret": regret[keep] / (keep + 1),
            "regret_floor": floor,
        }))
    return pd.concat(frames, ignore_index=True)
