"""Batched training: a job's compatible runs trained as one computation.

``train_job`` is what a training job calls: it sorts its runs into batches of
compatible runs (``batch_key``: same data, architecture, batch size,
device and length), cuts a batch larger than its device's ``max_stack`` into even
parts, and trains each with ``train_batched``; a run that cannot be
batched (``why_not_batched``) or that has no partner trains alone with
``train_run``, in the same job. ``batched=False`` trains every run alone.

``train_batched`` keeps every run a run: each has its own ``Training`` (model,
optimizer, sampler, loss, schedule, instruments, metric rows), built, resumed
or started from its parent exactly as ``train_run`` does, and writes the same
files. What is shared is the forward and backward pass (``ModelStack``: the
runs' parameters stacked, one batched pass), and, for optimizers whose update is
elementwise and linear in the learning rate, the update itself
(``stacked_update``); for those with per-tensor reductions whose update is
linear in the learning rate (AdamP, SGDP, Shampoo, MuonAdamW), one instance
that steps every run's tensors, each reduced on its own (``shared_update``);
for those whose step needs reductions over a run's parameters or numbers of
its own (AdaGrad-Norm, MoMo, MoMo-Adam, NAG-GS, Schedule-Free, MARS,
Adafactor), one step on every run's rows with the reductions per row
(``rowwise_update``). Any other optimizer (or one of these with options
outside those forms) steps each run's own instance on its own parameters and
gradient (rows of the stacked tensors). The global
torch RNG is swapped per run around everything a run does on its own, so
instruments and optimizers that draw from it see the stream they would alone.

Per step, the per-run Python is kept small: one index tensor gathers every
run's minibatch, the forward is written out for the registry's layers
(``direct_forward``) and its GPT (``direct_gpt``; vmap for other models), the evaluations due at a step
are one batched forward per split (``batched_eval``), and a run's RNG stream
is swapped in only around what may draw from or save it (its instruments and
``RunProgress.after_step``).

A run whose loss stops being finite is recorded diverged at the step
``train_run`` would record it and leaves the computation (masked: its weights
and BatchNorm statistics no longer change); a finished run likewise. A run's
``train_seconds`` is its share (1/R) of the batch's wall time.

SAM and ASAM, whose step needs a second gradient at a perturbed point, get a
batched closure: a second batched pass (``sam_update``); their runs batch
only with each other. AdaHessian, which backpropagates through the gradient,
gets one too: the batched pass keeps its graph and one double backward gives
every run its Hessian-vector product (``hessian_update``); its runs batch only
with each other. Weight averagers (``averaging``) observe and evaluate each run's own model,
whose tensors are its rows of the stack. Not batched (trained alone, see
``why_not_batched``): losses that read the model's parameters
(``norm_loss``), subspace runs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch

from ..data import SplitData
from ..losses import LOSSES
from ..optim import OPTIMIZERS
from ..spec import canonical, validate
from .loop import Interrupted, OpenRun, RunProgress, RunResult, open_run, train_run
from .allocator import keep_freed_memory
from .batched_eval import BatchedEvaluation, evaluates_at
from .stack import ModelStack
from .sam_update import SharpnessAwareUpdate, is_sharpness_aware
from .hessian_update import HessianUpdate, needs_hessian
from .rowwise_update import ROWWISE, rowwise_update_key
from .shared_update import SharedInstanceUpdate, shared_update_key
from .stacked_update import StackedUpdate, stacked_update_key

__all__ = ["batch_key", "max_stack", "split_evenly", "train_batched", "train_job", "why_not_batched"]

log = logging.getLogger(__name__)

# Optimizers that backpropagate through the gradient and have a batched closure
# (``hessian_update``); any other optimizer asking for the gradient's graph
# (``create_graph``) trains alone.
HESSIAN_OPTIMIZERS = frozenset({"adahessian"})
SHARPNESS_AWARE = frozenset({"sam", "asam"})  # two batched passes a step (``sam_update``)
MODEL_LOSSES = frozenset({"norm_loss"})  # losses that read the model's parameters


def why_not_batched(spec: dict[str, Any]) -> str | None:
    """Why this run must train alone, or None when it can be batched."""
    spec = canonical(spec)
    name = spec["optimizer"]["name"]
    builder = OPTIMIZERS.get(name)
    if name not in HESSIAN_OPTIMIZERS and getattr(builder, "create_graph", False):
        return f"optimizer {name!r} needs its own closure (it backpropagates through the gradient)"
    if _loss_names(spec["loss"]) & MODEL_LOSSES:
        return f"loss {spec['loss']['name']!r} reads the model's parameters"
    if spec["subspace"] is not None:
        return "subspace runs are not batched"
    return None


# On a CPU, past 32 runs a stack gains nothing measurable per run-step (the
# MNIST-1D MLP 0.085 ms at 32 runs, 0.080 at 48-128; the digits CNN 1.7 ms from
# 16 to 128 runs, 3.0 alone: benchmarks/results/stack_size.md) while it holds
# every run's activations and sampler at once (a GPT's window indices: 17 MB a
# run). Larger batches of a job train as several stacks, one after another. On
# a GPU no cap was measured, so none is set.
CPU_MAX_STACK = 32


def max_stack(device: Any) -> int | None:
    """The most runs one stack holds on ``device`` (None: no limit)."""
    return CPU_MAX_STACK if torch.device(device).type == "cpu" else None


def split_evenly(members: list[int], most: int | None) -> list[list[int]]:
    """``members`` in order, cut into the fewest consecutive parts of at most ``most``,
    their sizes differing by at most one."""
    if most is None or len(members) <= most:
        return [members]
    parts = -(-len(members) // most)
    size, extra = divmod(len(members), parts)
    out, start = [], 0
    for i in range(parts):
        end = start + size + (i < extra)
        out.append(members[start:end])
        start = end
    return out


def _loss_names(loss: Any) -> set[str]:
    """Names of the loss and of the losses nested in it (wrappers take a base loss)."""
    names = set()
    if isinstance(loss, dict):
        if isinstance(loss.get("name"), str) and loss["name"] in LOSSES:
            names.add(loss["name"])
        for value in loss.values():
            names |= _loss_names(value)
    return names


def batch_key(spec: dict[str, Any], data_key: Any, device: Any) -> tuple:
    """Runs with equal keys share one ``ModelStack``.

    Runs of different lengths could share one too, but a finished run's row is
    computed (and discarded) until the stack's last run ends: a stack of
    lengths 1x, 2x and 4x does 12 units of work for 7. So runs of one length
    stack together."""
    spec = canonical(spec)
    sharpness_aware = spec["optimizer"]["name"] in SHARPNESS_AWARE  # their second pass is the whole stack's
    hessian = spec["optimizer"]["name"] in HESSIAN_OPTIMIZERS  # their graph is the whole stack's
    return (data_key, repr(spec["model"]), spec["batch_size"], str(device), sharpness_aware, hessian, spec["steps"])


@contextlib.contextmanager
def _rng_of(states: list[torch.Tensor], r: int) -> Iterator[None]:
    """Run ``r``'s global torch RNG stream in place for what it does on its own."""
    torch.set_rng_state(states[r])
    try:
        yield
    finally:
        states[r] = torch.get_rng_state()


