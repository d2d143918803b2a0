"""``SharedInstanceUpdate``: one optimizer instance steps many runs' tensors, for
optimizers with per-tensor reductions whose update is linear in the learning rate.

AdamP and SGDP (a projection per tensor) and Shampoo (preconditioners per
tensor) update a parameter as ``p <- p - lr * d`` (after ``p <- p * (1 - lr *
wd)`` for Shampoo's decoupled decay), where ``d`` depends on the parameter, its gradient
and its state, never on ``lr``, and every reduction is over one tensor. So
the runs of a group share one instance holding every run's tensors (run r's
tensors in their own shapes, rows of a "shadow" copy of the stack): each step
the shadow takes the parameters' values and gradients, the instance steps it
with ``lr = 1`` and no weight decay, and ``shadow - p`` is then ``-d`` for every
tensor of every run. Each run's own ``lr`` (its schedule's value this step)
and decay are applied per row. Reductions stay per tensor, so per run; what
is shared is the Python of a step (one ``step()`` over R*T tensors instead of
R steps over T; the optimizers' foreach code batches same-shaped tensors).

The numbers are the run's own optimizer's up to rounding (``p + lr * (shadow -
p)`` instead of ``p - lr * d``: a rounding of p's size). Runs share an
instance when their optimizers have one param group, equal hyperparameters
other than ``lr`` (and a decoupled ``weight_decay``), and equal step counts;
AdamP and SGDP only without weight decay (their decay is not a plain
``1 - lr * wd``). MARS is not here: its 1-D tensors take their own learning
rate (``lr_1d``, a per-run ratio to ``lr`` in a sweep) and weight decay.
Each run's own optimizer holds its state whenever it is read (resume points,
``state_<k>.pt``): its tensors' states copied in (``sync``).
"""

from __future__ import annotations

from typing import Any

import torch

from ..optim import SGDP, AdamP, Shampoo
from .stacked_update import RowsUpdate, _copy, _freeze, _rows

# class -> (weight-decay keys that must be 0, the decay applied per row: "decoupled" or None)
PER_TENSOR = {
    AdamP: (("weight_decay",), None),
    SGDP: (("weight_decay",), None),
    Shampoo: ((), "decoupled"),
}
PER_RUN_KEYS = ("params", "lr", "initial_lr", "weight_decay")


def shared_update_key(run) -> Any:
    """Runs with equal keys can share a ``SharedInstanceUpdate``; None: not this path."""
    opt = run.optimizer
    if type(opt) not in PER_TENSOR or len(opt.param_groups) != 1:
        return None
    group = opt.param_groups[0]
    zero_keys, decay = PER_TENSOR[type(opt)]
    if any(group.get(k, 0) for k in zero_keys) or isinstance(group["lr"], torch.Tensor):
        return None
    if group.get("maximize") or group.get("differentiable") or group.get("fused") or group.get("capturable"):
        return None
    if list(group["params"]) != list(run.model.parameters()):
        return None
    first = opt.state.get(group["params"][0], {})
    step = first.get("step", 0)
    shared = tuple(sorted((k, _freeze(v)) for k, v in group.items() if k not in PER_RUN_KEYS))
    return (type(opt), decay, shared, float(step), tuple(sorted(first)))


class SharedInstanceUpdate(RowsUpdate):
    """One optimizer step for the runs ``rows`` of ``runs`` (rows of ``stack``, equal
    ``shared_update_key``s); see the module docstring."""

    def __init__(self, rows: list[int], runs: list, stack):
        super().__init__(rows, runs, stack)
        self.decoupled = PER_TENSOR[self.cls][1] == "decoupled"

    def attach(self) -> None:
        flat = self.stack.flat
        self.shadow = torch.zeros((len(self.rows), flat.shape[1]), dtype=flat.dtype, device=flat.device)
        self.shadow_grad = torch.zeros_like(self.shadow)
        # run i's tensors, in its parameters' shapes, as views of the shadow (the instance's params)
        self.views = [[self.stack.row(self.shadow, i, n) for n in self.names] for i in range(len(self.rows))]
        for i, tensors in enumerate(self.views):
            for n, v in zip(self.names, tensors):
                v.grad = self.stack.row(self.shadow_grad, i, n)
        own = [self.runs[r].optimizer for r in self.rows]
        self.optimizer = self.cls([v for tensors in self.views for v in tensors], lr=1.0)
        group = self.optimizer.param_groups[0]
        group.update({k: _copy(v) for k, v in own[0].param_groups[0].items() if k not in PER_RUN_KEYS})
        group["weight_decay"] = 0.0  # applied per row (decoupled) or required 0
        for i, o in enumerate(own):
            for v, p in zip(self.views[i], o.param_groups[0]["params"]):
                if o.state.get(p):  # resumed or restored: the run's own state
                    self.optimizer.state[v] = {k: _copy(x) for k, x in o.state[p].items()}
        self._own_state_read_through_sync()

    def sync(self, i: int) -> None:
        """Copy run ``rows[i]``'s tensors' states into its own optimizer."""
        opt = self.runs[self.rows[i]].optimizer
        for v, p in zip(self.views[i], opt.param_groups[0]["params"]):
            if self.optimizer.state.get(v):
                opt.state[p] = {k: _copy(x) for k, x in self.optimizer.state[v].items()}

    def step(self, active: list[int], losses: torch.Tensor, rngs: list[torch.Tensor], second_pass=None) -> None:
        on = self._on(active)
        if not any(on):
            return
        groups = self._groups()
        lr = self._column([g["lr"] for g in groups])
        wds = [g["weight_decay"] for g in groups]
        decay = self._column([1 - g["lr"] * w for g, w in zip(groups, wds)]) if self.decoupled and any(wds) else None
        P = self.stack.flat
        with torch.no_grad():
            p = self._rows_of(P.detach())
            self.shadow.copy_(p)
            self.shadow_grad.copy_(self._rows_of(P.grad))
        self.optimizer.step()
        with torch.no_grad():
            self._write(p, torch.addcmul(p if decay is None else p * _rows(decay, p), _rows(lr, p), self.shadow - p), on)
