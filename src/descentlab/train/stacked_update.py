"""``StackedUpdate``: one optimizer step for many runs, for optimizers whose
update is elementwise and linear in the learning rate.

For SGD (with momentum, Nesterov, dampening), Adam, AdamW, AMSGrad, NAdam,
RAdam, Adagrad (``lr_decay`` 0), Lion, diffGrad, Grams, EXAdam, AdEMAMix and
AdamWDecoupled the step is ``p <- p + lr * d`` (after a decoupled decay
``p <- p * (1 - lr * wd)`` for AdamW, Lion, Grams, EXAdam, AdEMAMix and the
``decoupled_weight_decay`` variants, ``p <- p * (1 - lr / base_lr * wd)`` for
AdamWDecoupled), where the direction ``d`` depends on the gradient and the
optimizer's state but not on ``lr`` or ``p``; coupled (L2) weight decay
(SGD, Adagrad, diffGrad) is the gradient ``g + wd * p``. So the runs of a group share one
instance of their optimizer class, with every hyperparameter but ``lr`` and
``weight_decay`` equal, stepped on a zero "scratch" tensor stacked like the
parameters with ``lr = 1`` and no weight decay: what it leaves there is ``d``
for every run at once. Each run's own ``lr`` (its schedule's value this step)
and ``weight_decay`` are then applied per row. The numbers are the run's own
optimizer's up to rounding (the products are grouped differently).

Each run's own optimizer still holds its hyperparameters (its schedule sets
its lr) and, whenever its state is read (resume points, ``state_<k>.pt``), its
state: its rows of the stacked state, copied into it (``sync``), in its own
format, so a batched run's state files load into a run trained alone.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from ..optim import AdamWDecoupled, AdEMAMix, DiffGrad, EXAdam, Grams, Lion

# class -> how its weight decay acts: "coupled" (added to the gradient),
# "decoupled" (p * (1 - lr * wd)), "scheduled" (p * (1 - lr / base_lr * wd): the
# decay follows the schedule, not the lr), or "flag" (the group's decoupled_weight_decay).
ELEMENTWISE = {
    torch.optim.SGD: "coupled",
    torch.optim.Adagrad: "coupled",
    torch.optim.Adam: "flag",
    torch.optim.AdamW: "decoupled",
    torch.optim.NAdam: "flag",
    torch.optim.RAdam: "flag",
    Lion: "decoupled",
    DiffGrad: "coupled",
    Grams: "decoupled",
    EXAdam: "decoupled",
    AdEMAMix: "decoupled",
    AdamWDecoupled: "scheduled",
}
PER_RUN_HYPERPARAMETERS = ("lr", "weight_decay", "base_lr")
_NOT_HYPERPARAMETERS = ("params", "lr", "weight_decay", "initial_lr", "base_lr", "decoupled_weight_decay")


def _shared_hyperparameters(group: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in group.items() if k not in _NOT_HYPERPARAMETERS}


def _freeze(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, torch.Tensor):
        return ("tensor", value.tolist())
    return value


def _decay_kind(optimizer: torch.optim.Optimizer) -> str:
    """How the optimizer's weight decay acts: "coupled", "decoupled" or "scheduled"."""
    kind = ELEMENTWISE[type(optimizer)]
    if kind == "flag":
        return "decoupled" if optimizer.param_groups[0].get("decoupled_weight_decay", False) else "coupled"
    return kind


def stacked_update_key(run) -> Any:
    """Runs with equal keys can share a ``StackedUpdate``; None: this run's optimizer
    steps on its own (not elementwise-linear in lr, or options that make it not so)."""
    opt = run.optimizer
    if type(opt) not in ELEMENTWISE or len(opt.param_groups) != 1:
        return None
    group = opt.param_groups[0]
    if group.get("maximize") or group.get("differentiable") or group.get("fused") or group.get("capturable"):
        return None
    if isinstance(group["lr"], torch.Tensor) or group.get("lr_decay", 0) != 0:
        return None
    if list(group["params"]) != list(run.model.parameters()):
        return None
    first = opt.state.get(group["params"][0], {})
    step = first.get("step", 0)
    shared = tuple(sorted((k, _freeze(v)) for k, v in _shared_hyperparameters(group).items()))
    return (type(opt), _decay_kind(opt), shared, float(step), tuple(sorted(first)))


def _is_per_run(key: str, value: Any, param: torch.Tensor) -> bool:
    """A state entry with one value per parameter element (else one scalar for all runs)."""
    return isinstance(value, torch.Tensor) and key != "step" and value.shape == param.shape