def train_batched(
    specs: Sequence[dict[str, Any]],
    data: SplitData,
    out_dirs: Sequence[str | os.PathLike],
    *,
    device: str | torch.device = "cpu",
    progress: bool | None = None,
    stop_at: int | None = None,
    runs_dir: str | os.PathLike | None = None,
    stacked_updates: bool = True,
) -> list[RunResult]:
    """Train runs of one architecture and batch size on ``data`` as one
    batched computation (see the module docstring); the files and numbers of
    each run are those of ``train_run`` (to rounding). ``stop_at`` as in
    ``train_run``: after every run has written its resume point at the first
    such step, ``Interrupted`` is raised. ``stacked_updates=False`` steps every
    run's own optimizer (the exact path every optimizer takes; for tests).
    """
    if len(specs) != len(out_dirs):
        raise ValueError(f"{len(specs)} specs but {len(out_dirs)} output directories")
    for spec in specs:
        reason = why_not_batched(validate(spec))
        if reason is not None:
            raise ValueError(f"train_batched: run {spec} cannot be batched: {reason}")
    if len({validate(spec)["optimizer"]["name"] in SHARPNESS_AWARE for spec in specs}) > 1:
        raise ValueError("train_batched: SAM/ASAM runs batch only with SAM/ASAM runs (their second pass is the whole stack's)")
    if len({validate(spec)["optimizer"]["name"] in HESSIAN_OPTIMIZERS for spec in specs}) > 1:
        raise ValueError("train_batched: AdaHessian runs batch only with AdaHessian runs (the gradient's graph is the whole stack's)")
    keep_freed_memory()  # a stack's activations are R times a run's: reuse them, do not fault them in each step
    results: dict[int, RunResult] = {}
    opened: list[tuple[int, OpenRun]] = []
    rngs: list[torch.Tensor] = []
    for i, (spec, out) in enumerate(zip(specs, out_dirs)):
        o = open_run(spec, data, out, device=device, runs_dir=runs_dir)
        if isinstance(o, RunResult):
            results[i] = o
        else:
            opened.append((i, o))
            rngs.append(torch.get_rng_state())
    if opened:
        started = time.perf_counter()
        _train_opened([o for _, o in opened], rngs, progress, stop_at, stacked_updates)
        share = (time.perf_counter() - started) / len(opened)
        for r, (i, o) in enumerate(opened):
            with _rng_of(rngs, r):
                results[i] = o.finish(o.start_seconds + share)
    return [results[i] for i in range(len(specs))]


