"""Learning-rate schedules: the ``SCHEDULES`` registry.

A schedule builder is called as ``builder(total_steps, **kwargs)`` and returns
a function ``multiplier(step) -> float`` (step counts from 0). The optimizer's
learning rate at a step is ``lr * multiplier(step)``; ``as_scheduler`` wraps a
multiplier as a ``torch.optim.lr_scheduler.LambdaLR``.

Every builder takes ``warmup_steps``: the multiplier is ``(step + 1) / warmup``
for ``step < warmup_steps`` (so step 0 is not a no-op), then the schedule's own
shape over the remaining ``total_steps - warmup_steps`` steps. Steps at or past
``total_steps`` keep the final value.

Names: ``constant``, ``step``, ``cosine``, ``linear`` (decay to a floor, D2Z by
default), ``wsd`` (warmup-stable-decay with linear / cosine / 1-sqrt / 1-square
cooldowns), ``uba`` and ``refined`` (from a previous run's gradient norms).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .registry import Registry

Multiplier = Callable[[int], float]

SCHEDULES = Registry("schedule")


def _check_warmup(total_steps: int, warmup_steps: int) -> None:
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(
            f"warmup_steps must be in [0, total_steps={total_steps}], got {warmup_steps}"
        )


def _check_final_factor(final_factor: float) -> None:
    if not 0.0 <= final_factor <= 1.0:
        raise ValueError(f"final_factor must be in [0, 1], got {final_factor}")


def _linear_warmup(step: int, warmup_steps: int) -> float:
    """(step + 1) / warmup for the first ``warmup_steps`` steps, so step 0 is not a no-op."""
    return min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0


def _decay_after_warmup(
    total_steps: int, warmup_steps: int, shape: Callable[[float], float]
) -> Multiplier:
    """Warmup, then ``shape(progress)`` with progress going 0 -> 1 over the remaining steps."""
    decay_steps = total_steps - warmup_steps

    def multiplier(step: int) -> float:
        if step < warmup_steps:
            return _linear_warmup(step, warmup_steps)
        progress = min(1.0, (step - warmup_steps) / decay_steps) if decay_steps else 1.0
        return shape(progress)

    return multiplier


@SCHEDULES.register("constant")
def constant(total_steps: int, warmup_steps: int = 0) -> Multiplier:
    _check_warmup(total_steps, warmup_steps)
    return lambda step: _linear_warmup(step, warmup_steps)


@SCHEDULES.register("step")
def step_decay(
    total_steps: int, milestones: Sequence[int], gamma: float = 0.1, warmup_steps: int = 0
) -> Multiplier:
    """Multiply by ``gamma`` at each milestone (absolute steps), as torch ``MultiStepLR``."""
    _check_warmup(total_steps, warmup_steps)
    milestones = [int(m) for m in milestones]
    if not milestones:
        raise ValueError("step: milestones must be a non-empty list of steps")
    if any(b <= a for a, b in zip(milestones, milestones[1:])):
        raise ValueError(f"step: milestones must be strictly increasing, got {milestones}")
    if milestones[0] < 1 or milestones[-1] >= total_steps:
        raise ValueError(
            f"step: milestones must lie in [1, total_steps={total_steps}), got {milestones}"
        )
    if not 0.0 < gamma <= 1.0:
        raise ValueError(f"step: gamma must be in (0, 1], got {gamma}")

    def multiplier(step: int) -> float:
        if step < warmup_steps:
            return _linear_warmup(step, warmup_steps)
        return gamma ** sum(step >= m for m in milestones)

    return multiplier


@SCHEDULES.register("cosine")
def cosine(total_steps: int, warmup_steps: int = 0, final_factor: float = 0.0) -> Multiplier:
    """Linear warmup, then cosine from 1 to ``final_factor`` at ``total_steps``."""
    _check_warmup(total_steps, warmup_steps)
    _check_final_factor(final_factor)
    decay_steps = total_steps - warmup_steps

    def multiplier(step: int) -> float:
        if step < warmup_steps:
            return _linear_warmup(step, warmup_steps)
        progress = min(1.0, (step - warmup_steps) / decay_steps) if decay_steps else 1.0
        return final_factor + (1.0 - final_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return multiplier


@SCHEDULES.register("linear")
def linear(total_steps: int, warmup_steps: int = 0, final_factor: float = 0.0) -> Multiplier:
    """Linear decay from 1 to ``final_factor`` at ``total_steps``; ``final_factor=0`` is D2Z.

    Bergsma et al., "Straight to Zero: Why Linearly Decaying the Learning Rate to
    Zero Works Best for LLMs", arXiv 2502.15938: eta_t = eta_max * (1 - t / T).
    """
    _check_warmup(total_steps, warmup_steps)
    _check_final_factor(final_factor)
    return _decay_after_warmup(
        total_steps, warmup_steps, lambda p: final_factor + (1.0 - final_factor) * (1.0 - p)
    )


# Cooldown shapes s in [0, 1] -> [1, 0] for WSD (epfml/schedules-and-scaling names in brackets).
COOLDOWN_SHAPES: dict[str, Callable[[float], float]] = {
    "linear": lambda s: 1.0 - s,
    "cosine": lambda s: 0.5 * (1.0 + math.cos(math.pi * s)),
    "1-sqrt": lambda s: 1.0 - math.sqrt(s),  # ["sqrt"]
    "1-square": lambda s: 1.0 - s * s,  # ["square"]
}
_COOLDOWN_ALIASES = {"sqrt": "1-sqrt", "square": "1-square"}


@SCHEDULES.register("wsd")
def wsd(
    total_steps: int,
    warmup_steps: int = 0,
    cooldown_fraction: float = 0.2,
    cooldown_steps: int | None = None,
    cooldown: str = "1-sqrt",
    final_factor: float = 0.0,
) -> Multiplier:
    """Warmup-stable-decay: warmup, hold at 1, then cool down to ``final_factor``.

    Hägele et al., "Scaling Laws and Compute-Optimal Training Beyond Fixed Training
    Durations", arXiv 2405.18392; as epfml/schedules-and-scaling ``wsd_schedule``:
    the cooldown covers the last ``int(cooldown_fraction * total_steps)`` steps
    (or ``cooldown_steps``), s = (step - cooldown_start) / cooldown_steps, and the
    multiplier is ``final_factor + (1 - final_factor) * shape(s)``. The floor
    enters inside the shape for every cooldown, so there is no jump at the end
    (pytorch-optimizer's ``get_wsd_schedule`` applies its floor after non-cosine
    cooldowns, which makes the LR fall towards 0 and then jump up to the floor).
    """
    _check_warmup(total_steps, warmup_steps)
    _check_final_factor(final_factor)
    name = _COOLDOWN_ALIASES.get(cooldown, cooldown)
    if name not in COOLDOWN_SHAPES:
        raise ValueError(
            f"wsd: unknown cooldown {cooldown!r}; valid: {', '.join(COOLDOWN_SHAPES)}"
        )
    shape = COOLDOWN_SHAPES[name]
    if cooldown_steps is None:
        if not 0.0 <= cooldown_fraction <= 1.0:
            raise ValueError(f"wsd: cooldown_fraction must be in [0, 1], got {cooldown_fraction}")
        cooldown_steps = int(cooldown_fraction * total_steps)
    if cooldown_steps < 0 or warmup_steps + cooldown_steps > total_steps:
        raise ValueError(
            f"wsd: need 0 <= cooldown_steps and warmup_steps + cooldown_steps <= total_steps; "
            f"got cooldown_steps={cooldown_steps}, warmup_steps={warmup_steps}, "
            f"total_steps={total_steps}"
        )
    cooldown_start = total_steps - cooldown_steps

    def multiplier(step: int) -> float:
        if step < warmup_steps:
            return _linear_warmup(step, warmup_steps)
        if step < cooldown_start:
            return 1.0
        s = min(1.0, (step - cooldown_start) / cooldown_steps) if cooldown_steps else 1.0
        return final_factor + (1.0 - final_factor) * shape(s)

    return multiplier


@SCHEDULES.register("uba")
def uba(total_steps: int, phi: float, warmup_steps: int = 0, final_factor: float = 0.0) -> Multiplier:
    """Unified budget-aware schedule (Tang et al., "Stepsize anything", arXiv 2505.24452).

    With c = 1 + cos(pi * progress): multiplier = f + (1 - f) * 2c / (2 phi + (2 - phi) c).
    It starts at 1 and ends at ``final_factor``; phi = 2 is exactly cosine, phi < 2
    stays high longer, phi > 2 decays faster. The formula was checked against
    third-party implementations, not the paper's text (see the issue notes).
    """
    _check_warmup(total_steps, warmup_steps)
    _check_final_factor(final_factor)
    if not (phi > 0.0 and math.isfinite(phi)):
        raise ValueError(f"uba: phi must be a positive finite number, got {phi}")

    def shape(progress: float) -> float:
        c = 1.0 + math.cos(math.pi * progress)
        return final_factor + (1.0 - final_factor) * 2.0 * c / (2.0 * phi + (2.0 - phi) * c)

    return _decay_after_warmup(total_steps, warmup_steps, shape)


# -- refined schedule ---------------------------------------------------------------------


def load_grad_norms(path: str | Path, metric: str = "grad_norm") -> tuple[np.ndarray, np.ndarray]:
    """(steps, norms) from a tidy metrics table (parquet or CSV: step, [split,] metric, value).

    Rows with ``metric == metric`` are sorted by step; where a ``split`` column holds
    several splits for that metric, the ``train`` rows are used.
    """
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"refined: no metrics file at {path}")
    table = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    missing = {"step", "metric", "value"} - set(table.columns)
    if missing:
        raise ValueError(f"refined: {path} lacks columns {sorted(missing)}")
    rows = table[table["metric"] == metric]
    if "split" in rows.columns and rows["split"].nunique() > 1:
        rows = rows[rows["split"] == "train"]
    if rows.empty:
        raise ValueError(f"refined: {path} has no rows with metric == {metric!r}")
    if rows["step"].duplicated().any():
        raise ValueError(f"refined: {path} has several {metric!r} values for one step")
    rows = rows.sort_values("step")
    return rows["step"].to_numpy(dtype=np.float64), rows["value"].to_numpy(dtype=np.float64)


def median_smooth(values: np.ndarray, window_fraction: float) -> np.ndarray:
    """Median filter of odd width ~ ``window_fraction * len``, as the refinement authors do.

    Their README pads the right end by reflection (2 widths) before
    ``scipy.ndimage.median_filter(..., mode="nearest")`` so the last values are
    not pulled towards the edge; width 1 returns the values unchanged.
    """
    from scipy.ndimage import median_filter

    width = 2 * (int(window_fraction * len(values)) // 2) + 1
    if width == 1:
        return values.copy()
    pad = 2 * width
    padded = np.pad(values, (0, pad), mode="reflect")
    return median_filter(padded, size=width, mode="nearest")[:-pad]


def refined_from_norms(
    grad_norms: np.ndarray,
    total_steps: int,
    window_fraction: float = 0.1,
    norm_power: float = 2.0,
    steps: np.ndarray | None = None,
) -> np.ndarray:
    """The refined multipliers for steps 0..total_steps-1 (peak 1, last step 0).

    Defazio, Cutkosky, Mehta, Mishchenko, "When, Why and How Much? Adaptive
    Learning Rate Scheduling by Refinement", arXiv 2310.07831, closed form as the
    authors' ``find_closed_form_schedule``: w_t = ||g_t||^-norm_power (2 for SGD;
    1 with l1 norms for Adam), eta_t ∝ w_t * sum_{s > t} w_s, normalised to peak 1.
    The norms are median-filtered, then linearly interpolated onto the new run's
    steps by relative position (``steps``: where the norms were logged, if not
    evenly spaced).
    """
    norms = np.asarray(grad_norms, dtype=np.float64).reshape(-1)
    if norms.size < 2:
        raise ValueError(f"refined: need at least 2 gradient norms, got {norms.size}")
    if not np.all(np.isfinite(norms)) or np.any(norms <= 0):
        bad = norms[~(np.isfinite(norms) & (norms > 0))][:3]
        raise ValueError(f"refined: gradient norms must be finite and > 0, got e.g. {bad.tolist()}")
    if total_steps < 2:
        raise ValueError(f"refined: total_steps must be >= 2, got {total_steps}")
    if not 0.0 <= window_fraction < 1.0:
        raise ValueError(f"refined: window_fraction must be in [0, 1), got {window_fraction}")
    if norm_power <= 0:
        raise ValueError(f"refined: norm_power must be > 0, got {norm_power}")
    smoothed = median_smooth(norms, window_fraction)
    if steps is not None:
        steps = np.asarray(steps, dtype=np.float64)
        if steps.shape != norms.shape or np.any(np.diff(steps) <= 0):
            raise ValueError("refined: steps must be increasing, one per gradient norm")
        positions = (steps - steps[0]) / (steps[-1] - steps[0])
    else:
        positions = np.linspace(0.0, 1.0, smoothed.size)
    if steps is not None or smoothed.size != total_steps:
        smoothed = np.interp(np.linspace(0.0, 1.0, total_steps), positions, smoothed)
    weights = smoothed ** (-norm_power)
    # tail[t] = sum_{s > t} w_s (0 for the last step)
    tail = np.concatenate([np.cumsum(weights[::-1])[::-1][1:], [0.0]])
    schedule = weights * tail
    return schedule / schedule.max()


@SCHEDULES.register("refined")
def refined(
    total_steps: int,
    grad_norms: Sequence[float] | np.ndarray | torch.Tensor | str | Path,
    warmup_steps: int = 0,
    window_fraction: float = 0.1,
    norm_power: float = 2.0,
    metric: str = "grad_norm",
) -> Multiplier:
    """Refined schedule from a previous run's gradient norms (arXiv 2310.07831).

    ``grad_norms`` is a sequence of per-step norms or the path of a metrics
    parquet/CSV (columns step, metric, value; rows where metric == ``metric``).
    Constant norms give exactly linear decay to 0 at the last step,
    (total_steps - 1 - t) / (total_steps - 1). A ``warmup_steps`` warmup multiplies
    the refined curve (the curve keeps its own time axis; real norms usually
    produce a warmup by themselves).
    """
    _check_warmup(total_steps, warmup_steps)
    steps = None
    if isinstance(grad_norms, (str, Path)):
        steps, norms = load_grad_norms(grad_norms, metric)
    elif isinstance(grad_norms, torch.Tensor):
        norms = grad_norms.detach().cpu().double().numpy()
    else:
        norms = np.asarray(grad_norms, dtype=np.float64)
    values = refined_from_norms(norms, total_steps, window_fraction, norm_power, steps).tolist()

    def multiplier(step: int) -> float:
        return _linear_warmup(step, warmup_steps) * values[min(step, total_steps - 1)]

    return multiplier


# -- plumbing -------------------------------------------------------------------------------


def build_schedule(spec: dict, total_steps: int) -> Multiplier:
    return SCHEDULES.build(spec, total_steps)


def as_scheduler(optimizer: torch.optim.Optimizer, multiplier: Multiplier) -> torch.optim.lr_scheduler.LambdaLR:
    """The multiplier as a torch LR scheduler (call ``.step()`` once per optimizer step)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)
