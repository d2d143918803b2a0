"""The averagers. Each sees the model after every step (``observe``, also at
the run's start step), offers modules to evaluate (``eval_modules``), its final
weights (``final``) and a state for resume points.

SWA and the EMAs are ``torch.optim.swa_utils.AveragedModel``s (SWA's learning
rate: ``SWALR``; its BatchNorm statistics: ``update_bn``). Integer buffers
(BatchNorm's ``num_batches_tracked``) are carried from the model, never
averaged as floats: ``AveragedModel(use_buffers=True)`` would pass them to the
averaging function, whose integer path truncates.

``Averaged`` updates an ``AveragedModel`` through its own ``multi_avg_fn`` on
tensor lists grouped once: ``update_parameters`` regroups, detaches and moves
every tensor on every call; on the MNIST-1D MLP that Python work cost more
than the 5% of a step the issue allows (benchmarks/averaging_overhead.py).
The first update, which copies, is ``update_parameters`` itself, and the
averaging function gets the same arguments, so the numbers are its, bit for bit.
"""

from __future__ import annotations

import copy
from collections import deque
from typing import Any, Callable

import torch
from torch.optim.swa_utils import SWALR, AveragedModel, get_ema_multi_avg_fn, get_swa_multi_avg_fn, update_bn

from .config import scaled_decay
from .power_ema import FORMAT as POSTHOC_FORMAT
from .power_ema import power_beta, sigma_rel_to_gamma

Weights = dict[str, torch.Tensor]


def floats_averaged_integers_carried(average: Callable) -> Callable:
    """A ``multi_avg_fn`` for ``AveragedModel``: ``average`` on floating tensors;
    integer ones (grouped apart by dtype) take the model's value."""

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n_averaged: int | torch.Tensor) -> None:
        if averaged[0].is_floating_point() or averaged[0].is_complex():
            average(averaged, current, n_averaged)
        else:
            torch._foreach_copy_(averaged, current)

    return update


class Averaged:
    """An ``AveragedModel`` of ``model`` (``.average``; its state is the state
    saved) updated by ``update()``: parameters, and buffers when ``use_buffers``
    (else the model's buffers are copied, as ``AveragedModel`` does)."""

    def __init__(self, model: torch.nn.Module, multi_avg_fn: Callable, use_buffers: bool):
        self.model, self.multi_avg_fn = model, multi_avg_fn
        self.average = AveragedModel(model, multi_avg_fn=multi_avg_fn, use_buffers=use_buffers)
        own, theirs = list(self.average.module.parameters()), list(model.parameters())
        if use_buffers:
            own, theirs = own + list(self.average.module.buffers()), theirs + list(model.buffers())
            self.copied: tuple[list, list] = ([], [])
        else:
            self.copied = ([b.detach() for b in self.average.module.buffers()], list(model.buffers()))
        if len(own) != len(theirs):
            raise ValueError(f"averaged model has {len(own)} tensors, the model {len(theirs)}")
        # The model's tensors are kept as objects and detached at each update: their
        # storage may move (batched runs: ``ModelStack`` makes them rows of a stack).
        groups: dict[tuple, tuple[list, list]] = {}
        for a, b in zip(own, theirs):
            pair = groups.setdefault((a.device, a.dtype), ([], []))
            pair[0].append(a.detach())
            pair[1].append(b)
        self.groups = list(groups.values())
        self.n = 0  # updates so far (the AveragedModel's n_averaged, as an int)

    def update(self) -> None:
        if self.n == 0:
            self.average.update_parameters(self.model)
        else:
            for own, theirs in self.groups:  # the count as update_parameters passes it
                self.multi_avg_fn(own, [t.detach() for t in theirs], self.average.n_averaged)
            if self.copied[0]:
                torch._foreach_copy_(self.copied[0], [b.detach() for b in self.copied[1]])
            self.average.n_averaged += 1
        self.n += 1

    @property
    def module(self) -> torch.nn.Module:
        return self.average.module

    def state_dict(self) -> Weights:
        return _clone(self.average.state_dict())

    def load_state_dict(self, state: Weights) -> None:
        self.average.load_state_dict(state)
        self.n = int(self.average.n_averaged)


def power_function_average(gamma: float) -> Callable:
    """EDM2's power-function EMA step; ``n_averaged`` updates came before this one."""

    @torch.no_grad()
    def average(averaged: list[torch.Tensor], current: list[torch.Tensor], n_averaged: int | torch.Tensor) -> None:
        torch._foreach_lerp_(averaged, current, 1.0 - power_beta(float(n_averaged) + 1.0, gamma))

    return average


def _clone(weights: dict[str, torch.Tensor]) -> Weights:
    return {k: v.detach().clone() for k, v in weights.items()}


