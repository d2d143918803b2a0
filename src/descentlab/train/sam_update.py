"""``SharpnessAwareUpdate``: SAM and ASAM runs with a batched closure.

``SAM.step(closure)`` evaluates the closure twice: the gradient at ``w``, then,
after the ascent step ``w + eps`` (``SAM.perturbation``, per run: its norm is
the run's own), the gradient there, which its base optimizer uses at ``w``.
Here each of the two closures is one batched pass over all the runs of the
stack: the loop's pass gives the gradients at ``w``; every run then moves to
its own ``w + eps``, one more batched pass gives the perturbed gradients, and
every run returns to ``w`` exactly and steps its base optimizer, as
``SAM.step`` does. Stacks with SAM runs hold only SAM/ASAM runs (``batch_key``),
so the second pass touches no other run's gradients or BatchNorm statistics.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..optim import SAM


def is_sharpness_aware(run) -> bool:
    return isinstance(run.optimizer, SAM)


class SharpnessAwareUpdate:
    """The SAM/ASAM runs ``rows`` of a stack; see the module docstring."""

    def __init__(self, rows: list[int], runs: list):
        self.rows, self.runs = rows, runs
        for r in rows:
            if not is_sharpness_aware(runs[r]):
                raise TypeError(f"SharpnessAwareUpdate: run {r}'s optimizer is {type(runs[r].optimizer).__name__}, not SAM/ASAM")

    def attach(self) -> None:
        pass

    def detach(self) -> None:
        pass

    @torch.no_grad()
    def step(self, active: list[int], losses: torch.Tensor, rngs: list[torch.Tensor],
             second_pass: Callable[[list[int]], torch.Tensor]) -> None:
        stepping = [r for r in self.rows if r in set(active)]
        if not stepping:
            return
        moved = {}
        for r in stepping:
            pairs = self.runs[r].optimizer.perturbation()
            moved[r] = [(p, p.detach().clone()) for p, _ in pairs]
            for p, eps in pairs:
                p.add_(eps)
        with torch.enable_grad():
            perturbed = second_pass(stepping)
        for r in stepping:
            for p, w in moved[r]:  # back to w exactly (not w + eps - eps)
                p.copy_(w)
            loss = perturbed[r]
            self.runs[r].optimizer.base.step(lambda: loss)