def _train_opened(
    opened: list[OpenRun], rngs: list[torch.Tensor], progress: bool | None, stop_at: int | None, stacked_updates: bool,
) -> None:
    runs = [o.run for o in opened]
    loss_specs = {repr(canonical(run.spec)["loss"]) for run in runs}
    stack = ModelStack(runs, runs[0].loss_fn if len(loss_specs) == 1 else None)
    updates = _update_groups(runs, stack, stacked_updates)
    create_graph = any(isinstance(update, HessianUpdate) for update in updates)
    for update in updates:
        update.attach()
    trackers = []
    for r, o in enumerate(opened):
        with _rng_of(rngs, r):
            trackers.append(RunProgress(o, progress, stop_at))
    evaluation = BatchedEvaluation(stack, runs)
    evaluation.attach()
    full_batch = runs[0].sampler.full_batch
    x, y = runs[0].x["train"], runs[0].y["train"]
    placeholder = None
    try:
        while True:
            active = [r for r, t in enumerate(trackers) if t.active]
            if not active:
                break
            is_active = set(active)
            inactive = [r for r in range(len(runs)) if r not in is_active]
            # Each run draws its own minibatch from its own sampler (the indices
            # only: the batch is gathered for all runs at once).
            if full_batch:
                for r in active:
                    runs[r].sampler.next()
                xb, yb = x, y
            else:
                if inactive and placeholder is None:
                    placeholder = rows_placeholder(runs[0])
                idx = torch.stack([run.sampler.next() if r in is_active else placeholder for r, run in enumerate(runs)])
                xb, yb = x[idx], y[idx]
            losses = stack.loss_and_grads(xb, yb, batched_x=not full_batch, inactive=inactive, create_graph=create_graph)

            def second_pass(stepping: list[int]) -> torch.Tensor:
                chosen = set(stepping)
                others = [r for r in range(len(runs)) if r not in chosen]
                return stack.loss_and_grads(xb, yb, batched_x=not full_batch, inactive=others)

            for update in updates:
                update.step(active, losses, rngs, second_pass)
            for r in active:
                if runs[r].instruments:  # they may draw from the run's RNG stream
                    with _rng_of(rngs, r):
                        runs[r].record_step(losses[r])
                else:
                    runs[r].record_step(losses[r])
            # every evaluation of this step in one batched pass, before the runs' after_step
            evaluation.prepare([r for r in active if evaluates_at(runs[r], runs[r].step)])
            stopped = None
            for r in active:
                with _rng_of(rngs, r):
                    try:
                        trackers[r].after_step()
                    except Interrupted as err:
                        stopped = err
            if stopped is not None:
                raise stopped
    finally:
        evaluation.detach()
        for update in updates:
            update.detach()
        for tracker in trackers:
            tracker.close()


def rows_placeholder(run) -> torch.Tensor:
    """Minibatch indices for a run that no longer trains (its row is computed and discarded)."""
    return torch.zeros(run.sampler.batch_size, dtype=run.sampler.dtype, device=run.x["train"].device)


class PerRunUpdate:
    """Each run's own optimizer steps its own parameters (rows of the stack), given
    a closure that returns its batched loss: exact for every single-closure optimizer."""

    def __init__(self, rows: list[int], runs: list):
        self.rows, self.runs = rows, runs

    def attach(self) -> None:
        pass

    def detach(self) -> None:
        pass

    def step(self, active: list[int], losses: torch.Tensor, rngs: list[torch.Tensor], second_pass=None) -> None:
        wanted = set(active)
        for r in self.rows:
            if r in wanted:
                loss = losses[r]
                with _rng_of(rngs, r):
                    self.runs[r].optimizer.step(lambda: loss)


