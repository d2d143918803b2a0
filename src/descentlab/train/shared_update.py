"""``SharedInstanceUpdate``: one optimizer instance steps many runs' tensors, for
optimizers with per-tensor reductions whose update is linear in the learning rate.

AdamP and SGDP (a projection per tensor), Shampoo (preconditioners per
tensor) and MuonAdamW (Newton-Schulz per matrix, fused AdamW for the rest)
update a parameter as ``p <- p - lr * d`` (after ``p <- p * (1 - lr * wd)``
for a decoupled decay: Shampoo's, both parts of MuonAdamW), where ``d`` depends
on the parameter, its gradient and its state, never on ``lr``, and every
reduction is over one tensor. So the runs of a group share one instance
holding every run's tensors (run r's tensors in their own shapes, rows of a
"shadow" copy of the stack): each step the shadow takes the parameters'
values and gradients, the instance steps it with ``lr = 1`` and no weight
decay, and ``shadow - p`` is then ``-d`` for every tensor of every run. Each
run's own ``lr`` (its schedule's value this step, per param group: MuonAdamW's
Muon and AdamW parts have their own) and decay are applied per row. Reductions
stay per tensor, so per run; what is shared is the Python of a step (one
``step()`` over R*T tensors instead of R steps over T; the optimizers' foreach
code batches same-shaped tensors, Muon orthogonalises the R*T matrices of a
shape in one batched Newton-Schulz).

The numbers are the run's own optimizer's up to rounding (``p + lr * (shadow -
p)`` instead of ``p - lr * d``: a rounding of p's size). Runs share an
instance when their optimizers have the same param groups (the same
parameters, by name, in each), equal hyperparameters other than ``lr`` (and a
decoupled ``weight_decay``), and equal step counts; AdamP and SGDP only
without weight decay (their decay is not a plain ``1 - lr * wd``). The
instance is built like run 0's own optimizer (its param groups, over run 0's
shadow tensors), then each group takes the other runs' tensors of the same
names. MARS is not here (``rowwise_update``): its 1-D tensors take their own
learning rate (``lr_1d``, a per-run ratio to ``lr`` in a sweep) and weight decay.
Each run's own optimizer holds its state whenever it is read (resume points,
``state_<k>.pt``): its tensors' states copied in (``sync``).
"""

from __future__ import annotations

from typing import Any

import torch

from ..optim import SGDP, AdamP, MuonAdamW, Shampoo
from .stacked_update import RowsUpdate, _copy, _freeze

# class -> (weight-decay keys that must be 0, the decay applied per row: "decoupled" or None)
PER_TENSOR = {
    AdamP: (("weight_decay",), None),
    SGDP: (("weight_decay",), None),
    Shampoo: ((), "decoupled"),
    MuonAdamW: ((), "decoupled"),
}
PER_RUN_KEYS = ("params", "lr", "initial_lr", "weight_decay")


def _group_names(run) -> list[tuple[str, ...]] | None:
    """The parameter names of each of the run's optimizer's param groups, or None
    when the groups do not hold each of the model's parameters exactly once."""
    name_of = {id(p): n for n, p in run.model.named_parameters()}
    groups = [tuple(name_of.get(id(p), "") for p in g["params"]) for g in run.optimizer.param_groups]
    named = [n for g in groups for n in g]
    if "" in named or sorted(named) != sorted(name_of.values()):
        return None
    return groups


def shared_update_key(run) -> Any:
    """Runs with equal keys can share a ``SharedInstanceUpdate``; None: not this path."""
    opt = run.optimizer
    if type(opt) not in PER_TENSOR:
        return None
    zero_keys, decay = PER_TENSOR[type(opt)]
    for group in opt.param_groups:
        if any(group.get(k, 0) for k in zero_keys) or isinstance(group["lr"], torch.Tensor):
            return None
        if group.get("maximize") or group.get("differentiable") or group.get("capturable"):
            return None
    names = _group_names(run)
    if names is None:
        return None
    first = opt.state.get(opt.param_groups[0]["params"][0], {})
    step = first.get("step", 0)
    shared = tuple(tuple(sorted((k, _freeze(v)) for k, v in g.items() if k not in PER_RUN_KEYS)) for g in opt.param_groups)
    return (type(opt), decay, tuple(names), shared, float(step), tuple(sorted(first)))


def _instance_like(own: torch.optim.Optimizer, params: list[torch.Tensor]) -> torch.optim.Optimizer:
    """A new optimizer of ``own``'s class over ``params`` (standing for own's parameters,
    in the model's order), with own's param-group structure."""
    if isinstance(own, MuonAdamW):  # routes the parameters into groups itself
        return MuonAdamW(params, lr=1.0, adamw_first_last=own.adamw_first_last)
    return type(own)(params, lr=1.0)