class RowsUpdate:
    """What a one-step-for-many-runs update keeps: its rows of the stack, the runs'
    own optimizers (their state synced in whenever read), and the write of each
    active row's new parameters. Subclasses: ``StackedUpdate``, ``SharedInstanceUpdate``."""

    def __init__(self, rows: list[int], runs: list, stack):
        self.rows, self.runs, self.stack = rows, runs, stack
        opt = runs[rows[0]].optimizer
        self.cls = type(opt)
        self.names = list(dict(runs[rows[0]].model.named_parameters()))
        flat = stack.flat  # (R, D): row r holds run r's parameters, in parameters() order
        self.index = torch.tensor(rows, device=flat.device)
        # consecutive rows are a view of the stack (no gather, written in place)
        self.block = slice(rows[0], rows[-1] + 1) if rows == list(range(rows[0], rows[-1] + 1)) else None

    def sync(self, i: int) -> None:
        raise NotImplementedError

    def after_state_read(self, i: int) -> None:
        """Called after run ``rows[i]``'s own state was synced in and read."""

    def detach(self) -> None:
        for i, r in enumerate(self.rows):
            self.sync(i)
            self.runs[r].__dict__.pop("optimizer_state_dict", None)

    def _own_state_read_through_sync(self) -> None:
        """The runs' own optimizers hand out the shared state when asked for theirs."""
        for i, r in enumerate(self.rows):
            run = self.runs[r]
            for p in run.model.parameters():  # per-parameter state lives in the update until synced back
                run.optimizer.state.pop(p, None)
            run.optimizer_state_dict = _synced_state_dict(self, i, run.optimizer)

    def _on(self, active: list[int]) -> list[bool]:
        wanted = set(active)
        return [r in wanted for r in self.rows]

    def _groups(self) -> list[dict[str, Any]]:
        return [self.runs[r].optimizer.param_groups[0] for r in self.rows]

    def _column(self, values: list[float]) -> torch.Tensor:
        """Per-row factors, computed in float64 as the runs' own optimizers do, then cast."""
        like = self.stack.flat
        return torch.tensor(values, dtype=torch.float64).to(dtype=like.dtype, device=like.device)

    def _rows_of(self, t: torch.Tensor) -> torch.Tensor:
        """This update's rows of a stacked tensor: a view when they are consecutive, else a copy."""
        return t[self.block] if self.block is not None else t[self.index]

    def _write(self, p: torch.Tensor, new: torch.Tensor, on: list[bool]) -> None:
        """Rows ``p`` (this update's rows of the stack) become ``new``, for the active ones."""
        if not all(on):
            new = torch.where(_rows(torch.tensor(on, device=p.device), p), new, p)
        if self.block is not None:
            self._rows_of(self.stack.flat.detach()).copy_(new)
        else:
            self.stack.flat.detach()[self.index] = new


class StackedUpdate(RowsUpdate):
    """One optimizer step for the runs ``rows`` of ``runs`` (rows of the same
    ``stack``, equal ``stacked_update_key``s); see the module docstring."""

    def __init__(self, rows: list[int], runs: list, stack):
        super().__init__(rows, runs, stack)
        self.decay_kind = _decay_kind(runs[rows[0]].optimizer)

    def attach(self) -> None:
        """Build the shared optimizer on a scratch tensor, with the runs' state (if any)."""
        flat = self.stack.flat
        self.scratch = torch.zeros((len(self.rows), flat.shape[1]), dtype=flat.dtype, device=flat.device)
        accepted = inspect.signature(self.cls).parameters
        hyper = {k: v for k, v in _shared_hyperparameters(self.runs[self.rows[0]].optimizer.param_groups[0]).items() if k in accepted}
        self.optimizer = self.cls([self.scratch], **hyper, lr=1.0, weight_decay=0.0)
        own = [self.runs[r].optimizer for r in self.rows]
        firsts = [o.state.get(o.param_groups[0]["params"][0], {}) for o in own]
        if firsts[0]:  # resumed or restored: the runs' own states, flattened into rows
            state = {}
            for key, value in firsts[0].items():
                if _is_per_run(key, value, own[0].param_groups[0]["params"][0]):
                    state[key] = torch.stack([
                        torch.cat([o.state[p][key].reshape(-1) for p in o.param_groups[0]["params"]]) for o in own
                    ])
                else:
                    state[key] = _copy(value)
            self.optimizer.state[self.scratch] = state
        self._own_state_read_through_sync()

    def sync(self, i: int) -> None:
        """Copy the stacked state's row ``i`` into run ``rows[i]``'s own optimizer, per parameter."""
        opt = self.runs[self.rows[i]].optimizer
        state = self.optimizer.state.get(self.scratch)
        if not state:
            return
        u = self.scratch
        for name, p in zip(self.names, opt.param_groups[0]["params"]):
            opt.state[p] = {
                k: self.stack.row(v, i, name).clone() if isinstance(v, torch.Tensor) and k != "step" and v.shape == u.shape else _copy(v)
                for k, v in state.items()
            }

    def step(self, active: list[int], losses: torch.Tensor, rngs: list[torch.Tensor], second_pass=None) -> None:
        on = self._on(active)
        if not any(on):
            return
        groups = self._groups()
        lrs, wds = [g["lr"] for g in groups], [g["weight_decay"] for g in groups]
        lr = self._column(lrs)
        decoupled = self.decay_kind != "coupled"
        if self.decay_kind == "scheduled":  # the decay follows the schedule's factor lr / base_lr, not lr
            factors = [1 - a / g["base_lr"] * w if w else 1.0 for a, w, g in zip(lrs, wds, groups)]
        else:
            factors = [1 - a * w for a, w in zip(lrs, wds)]
        decay = self._column(factors) if decoupled and any(wds) else None
        l2 = self._column(wds) if not decoupled and any(wds) else None
        P, u = self.stack.flat, self.scratch
        p, g = self._rows_of(P.detach()), self._rows_of(P.grad)
        if l2 is not None:
            g = g + _rows(l2, p) * p
        u.zero_()
        u.grad = g
        self.optimizer.step()
        with torch.no_grad():
            if all(on) and self.block is not None:  # in place: p * decay + lr * u
                if decay is not None:
                    p.mul_(_rows(decay, p))
                p.addcmul_(_rows(lr, p), u)
            else:
                self._write(p, p * _rows(decay, p) + _rows(lr, p) * u if decay is not None else p + _rows(lr, p) * u, on)
        u.grad = None


def _rows(column: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-row value broadcast against a stacked tensor (R, ...)."""
    return column.view(-1, *[1] * (like.dim() - 1))


def _copy(value: Any) -> Any:
    return value.clone() if isinstance(value, torch.Tensor) else value


def _synced_state_dict(update: RowsUpdate, i: int, optimizer: torch.optim.Optimizer):
    def state_dict() -> dict[str, Any]:
        update.sync(i)
        packed = optimizer.state_dict()
        update.after_state_read(i)
        return packed

    return state_dict
