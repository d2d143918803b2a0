"""``RowwiseUpdate``: one step for many runs of an optimizer whose update is
elementwise once a few numbers per run are known: reductions over the run's
parameters or over each of its tensors (AdaGrad-Norm's gradient norm, MoMo's
inner products and norms, MARS's clipping norms, Adafactor's factored second
moments and update norms) or numbers of its own (NAG-GS's gamma,
Schedule-Free's averaging weights).

The runs' per-element state is stacked like the parameters, (rows, D), and
updated for every run at once; each run's reductions are sums along its row
(or, for per-tensor state, along each tensor's segment of it); the per-run
numbers that follow from them (a step size, MoMo's truncated step) are
computed in Python with the run's own hyperparameters (its schedule's lr
this step, its weight decay) and applied as columns. What a run keeps in its
param group or in the optimizer's global state (AdaGrad-Norm's ``b_sq``,
MoMo's step and loss average) stays in the run's own optimizer and is updated
there, by the optimizer's own code where it has a method for it.

The numbers are the run's own optimizer's up to rounding: its per-tensor
sums are summed along a row here. The per-parameter state is copied into the
run's own optimizer, in its own format, whenever read (``sync``: resume
points, ``state_<k>.pt``), so the state files load into a run trained alone.

Runs share an update when their optimizers are of the same class with one
param group over the model's parameters in order, real parameters, equal
hyperparameters other than ``lr`` and ``weight_decay``, and the same progress
(state entries, step count); options that change the update's form
(``maximize``, a tensor ``lr``) make a run step its own instance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..optim import MARS, AdaGradNorm, Momo, MomoAdam, NAGGS, ScheduleFreeAdamW, ScheduleFreeSGD
from ..optim._base import adam_direction_into
from .stacked_update import RowsUpdate, _freeze, _rows

# keys of a param group that are per run (or state kept in the group), not hyperparameters
PER_RUN_KEYS = ("params", "lr", "initial_lr", "weight_decay", "foreach", "b_sq", "k", "weight_sum", "lr_max",
                "scheduled_lr", "train_mode", "lr_1d_factor")
_GLOBAL = "global"  # MoMo's model-level state key


def rowwise_update_key(run) -> Any:
    """Runs with equal keys can share a ``RowwiseUpdate``; None: not this path."""
    opt = run.optimizer
    if type(opt) not in ROWWISE:
        return None
    if len(opt.param_groups) != 1:
        return None
    group = opt.param_groups[0]
    if group.get("maximize") or isinstance(group["lr"], torch.Tensor):
        return None
    params = list(run.model.parameters())
    if list(group["params"]) != params or any(p.is_complex() for p in params):
        return None
    first = opt.state.get(params[0], {})
    steps = (float(first.get("step", 0)), opt.state.get(_GLOBAL, {}).get("step", 0), group.get("k", 0))
    progress = (tuple(sorted(first)), steps)
    shared = tuple(sorted((k, _freeze(v)) for k, v in group.items() if k not in PER_RUN_KEYS))
    return (type(opt), shared, progress)


@dataclass
class RowState:
    """The state of the rows that step, as ``RowwiseUpdate.step_rows`` sees it (see there)."""

    element: dict[str, torch.Tensor]
    tensor: dict[str, torch.Tensor]
    shaped: dict[tuple[str, str], torch.Tensor]
    scalar: dict[str, list[float]]


class RowwiseUpdate(RowsUpdate):
    """One step for the runs ``rows`` of ``runs`` (rows of ``stack``, equal
    ``rowwise_update_key``s); subclasses give the optimizer's step on rows.

    ``ELEMENT_KEYS``: per-parameter state shaped like the parameter, stacked
    (rows, D); ``TENSOR_KEYS``: per-parameter 0-dim state, stacked (rows, T)
    (T tensors); ``SHAPED_KEYS``: per-parameter state of its own shape, which some
    tensors may lack (Adafactor's factors), stacked per tensor (rows, *shape) under
    (key, name); ``SCALAR_KEYS``: per-parameter Python numbers, equal for every
    tensor of a run (one per row)."""

    ELEMENT_KEYS: tuple[str, ...] = ()
    TENSOR_KEYS: tuple[str, ...] = ()
    SHAPED_KEYS: tuple[str, ...] = ()
    SCALAR_KEYS: tuple[str, ...] = ()
    COUNT_KEYS: tuple[str, ...] = ()  # step counts: 0-dim tensors in the own state (``count_dtype``), one number per row here
    NEEDS_LOSS = False  # whether step_rows reads the runs' losses
    # whether the runs' own optimizers read their per-element state between steps
    # (Schedule-Free's eval()/train()): then it is views of the stacked state
    OWN_STATE_VIEWS = False

    def attach(self) -> None:
        flat = self.stack.flat
        self.lengths = torch.tensor([b - a for a, b in (self.stack.offsets[k] for k in self.names)], device=flat.device)
        self.tensor_of = torch.repeat_interleave(torch.arange(len(self.names), device=flat.device), self.lengths)
        self.element: dict[str, torch.Tensor] = {}
        self.tensor: dict[str, torch.Tensor] = {}
        self.shaped: dict[tuple[str, str], torch.Tensor] = {}
        self.scalar: dict[str, list[float]] = {}
        own = [self.runs[r].optimizer for r in self.rows]
        states = [[o.state.get(p, {}) for p in o.param_groups[0]["params"]] for o in own]
        first = states[0][0]
        unknown = set(first) - {*self.ELEMENT_KEYS, *self.TENSOR_KEYS, *self.SHAPED_KEYS, *self.SCALAR_KEYS, *self.COUNT_KEYS}
        if unknown:
            raise ValueError(f"{type(self).__name__}: {self.cls.__name__} state has keys {sorted(unknown)} it does not stack")
        if first:  # resumed or restored: the runs' own states, flattened into rows
            for key in (k for k in self.ELEMENT_KEYS if k in first):
                self.element[key] = torch.stack([torch.cat([s[key].reshape(-1) for s in run]) for run in states])
            for key in (k for k in self.TENSOR_KEYS if k in first):
                self.tensor[key] = torch.stack([torch.stack([s[key] for s in run]) for run in states]).to(flat.dtype)
            for t, name in enumerate(self.names):
                for key in (k for k in self.SHAPED_KEYS if k in states[0][t]):
                    self.shaped[key, name] = torch.stack([run[t][key] for run in states])
            for key in (k for k in (*self.SCALAR_KEYS, *self.COUNT_KEYS) if k in first):
                values = [{float(s[key]) if key in self.COUNT_KEYS else s[key] for s in run} for run in states]
                if any(len(v) != 1 for v in values):
                    raise ValueError(f"{self.cls.__name__}: {key!r} differs between a run's tensors; cannot step its rows")
                self.scalar[key] = [v.pop() for v in values]
        self.initialized = bool(self.element or self.tensor or self.shaped or self.scalar)
        self._own_state_read_through_sync()
        if self.initialized and self.OWN_STATE_VIEWS:
            self._link_views()

    def after_state_read(self, i: int) -> None:
        if self.OWN_STATE_VIEWS:  # sync left copies in the run's own state: views again
            self._link_views([i])

    def _link_views(self, rows: list[int] | None = None) -> None:
        """The runs' own per-element state: views of the stacked state, always current."""
        for i in range(len(self.rows)) if rows is None else rows:
            opt = self.runs[self.rows[i]].optimizer
            for name, p in zip(self.names, opt.param_groups[0]["params"]):
                opt.state[p] = {key: self.stack.row(v, i, name) for key, v in self.element.items()}

    def sync(self, i: int) -> None:
        """Copy row ``i``'s per-parameter state into run ``rows[i]``'s own optimizer."""
        if not self.initialized:
            return
        opt = self.runs[self.rows[i]].optimizer
        for t, (name, p) in enumerate(zip(self.names, opt.param_groups[0]["params"])):
            state = {key: self.stack.row(v, i, name).clone() for key, v in self.element.items()}
            state.update({key: v[i, t].clone() for key, v in self.tensor.items()})
            state.update({key: v[i].clone() for (key, n), v in self.shaped.items() if n == name})
            state.update({key: torch.tensor(float(v[i]), dtype=self.count_dtype()) if key in self.COUNT_KEYS else v[i]
                          for key, v in self.scalar.items()})
            opt.state[p] = state

    def count_dtype(self) -> torch.dtype:
        """The dtype of the own optimizer's step counts: torch.optim's scalar dtype
        (float64 under a float64 default dtype, else float32)."""
        return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32

    def per_tensor_sums(self, x: torch.Tensor) -> torch.Tensor:
        """(n, D) -> (n, T): the sum over each tensor's segment of each row."""
        return torch.segment_reduce(x, "sum", lengths=self.lengths.expand(x.shape[0], -1).contiguous(), axis=1)

    def step(self, active: list[int], losses: torch.Tensor, rngs: list[torch.Tensor], second_pass=None) -> None:
        on = self._on(active)
        if not any(on):
            return
        chosen = [i for i, o in enumerate(on) if o]
        everyone = len(chosen) == len(on)
        sub = None if everyone else torch.tensor(chosen, device=self.stack.flat.device)
        P = self.stack.flat
        p, g = self._rows_of(P.detach()), self._rows_of(P.grad)
        in_place = everyone and self.block is not None
        if not everyone:
            p, g = p[sub], g[sub]
        state = RowState(
            element={k: v if everyone else v[sub] for k, v in self.element.items()},
            tensor={k: v if everyone else v[sub] for k, v in self.tensor.items()},
            shaped={k: v if everyone else v[sub] for k, v in self.shaped.items()},
            scalar={k: [v[i] for i in chosen] for k, v in self.scalar.items()},
        )
        rows_losses = losses.detach()[[self.rows[i] for i in chosen]].tolist() if self.NEEDS_LOSS else []
        with torch.no_grad():
            self.step_rows(chosen, p, g, state, rows_losses)
        self.initialized, created = True, False
        for store, new in ((self.element, state.element), (self.tensor, state.tensor), (self.shaped, state.shaped)):
            for k, v in new.items():
                if everyone:
                    created |= store.get(k) is not v
                    store[k] = v
                    continue
                if k not in store:  # created by this step: rows that did not step have none yet
                    store[k], created = torch.zeros((len(on), *v.shape[1:]), dtype=v.dtype, device=v.device), True
                store[k][sub] = v
        if created and self.OWN_STATE_VIEWS:
            self._link_views()
        for k, v in state.scalar.items():
            values = self.scalar.setdefault(k, [0.0] * len(on))
            for i, x in zip(chosen, v):
                values[i] = x
        if not in_place:
            target = self.stack.flat.detach()
            rows = self.index if everyone else self.index[sub]
            target[rows] = p

    def step_rows(self, chosen: list[int], p: torch.Tensor, g: torch.Tensor, state: RowState, losses: list[float]) -> None:
        """The step for the rows ``chosen`` (indices into ``self.rows``): ``p`` (n, D) in
        place, ``state``'s tensors (n, ...) in place or, on the first step, filled."""
        raise NotImplementedError

    def groups(self, chosen: list[int]) -> list[dict[str, Any]]:
        return [self.runs[self.rows[i]].optimizer.param_groups[0] for i in chosen]

    def column(self, values: list[float], like: torch.Tensor) -> torch.Tensor:
        """Per-row values as a column broadcast against ``like`` (n, D)."""
        return _rows(self._column(values), like)


class NAGGSRows(RowwiseUpdate):
    """NAG-GS: v and x per element, gamma per run (``NAGGS.step``'s foreach arithmetic)."""

    ELEMENT_KEYS = ("v",)
    SCALAR_KEYS = ("gamma",)

    def step_rows(self, chosen, p, g, state, losses):
        groups = self.groups(chosen)
        alphas, mu = [grp["lr"] for grp in groups], groups[0]["mu"]
        a = [alpha / (1.0 + alpha) for alpha in alphas]
        if "v" not in state.element:
            state.element["v"] = p.clone()
            state.scalar["gamma"] = [(1.0 - ai) * grp["gamma"] + ai * mu for ai, grp in zip(a, groups)]
        gammas = state.scalar["gamma"]
        keep, pull, push = (list(c) for c in zip(*(NAGGS.coefficients(alpha, mu, gamma) for alpha, gamma in zip(alphas, gammas))))
        v = state.element["v"]
        v.mul_(self.column(keep, v)).add_(p * self.column(pull, p)).sub_(g * self.column(push, g))
        p.lerp_(v, self.column(a, p))
        state.scalar["gamma"] = [(1.0 - ai) * gamma + ai * mu for ai, gamma in zip(a, gammas)]


class AdaGradNormRows(RowwiseUpdate):
    """AdaGrad-Norm: the gradient norm per row; ``b_sq`` stays in each run's param group."""

    def step_rows(self, chosen, p, g, state, losses):
        norms = torch.linalg.vector_norm(g.double(), dim=1).tolist()
        steps = [-AdaGradNorm.step_size(group, norm) for group, norm in zip(self.groups(chosen), norms)]
        p.addcmul_(self.column(steps, p), g)


class MomoRows(RowwiseUpdate):
    """MoMo: d per element, <g, x> averages per tensor, the truncated step per run;
    each run's loss average and step in its own optimizer's global state."""

    ELEMENT_KEYS = ("grad_avg",)
    TENSOR_KEYS = ("grad_dot_w",)
    NEEDS_LOSS = True

    def _advance(self, chosen, losses, beta: float, average_first: bool) -> list[dict[str, Any]]:
        """Each run's global state, its step counted and its loss averaged in."""
        globs = []
        for i, f in zip(chosen, losses):
            glob = self.runs[self.rows[i]].optimizer._global_state()
            glob["step"] = k = glob["step"] + 1
            fresh = k == 1 and average_first
            glob["loss_avg"] = f if fresh else beta * glob["loss_avg"] + (1.0 - beta) * f
            globs.append(glob)
        return globs

    def _gamma(self, state, p, g, beta: float, fresh: bool) -> torch.Tensor:
        """Per tensor: <g, x> averaged into ``grad_dot_w``; per row: their sum."""
        new = self.per_tensor_sums(p * g)
        if fresh:
            state.tensor["grad_dot_w"] = new
        else:
            state.tensor["grad_dot_w"].mul_(beta).add_(new, alpha=1.0 - beta)
        return state.tensor["grad_dot_w"].sum(1)

    def _taus(self, chosen, globs, rho, lb, dot, gamma, norm) -> list[float]:
        values = zip(chosen, globs, dot.tolist(), gamma.tolist(), norm.tolist())
        return [self.runs[self.rows[i]].optimizer._adaptive_step(glob, self.groups([i])[0], rho, lb, d, c, n)
                for i, glob, d, c, n in values]

    def step_rows(self, chosen, p, g, state, losses):
        groups = self.groups(chosen)
        beta, lb, bias_correction = groups[0]["beta"], groups[0]["lb"], groups[0]["bias_correction"]
        globs = self._advance(chosen, losses, beta, average_first=not bias_correction)
        k = globs[0]["step"]
        fresh = k == 1 and not bias_correction  # the averages start at the first values
        rho = 1.0 - beta**k if bias_correction else 1.0
        if "grad_avg" not in state.element:
            state.element["grad_avg"] = torch.zeros_like(p)
            state.tensor["grad_dot_w"] = torch.zeros((p.shape[0], len(self.names)), dtype=p.dtype, device=p.device)
        gamma = self._gamma(state, p, g, beta, fresh)
        d = state.element["grad_avg"]
        if fresh:
            d.copy_(g)
        else:
            d.mul_(beta).add_(g, alpha=1.0 - beta)
        dot, norm = (p * d).sum(1), (d * d).sum(1)
        taus = self._taus(chosen, globs, rho, lb, dot, gamma, norm)
        p.addcmul_(self.column([-t for t in taus], p), d)
        if any(grp["weight_decay"] > 0 for grp in groups):
            p.div_(self.column([1.0 + grp["lr"] * grp["weight_decay"] for grp in groups], p))


class MomoAdamRows(MomoRows):
    """MoMo-Adam: Adam's moments per element (the fused Adam kernel, as the run's own
    optimizer uses), <g, x> averages per tensor, the truncated step per run."""

    ELEMENT_KEYS = ("grad_avg", "grad_avg_sq")

    def step_rows(self, chosen, p, g, state, losses):
        groups = self.groups(chosen)
        (beta1, beta2), lb, eps = groups[0]["betas"], groups[0]["lb"], groups[0]["eps"]
        globs = self._advance(chosen, losses, beta1, average_first=False)
        k = globs[0]["step"]
        bc1 = 1.0 - beta1**k
        if "grad_avg" not in state.element:
            state.element["grad_avg"], state.element["grad_avg_sq"] = torch.zeros_like(p), torch.zeros_like(p)
            state.tensor["grad_dot_w"] = torch.zeros((p.shape[0], len(self.names)), dtype=p.dtype, device=p.device)
        gamma = self._gamma(state, p, g, beta1, fresh=False)
        d, v = state.element["grad_avg"], state.element["grad_avg_sq"]
        u = adam_direction_into(self, [torch.empty_like(p)], [g], [d], [v], k, beta1, beta2, eps)[0]
        dot, norm = (p * d).sum(1), (u * d).sum(1).mul_(bc1)  # ||d||^2_{D^-1} = bc1 <u, d>
        taus = self._taus(chosen, globs, bc1, lb, dot, gamma, norm)
        decayed = any(grp["weight_decay"] > 0 for grp in groups)
        if decayed and not groups[0]["divide"]:
            p.mul_(self.column([1.0 - grp["weight_decay"] * grp["lr"] for grp in groups], p))
        p.addcmul_(self.column([-t * bc1 for t in taus], p), u)
        if decayed and groups[0]["divide"]:
            p.div_(self.column([1.0 + grp["lr"] * grp["weight_decay"] for grp in groups], p))


class ScheduleFreeRows(RowwiseUpdate):
    """Schedule-Free AdamW and SGD: z (and AdamW's v) per element; each run's lr_k and
    averaging weight from its own optimizer's schedule (its param group keeps k and the
    weight sums). The runs' own z are views of the stacked z, which their eval()/train()
    (evaluation, checkpoints) read."""

    ELEMENT_KEYS = ("z", "exp_avg_sq")  # SGD: z only
    OWN_STATE_VIEWS = True

    def step_rows(self, chosen, p, g, state, losses):
        own = [self.runs[self.rows[i]].optimizer for i in chosen]
        for o in own:  # as their own step(): refused in eval mode
            o._check_train_mode()
        groups = [o.param_groups[0] for o in own]
        adamw = isinstance(own[0], ScheduleFreeAdamW)
        if adamw:
            beta, beta2 = groups[0]["betas"]
            bias_correction2 = 1.0 - beta2 ** (groups[0]["k"] + 1)
            paper = groups[0]["bias_correction"] == "paper"
            bias = bias_correction2**0.5 if paper else 1.0
        else:
            beta, bias = groups[0]["momentum"], 1.0
        lrs, ckp1s = zip(*(o._schedule(grp, bias) for o, grp in zip(own, groups)))
        if "z" not in state.element:
            state.element["z"] = p.clone()
            if adamw:
                state.element["exp_avg_sq"] = torch.zeros_like(p)
        z = state.element["z"]
        if adamw:
            v = state.element["exp_avg_sq"]
            v.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
            denom = v.sqrt() if paper else v.div(bias_correction2).sqrt_()
            u = g / denom.add_(groups[0]["eps"])
        else:
            u = g
        decays = [grp["weight_decay"] for grp in groups]
        if any(decays):  # taken at y: AdamW's decoupled into z's step, SGD's coupled into the gradient
            u = u + self.column(decays, p) * p
        p.lerp_(z, self.column(list(ckp1s), p))
        p.addcmul_(self.column([lr * (beta * (1.0 - c) - 1.0) for lr, c in zip(lrs, ckp1s)], p), u)
        z.addcmul_(self.column([-lr for lr in lrs], z), u)


class MARSRows(RowwiseUpdate):
    """MARS: the moments and the previous gradient per element; the clipping norm per
    tensor; per element, MARS (its betas, the run's lr and weight decay) or, on the
    tensors MARS leaves to AdamW, AdamW (``betas_1d``, lr * the run's ``lr_1d_factor``,
    ``weight_decay_1d``)."""

    ELEMENT_KEYS = ("exp_avg", "exp_avg_sq", "last_grad")
    COUNT_KEYS = ("step",)

    def count_dtype(self) -> torch.dtype:
        return torch.float32  # MultiTensorOptimizer's step counts

    def attach(self) -> None:
        super().attach()
        group = self.groups([0])[0]
        like = self.stack.flat
        uses_mars = [group["optimize_1d"] or len(self.stack.shapes[n]) >= 2 for n in self.names]
        self.mars = torch.tensor(uses_mars, device=like.device)[self.tensor_of]  # (D,) which elements MARS updates
        (b1, b2), (b1_1d, b2_1d) = group["betas"], group["betas_1d"]
        self.beta1 = torch.where(self.mars, b1, b1_1d).to(like.dtype)
        self.beta2 = torch.where(self.mars, b2, b2_1d).to(like.dtype)

    def _per_kind(self, mars: list[float], adamw: list[float], like: torch.Tensor) -> torch.Tensor:
        """Per row and element: ``mars[i]`` on MARS's elements, ``adamw[i]`` on AdamW's."""
        return torch.where(self.mars, self.column(mars, like), self.column(adamw, like))

    def step_rows(self, chosen, p, g, state, losses):
        groups = self.groups(chosen)
        group = groups[0]
        if "exp_avg" not in state.element:
            for key in self.ELEMENT_KEYS:
                state.element[key] = torch.zeros_like(p)
            state.scalar["step"] = [0] * len(chosen)
        state.scalar["step"] = [t + 1 for t in state.scalar["step"]]
        t = state.scalar["step"][0]
        m, v, last = state.element["exp_avg"], state.element["exp_avg_sq"], state.element["last_grad"]
        k = group["gamma"] * group["betas"][0] / (1 - group["betas"][0])
        c = torch.lerp(last, g, 1 + k)  # g + k (g - g_prev), clipped to norm 1 per tensor
        c.div_(self.per_tensor_sums(c * c).sqrt_().clamp_min_(1.0)[:, self.tensor_of])
        x = torch.where(self.mars, c, g)
        m.lerp_(x, 1 - self.beta1)
        lrs = [grp["lr"] for grp in groups]
        lr = self._per_kind(lrs, [a * grp["lr_1d_factor"] for a, grp in zip(lrs, groups)], p)
        decay = self._per_kind([grp["weight_decay"] for grp in groups], [group["weight_decay_1d"]] * len(groups), p)
        p.mul_(1 - lr * decay)
        v.mul_(self.beta2).addcmul_(x, x * (1 - self.beta2))
        denom = (v.sqrt() / (1 - self.beta2**t).sqrt()).add_(group["eps"])
        u = m / (1 - self.beta1**t) / denom
        if group["mars_type"] == "lion":
            u = torch.where(self.mars, m.sign(), u)
        p.sub_(lr * u)
        last.copy_(g)


class AdafactorRows(RowwiseUpdate):
    """torch's Adafactor: per tensor, one step for every row at once (its factored
    second moments (rows, *factor shape), its norms per row); each run's lr and
    weight decay per row. Its per-tensor ``.item()`` calls become row-wise tensors."""

    SHAPED_KEYS = ("row_var", "col_var", "variance")
    COUNT_KEYS = ("step",)

    def step_rows(self, chosen, p, g, state, losses):
        groups = self.groups(chosen)
        group = groups[0]
        (eps1, eps2), d, n = group["eps"], group["d"], len(chosen)
        eps1 = torch.finfo(p.dtype).eps if eps1 is None else eps1
        if not state.shaped:
            for name in self.names:
                shape = self.stack.shapes[name]
                if len(shape) > 1:
                    state.shaped["row_var", name] = p.new_zeros((n, *shape[:-1], 1))
                    state.shaped["col_var", name] = p.new_zeros((n, *shape[:-2], 1, shape[-1]))
                else:
                    state.shaped["variance", name] = p.new_zeros((n, *shape))
            state.scalar["step"] = [0] * n
        state.scalar["step"] = [t + 1 for t in state.scalar["step"]]
        t = state.scalar["step"][0]
        one_minus_beta2 = t ** group["beta2_decay"]
        rho = self._column([min(grp["lr"], 1 / t**0.5) for grp in groups])
        decays = [grp["weight_decay"] for grp in groups]
        for name in self.names:
            start, end = self.stack.offsets[name]
            shape = self.stack.shapes[name]
            pt, gt = p[:, start:end].view(n, *shape), g[:, start:end].view(n, *shape)
            size = (end - start) ** 0.5
            alpha = (torch.linalg.vector_norm(pt.reshape(n, -1), dim=1) / size).clamp_(min=eps2).mul_(rho)
            if any(decays):
                pt.mul_(_rows(self._column([1 - grp["lr"] * w for grp, w in zip(groups, decays)]), pt))
            if len(shape) > 1:
                row_var, col_var = state.shaped["row_var", name], state.shaped["col_var", name]
                row_var.lerp_(torch.linalg.vector_norm(gt, dim=-1, keepdim=True).square_().div_(shape[-1]), one_minus_beta2)
                col_var.lerp_(torch.linalg.vector_norm(gt, dim=-2, keepdim=True).square_().div_(shape[-2]), one_minus_beta2)
                estimate = (row_var @ col_var).div_(row_var.mean(dim=-2, keepdim=True).clamp_(min=eps1))
            else:
                variance = state.shaped["variance", name]
                variance.lerp_(gt * gt, one_minus_beta2)
                estimate = variance.clone()
            update = estimate.clamp_(min=eps1 * eps1).rsqrt_().mul_(gt)
            denom = (torch.linalg.vector_norm(update.reshape(n, -1), dim=1) / (size * d)).clamp_(min=1.0)
            pt.sub_(update.mul_(_rows(alpha / denom, update)))


ROWWISE = {NAGGS: NAGGSRows, AdaGradNorm: AdaGradNormRows, Momo: MomoRows, MomoAdam: MomoAdamRows,
           ScheduleFreeAdamW: ScheduleFreeRows, ScheduleFreeSGD: ScheduleFreeRows, MARS: MARSRows,
           torch.optim.Adafactor: AdafactorRows}