class SharedInstanceUpdate(RowsUpdate):
    """One optimizer step for the runs ``rows`` of ``runs`` (rows of ``stack``, equal
    ``shared_update_key``s); see the module docstring."""

    def __init__(self, rows: list[int], runs: list, stack):
        super().__init__(rows, runs, stack)
        self.decoupled = PER_TENSOR[self.cls][1] == "decoupled"
        self.group_names = _group_names(runs[rows[0]])

    def attach(self) -> None:
        flat = self.stack.flat
        self.shadow = torch.zeros((len(self.rows), flat.shape[1]), dtype=flat.dtype, device=flat.device)
        self.shadow_grad = torch.zeros_like(self.shadow)
        # run i's tensors by name, in its parameters' shapes, as views of the shadow (the instance's params)
        self.views = [{n: self.stack.row(self.shadow, i, n) for n in self.names} for i in range(len(self.rows))]
        for i, tensors in enumerate(self.views):
            for n, v in tensors.items():
                v.grad = self.stack.row(self.shadow_grad, i, n)
        own = [self.runs[r].optimizer for r in self.rows]
        self.optimizer = _instance_like(own[0], [self.views[0][n] for n in self.names])
        name_of = {id(v): n for n, v in self.views[0].items()}
        built = [tuple(name_of[id(v)] for v in g["params"]) for g in self.optimizer.param_groups]
        if built != self.group_names:
            raise AssertionError(f"{self.cls.__name__}: the shared instance's groups {built} are not the run's {self.group_names}")
        for group, own_group, names in zip(self.optimizer.param_groups, own[0].param_groups, self.group_names):
            group.update({k: _copy(v) for k, v in own_group.items() if k not in PER_RUN_KEYS})
            group["lr"], group["weight_decay"] = 1.0, 0.0  # applied per row (decoupled) or required 0
            group["params"].extend(self.views[i][n] for i in range(1, len(self.rows)) for n in names)
        for i, o in enumerate(own):
            for n, p in zip(self.names, self._own_params(i)):
                if o.state.get(p):  # resumed or restored: the run's own state
                    self.optimizer.state[self.views[i][n]] = {k: _copy(x) for k, x in o.state[p].items()}
        if len(self.group_names) > 1:  # which group each element of a row belongs to
            group_of = torch.empty(flat.shape[1], dtype=torch.long)
            for g, names in enumerate(self.group_names):
                for n in names:
                    start, end = self.stack.offsets[n]
                    group_of[start:end] = g
            self.group_of = group_of.to(flat.device)
        self._own_state_read_through_sync()

    def _own_params(self, i: int) -> list[torch.Tensor]:
        """Run ``rows[i]``'s parameters, in the order of ``self.names``."""
        return list(self.runs[self.rows[i]].model.parameters())

    def sync(self, i: int) -> None:
        """Copy run ``rows[i]``'s tensors' states into its own optimizer."""
        opt = self.runs[self.rows[i]].optimizer
        for n, p in zip(self.names, self._own_params(i)):
            v = self.views[i][n]
            if self.optimizer.state.get(v):
                opt.state[p] = {k: _copy(x) for k, x in self.optimizer.state[v].items()}

    def _per_element(self, values: list[list[float]]) -> torch.Tensor:
        """values[i][g] (row i, param group g) against the rows (rows, D): a (rows, 1)
        column or, with several groups, a (rows, D) map."""
        table = self._column([v for row in values for v in row]).view(len(values), -1)
        return table if table.shape[1] == 1 else table[:, self.group_of]

    def step(self, active: list[int], losses: torch.Tensor, rngs: list[torch.Tensor], second_pass=None) -> None:
        on = self._on(active)
        if not any(on):
            return
        groups = [self.runs[r].optimizer.param_groups for r in self.rows]
        lr = self._per_element([[g["lr"] for g in gs] for gs in groups])
        decayed = self.decoupled and any(g["weight_decay"] for gs in groups for g in gs)
        decay = self._per_element([[1 - g["lr"] * g["weight_decay"] for g in gs] for gs in groups]) if decayed else None
        P = self.stack.flat
        with torch.no_grad():
            p = self._rows_of(P.detach())
            self.shadow.copy_(p)
            self.shadow_grad.copy_(self._rows_of(P.grad))
        self.optimizer.step()
        with torch.no_grad():
            self._write(p, torch.addcmul(p if decay is None else p * decay, lr, self.shadow - p), on)
