"""Learning-rate schedules: the ``SCHEDULES`` registry.

A schedule builder is called as ``builder(total_steps, **kwargs)`` and returns
a function ``multiplier(step) -> float`` (step counts from 0). The optimizer's
learning rate at a step is ``lr * multiplier(step)``; ``as_scheduler`` wraps a
multiplier as a ``torch.optim.lr_scheduler.LambdaLR``.
"""

from __future__ import annotations

import math
from typing import Callable

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


def _linear_warmup(step: int, warmup_steps: int) -> float:
    """(step + 1) / warmup for the first ``warmup_steps`` steps, so step 0 is not a no-op."""
    return min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0


@SCHEDULES.register("constant")
def constant(total_steps: int, warmup_steps: int = 0) -> Multiplier:
    _check_warmup(total_steps, warmup_steps)
    return lambda step: _linear_warmup(step, warmup_steps)


@SCHEDULES.register("cosine")
def cosine(total_steps: int, warmup_steps: int = 0, final_factor: float = 0.0) -> Multiplier:
    """Linear warmup, then cosine from 1 to ``final_factor`` at ``total_steps``."""
    _check_warmup(total_steps, warmup_steps)
    if not 0.0 <= final_factor <= 1.0:
        raise ValueError(f"final_factor must be in [0, 1], got {final_factor}")
    decay_steps = total_steps - warmup_steps

    def multiplier(step: int) -> float:
        if step < warmup_steps:
            return _linear_warmup(step, warmup_steps)
        progress = min(1.0, (step - warmup_steps) / decay_steps) if decay_steps else 1.0
        return final_factor + (1.0 - final_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return multiplier


def build_schedule(spec: dict, total_steps: int) -> Multiplier:
    return SCHEDULES.build(spec, total_steps)


def as_scheduler(optimizer: torch.optim.Optimizer, multiplier: Multiplier) -> torch.optim.lr_scheduler.LambdaLR:
    """The multiplier as a torch LR scheduler (call ``.step()`` once per optimizer step)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)
