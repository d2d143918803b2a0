"""Weight averaging during training: the run spec's ``averaging`` list.

Kinds (``config.KINDS`` has their keys and defaults): ``swa``, ``ema`` (with
the batch-size scaling rule of "How to Scale Your EMA" as an option),
``switch_ema``, ``lawa`` and ``posthoc_ema`` (EDM2; ``reconstruct_posthoc_ema``
gives any EMA length after training). ``Averagers`` is what the training loop
holds: it shows each averager the model at the run's start step and after
every step, lets SWA set the learning rate, evaluates the averaged weights at
the run's evaluation steps (metrics ``<metric>@<name>``, split as the run's),
and carries their state in resume points. A finished run saves each
averager's final weights as ``final.<name>.pt`` next to ``final.pt`` (SWA's
with BatchNorm statistics recomputed; post-hoc EMA's: a record of its
snapshots, for ``reconstruct_posthoc_ema``; an averager that never averaged,
e.g. SWA in a run that diverged before its start: a marker file).

In a batched job the averagers of each run observe its own model (its rows of
the stack), so runs with averagers batch like any other.
A child run (``init``) starts its averagers afresh at its start step, also
with ``restore: all``: the parent's averager states are not carried over.
Post-hoc EMA keeps its snapshots in memory and in every resume point
(2 models per snapshot).

The averagers see the model's training-mode weights (for Schedule-Free: y,
not the published average). Evaluating them never touches the run's random
stream, so a run's own numbers do not depend on its averagers, except for
``switch_ema`` (it changes the weights) and an SWA learning rate.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from .averagers import AVERAGERS, EMA, LAWA, SWA, PosthocEMA, SwitchEMA
from .config import KINDS, canonical_averaging, check_averaging, final_file, final_files, scaled_decay
from .power_ema import (
    gamma_to_sigma_rel,
    p_dot_p,
    posthoc_coefficients,
    reconstruct_posthoc_ema,
    sigma_rel_to_gamma,
)

__all__ = [
    "AVERAGERS", "Averagers", "EMA", "KINDS", "LAWA", "PosthocEMA", "SWA", "SwitchEMA", "canonical_averaging",
    "check_averaging", "final_file", "final_files", "gamma_to_sigma_rel", "p_dot_p", "posthoc_coefficients",
    "reconstruct_posthoc_ema", "scaled_decay", "sigma_rel_to_gamma",
]


class Averagers:
    """A run's averagers, in the spec's order (none: every method does nothing)."""

    def __init__(self, entries: list[dict[str, Any]], model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 batch_size: int, x_train: torch.Tensor):
        self.items = [
            AVERAGERS[e["kind"]](e, model, batch_size=batch_size, optimizer=optimizer, x_train=x_train) for e in entries
        ]

    def observe(self, step: int, model: torch.nn.Module, epoch_end: bool) -> None:
        for item in self.items:
            item.observe(step, model, epoch_end)

    def set_lr(self, at_step: int) -> bool:
        """Let SWA set the next step's learning rate; True if one did."""
        return any([item.set_lr(at_step) for item in self.items if hasattr(item, "set_lr")])

    def evaluate(self, evaluate_module: Callable[[torch.nn.Module], list[tuple[str, str, float]]]) -> list[tuple[str, str, float]]:
        """``(split, metric@name, value)`` for every averager with weights, from
        ``evaluate_module(module) -> [(split, metric, value)]``. The global random
        state is restored afterwards (``update_bn`` runs the model in train mode)."""
        rows = []
        if not self.items:
            return rows
        with torch.random.fork_rng(devices=[]):
            cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
            cuda_states = torch.cuda.get_rng_state_all() if cuda else None
            for item in self.items:
                for label, module in item.eval_modules():
                    rows += [(split, f"{metric}@{label}", value) for split, metric, value in evaluate_module(module)]
            if cuda:
                torch.cuda.set_rng_state_all(cuda_states)
        return rows

    def finals(self) -> dict[str, Any]:
        """``final.<name>.pt`` -> its content (None: the averager never averaged)."""
        return {final_file(item.name): item.final() for item in self.items}

    def state_dict(self) -> list[dict[str, Any]]:
        return [item.state_dict() for item in self.items]

    def load_state_dict(self, states: list[dict[str, Any]]) -> None:
        if len(states) != len(self.items):
            raise ValueError(f"resume state holds {len(states)} averager states, the spec has {len(self.items)} averagers")
        for item, state in zip(self.items, states):
            item.load_state_dict(state)