class EMA:
    """theta_e <- rho theta_e + (1 - rho) theta after every step, from the start
    step's weights; rho scaled to the batch size when ``scale_with_batch`` is given.
    Floating buffers (BatchNorm statistics) are averaged like the parameters."""

    def __init__(self, cfg: dict[str, Any], model: torch.nn.Module, batch_size: int, **_: Any):
        self.name = cfg["name"]
        self.decay = scaled_decay(cfg["decay"], cfg["scale_with_batch"], batch_size)
        self.average = Averaged(model, floats_averaged_integers_carried(get_ema_multi_avg_fn(self.decay)), use_buffers=True)

    def observe(self, step: int, model: torch.nn.Module, epoch_end: bool) -> None:
        self.average.update()

    def eval_modules(self) -> list[tuple[str, torch.nn.Module]]:
        return [(self.name, self.average.module)] if self.average.n else []

    def final(self) -> Any:
        return _clone(self.average.module.state_dict())

    def state_dict(self) -> dict[str, Any]:
        return {"average": self.average.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.average.load_state_dict(state["average"])


class SwitchEMA(EMA):
    """Switch EMA (Li et al. 2024): an EMA whose weights (parameters and buffers)
    are copied into the model at each epoch's end; the optimizer state is kept."""

    def observe(self, step: int, model: torch.nn.Module, epoch_end: bool) -> None:
        super().observe(step, model, epoch_end)
        if epoch_end:
            with torch.no_grad():
                for own, averaged in zip(model.state_dict().values(), self.average.module.state_dict().values()):
                    own.copy_(averaged)


class SWA:
    """SWA (Izmailov et al. 2018): the equal-weight mean of the models at steps
    start, start + every, ...; BatchNorm statistics recomputed on the training
    data (in order, in minibatches of the run's size) before the weights are
    evaluated or saved. From ``start`` on, the learning rate is SWA's when ``lr``
    is given: ``SWALR`` (constant, after ``anneal_steps``), or cyclic, linear from
    ``lr_max`` to ``lr`` within each cycle of ``every`` steps, the models averaged
    at the cycles' ends."""

    def __init__(self, cfg: dict[str, Any], model: torch.nn.Module, batch_size: int, optimizer: torch.optim.Optimizer,
                 x_train: torch.Tensor, **_: Any):
        self.name, self.start, self.every = cfg["name"], cfg["start"], cfg["every"]
        self.cfg, self.optimizer = cfg, optimizer
        # The equal-weight mean as a lerp on every device: with no averaging function
        # AveragedModel takes it only where foreach kernels run, and on CPU computes
        # avg + (theta - avg) / (n + 1) tensor by tensor (3x the time here; other
        # rounding, within 1e-6). Buffers copied; update_bn recomputes BatchNorm's.
        self.average = Averaged(model, get_swa_multi_avg_fn(), use_buffers=False)
        self.scratch = copy.deepcopy(model)
        self.bn_batches = x_train.split(batch_size)
        self.scheduler: SWALR | None = None
        self.lr_step = -1  # the step whose next lr the scheduler last set (it stops at the anneal's end)
        self.group_lrs: list[float] = []

    def observe(self, step: int, model: torch.nn.Module, epoch_end: bool) -> None:
        if step >= self.start and (step - self.start) % self.every == 0:
            self.average.update()

    def _evaluable(self) -> torch.nn.Module:
        self.scratch.load_state_dict(self.average.module.state_dict())
        update_bn(self.bn_batches, self.scratch)
        return self.scratch

    def eval_modules(self) -> list[tuple[str, torch.nn.Module]]:
        return [(self.name, self._evaluable())] if self.average.n else []

    def final(self) -> Any:
        return _clone(self._evaluable().state_dict()) if self.average.n else None

    def set_lr(self, at_step: int) -> bool:
        """Set the lr of the step after ``at_step``; False before ``start`` or without an SWA lr."""
        lr, groups = self.cfg["lr"], self.optimizer.param_groups
        if lr is None or at_step < self.start:
            return False
        if self.cfg["schedule"] == "cyclic":
            t = ((at_step - self.start) % self.every + 1) / self.every
            for group in groups:
                group["lr"] = (1 - t) * self.cfg["lr_max"] + t * lr
            return True
        if self.scheduler is None:  # at ``start``: SWALR anneals from the run's lr there
            self.scheduler = self._swalr()
            self.lr_step = at_step
        else:
            # The run's schedule has just written its lr; SWALR goes on from the lrs it set.
            for group, value in zip(groups, self.group_lrs):
                group["lr"] = value
            # After anneal_steps steps SWALR's lr is swa_lr exactly (alpha = 1): stepping
            # it further changes nothing but its counter, and costs a step's 2%.
            while self.lr_step < min(at_step, self.start + self.cfg["anneal_steps"]):
                self.scheduler.step()
                self.lr_step += 1
        self.group_lrs = [group["lr"] for group in groups]
        return True

    def _swalr(self) -> SWALR:
        return SWALR(self.optimizer, swa_lr=self.cfg["lr"], anneal_epochs=self.cfg["anneal_steps"],
                     anneal_strategy=self.cfg["anneal"])

    def state_dict(self) -> dict[str, Any]:
        scheduler = None if self.scheduler is None else self.scheduler.state_dict()
        return {"average": self.average.state_dict(), "scheduler": scheduler,
                "lr_step": self.lr_step, "group_lrs": list(self.group_lrs)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.average.load_state_dict(state["average"])
        if state["scheduler"] is not None:
            # Its first step writes the groups' lr; ``set_lr`` at the resumed step puts back ``group_lrs``.
            self.scheduler = self._swalr()
            self.scheduler.load_state_dict(state["scheduler"])
        self.lr_step, self.group_lrs = state["lr_step"], list(state["group_lrs"])


class LAWA:
    """LAWA (Kaddour 2022): the mean of the latest ``k`` models taken at steps
    every, 2*every, ... (fewer while fewer were taken); integer buffers are the latest's."""

    def __init__(self, cfg: dict[str, Any], model: torch.nn.Module, **_: Any):
        self.name, self.k, self.every = cfg["name"], cfg["k"], cfg["every"]
        self.taken: deque[Weights] = deque(maxlen=self.k)
        self.scratch = copy.deepcopy(model)

    def observe(self, step: int, model: torch.nn.Module, epoch_end: bool) -> None:
        if step > 0 and step % self.every == 0:
            self.taken.append(_clone(model.state_dict()))

    def mean(self) -> Weights:
        latest = self.taken[-1]
        return {
            key: torch.stack([w[key] for w in self.taken]).mean(0) if value.is_floating_point() else value.clone()
            for key, value in latest.items()
        }

    def eval_modules(self) -> list[tuple[str, torch.nn.Module]]:
        if not self.taken:
            return []
        self.scratch.load_state_dict(self.mean())
        return [(self.name, self.scratch)]

    def final(self) -> Any:
        return self.mean() if self.taken else None

    def state_dict(self) -> dict[str, Any]:
        return {"taken": [_clone(w) for w in self.taken]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.taken = deque((_clone(w) for w in state["taken"]), maxlen=self.k)


class PosthocEMA:
    """Power-function EMA profiles of the given ``sigma_rels`` (EDM2), updated
    every step from the start step, with snapshots of all of them at the steps
    that are multiples of ``snapshot_every`` and at the last step. The final file
    holds the snapshots; ``reconstruct_posthoc_ema`` turns them into the EMA of
    any sigma_rel. The profiles themselves are evaluated as ``<name>_<sigma_rel>``."""

    def __init__(self, cfg: dict[str, Any], model: torch.nn.Module, **_: Any):
        self.name, self.every = cfg["name"], cfg["snapshot_every"]
        self.sigma_rels = [float(s) for s in cfg["sigma_rels"]]
        self.gammas = [sigma_rel_to_gamma(s) for s in self.sigma_rels]
        self.profiles = [
            Averaged(model, floats_averaged_integers_carried(power_function_average(g)), use_buffers=True) for g in self.gammas
        ]
        self.snapshots: list[dict[str, Any]] = []
        self.step = -1

    def observe(self, step: int, model: torch.nn.Module, epoch_end: bool) -> None:
        for profile in self.profiles:
            profile.update()
        self.step = step
        if step > 0 and step % self.every == 0:
            self._snapshot()

    def _snapshot(self) -> None:
        t = self.profiles[0].n
        for sigma, gamma, profile in zip(self.sigma_rels, self.gammas, self.profiles):
            self.snapshots.append({"step": self.step, "t": t, "sigma_rel": sigma, "gamma": gamma,
                                   "weights": _clone(profile.module.state_dict())})

    def eval_modules(self) -> list[tuple[str, torch.nn.Module]]:
        if not self.profiles[0].n:
            return []
        return [(f"{self.name}_{sigma:g}", profile.module) for sigma, profile in zip(self.sigma_rels, self.profiles)]

    def final(self) -> Any:
        if not self.profiles[0].n:
            return None
        if not self.snapshots or self.snapshots[-1]["step"] != self.step:
            self._snapshot()
        return {"format": POSTHOC_FORMAT, "sigma_rels": self.sigma_rels, "gammas": self.gammas,
                "snapshots": self.snapshots}

    def state_dict(self) -> dict[str, Any]:
        return {"profiles": [p.state_dict() for p in self.profiles], "step": self.step,
                "snapshots": [{**s, "weights": _clone(s["weights"])} for s in self.snapshots]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for profile, saved in zip(self.profiles, state["profiles"]):
            profile.load_state_dict(saved)
        self.step = state["step"]
        self.snapshots = [{**s, "weights": _clone(s["weights"])} for s in state["snapshots"]]


AVERAGERS: dict[str, type] = {"swa": SWA, "ema": EMA, "switch_ema": SwitchEMA, "lawa": LAWA, "posthoc_ema": PosthocEMA}