def _one_update_key(run) -> tuple | None:
    """(the update class, its key) for a run whose optimizer can step with others'
    as one: ``StackedUpdate``, ``SharedInstanceUpdate`` or a ``RowwiseUpdate``; None: alone."""
    key = stacked_update_key(run)
    if key is not None:
        return (StackedUpdate, key)
    key = shared_update_key(run)
    if key is not None:
        return (SharedInstanceUpdate, key)
    key = rowwise_update_key(run)
    if key is not None:
        return (ROWWISE[type(run.optimizer)], key)
    return None


def _update_groups(runs: list, stack: ModelStack, stacked_updates: bool) -> list:
    """Runs whose optimizers can update as one stack (same class, same hyperparameters
    other than lr and weight decay, same step count) share a ``StackedUpdate``
    (elementwise optimizers), a ``SharedInstanceUpdate`` (per-tensor ones) or a
    ``RowwiseUpdate`` (per-run reductions); the rest step their own optimizers."""
    groups: dict[Any, list[int]] = {}
    alone, sharpness_aware, hessian = [], [], []
    for r, run in enumerate(runs):
        if is_sharpness_aware(run):
            sharpness_aware.append(r)
            continue
        if needs_hessian(run):
            hessian.append(r)
            continue
        key = _one_update_key(run) if stacked_updates else None
        if key is not None:
            groups.setdefault(key, []).append(r)
        else:
            alone.append(r)
    updates: list = [cls(rows, runs, stack) for (cls, _), rows in groups.items()]
    if alone:
        updates.append(PerRunUpdate(alone, runs))
    if sharpness_aware:
        updates.append(SharpnessAwareUpdate(sharpness_aware, runs))
    if hessian:
        updates.append(HessianUpdate(hessian, runs, stack))
    return updates


def train_job(
    specs: Sequence[dict[str, Any]],
    datas: Sequence[SplitData],
    out_dirs: Sequence[str | os.PathLike],
    *,
    batched: bool = True,
    device: str | torch.device = "cpu",
    progress: bool | None = None,
    on_result: Callable[[int, RunResult], None] | None = None,
) -> list[RunResult]:
    """Train a job's runs: compatible ones batched (``train_batched``), the others
    (``why_not_batched``), and all of them when ``batched`` is
    False, one after another (``train_run``).
    ``datas[k]`` is run k's data (runs given the same object can share a batch).
    ``on_result(k, result)`` is called as each run finishes. Results in input order."""
    if not len(specs) == len(datas) == len(out_dirs):
        raise ValueError(f"{len(specs)} specs, {len(datas)} datasets, {len(out_dirs)} output directories")
    keep_freed_memory()  # the same allocator in both modes (it matters only for stacks)
    batches: dict[tuple, list[int]] = {}
    alone: list[int] = []
    for k, spec in enumerate(specs):
        reason = why_not_batched(validate(spec)) if batched else None
        if batched and reason is None:
            batches.setdefault(batch_key(spec, id(datas[k]), device), []).append(k)
        else:
            alone.append(k)
            if reason is not None:
                log.info("%s trains alone: %s", Path(out_dirs[k]).name, reason)
    for key in [key for key, members in batches.items() if len(members) == 1]:
        alone += batches.pop(key)
    results: dict[int, RunResult] = {}
    stacks = []
    for members in batches.values():
        # runs of one optimizer next to each other: an update's rows are then a view of the stack
        members.sort(key=lambda k: canonical(specs[k])["optimizer"]["name"])
        stacks += split_evenly(members, max_stack(device))
    for members in stacks:
        if len(members) == 1:  # nothing to stack with
            alone += members
            continue
        log.info("%d runs train as one batch: %s", len(members), ", ".join(Path(out_dirs[k]).name for k in members))
        for k, result in zip(members, train_batched(
            [specs[k] for k in members], datas[members[0]], [out_dirs[k] for k in members], device=device, progress=progress,
        )):
            results[k] = result
            if on_result is not None:
                on_result(k, result)
    for k in sorted(alone):
        results[k] = train_run(specs[k], datas[k], out_dirs[k], device=device, progress=progress)
        if on_result is not None:
            on_result(k, results[k])
    return [results[k] for k in range(len(specs))]
