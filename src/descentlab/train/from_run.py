"""Runs that grow from other runs: the spec key ``init`` and run references.

``init: {run, step, restore, exclude}`` starts a run from the run directory
``<runs_dir>/<run>`` at step ``k = step``:

- ``restore: weights``: the model starts from the parent's evaluation weights
  at ``k`` (``checkpoints/step_<k>.pt``, or ``final.pt`` when ``k`` is the
  parent's last step and it saved no step file), loaded strictly (every tensor
  name and shape must match) except tensors whose names start with an
  ``exclude`` prefix, which keep the child's fresh initialisation. Everything
  else is a fresh run of the child's spec: the step counter starts at 0, the
  child's seed draws the data order and all other randomness, and the child
  trains its own ``steps`` steps.
- ``restore: optimizer``: the parent's training state at ``k``
  (``checkpoints/state_<k>.pt``): its training-mode weights (Schedule-Free:
  y, not the published average) and optimizer state, with the child's own
  optimizer hyperparameters then written over every param group's (the
  optimizer's running values kept in its groups, ``GROUP_STATE_KEYS``, stay the
  parent's). The step counter continues at ``k``, so the schedule, built for
  the child's ``steps`` (the absolute last step, > k), continues too. Data
  order and the torch RNG come fresh from the child's seed: a fork with new
  SGD noise. The optimizer must be the parent's (same name).
- ``restore: all``: as ``optimizer``, plus the parent's sampler position, torch
  RNG state, instrument states and open loss window: with the parent's spec,
  an exact continuation of the parent.

The child evaluates at its start step like a fresh run at step 0, so its
metrics start there. A parent that diverged at or before ``k`` makes the child
"diverged" without training (``ParentDiverged``).

Run references: a component value ``{"run": <id>}`` (today: the refined
schedule's ``grad_norms``) is replaced by ``<runs_dir>/<id>/metrics.parquet``.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from ..checkpoints import (
    CorruptArtifact,
    DivergedCheckpoint,
    IncompatibleCheckpoint,
    load_into_model,
    load_state,
    load_weights,
    state_path,
    weights_path,
)
from ..spec import run_reference
from .training import Training

# Values optimizers keep in their param groups that are running state, not
# hyperparameters (Schedule-Free's averaging counters and mode, AdaGrad-Norm's
# accumulator): a fork keeps the parent's.
GROUP_STATE_KEYS = frozenset({"k", "weight_sum", "lr_max", "scheduled_lr", "train_mode", "b_sq"})


class ParentDiverged(Exception):
    """The parent has no usable state at the step asked for; the message is the reason."""


def resolve_run_references(spec: dict[str, Any], runs_dir: Path) -> dict[str, Any]:
    """A copy of ``spec`` whose component values ``{"run": id}`` are metrics paths."""
    resolved = copy.deepcopy(spec)
    for key in ("schedule",):
        for name, value in resolved[key].items():
            rid = run_reference(value)
            if rid is not None:
                resolved[key][name] = str(Path(runs_dir) / rid / "metrics.parquet")
    return resolved


def _parent_status(parent_dir: Path, rid: str, step: int) -> dict[str, Any]:
    status_file = parent_dir / "status.json"
    if not parent_dir.is_dir():
        raise FileNotFoundError(f"init: parent run directory {parent_dir} does not exist; train run {rid} first")
    if not status_file.is_file():
        raise FileNotFoundError(f"init: {status_file} is missing: parent run {rid} has not finished")
    try:
        status = json.loads(status_file.read_text())
    except (OSError, ValueError) as err:
        raise CorruptArtifact(f"{status_file}: cannot be read ({err}); delete it and rerun the training job that writes it") from err
    j = status.get("diverged_at")
    if status.get("status") == "diverged" and j is not None and j <= step:
        raise ParentDiverged(f"parent {rid} diverged at step {j}, {'before' if j < step else 'at'} step {step}")
    if step > status["steps_completed"]:
        raise ValueError(f"init: parent run {rid} trained {status['steps_completed']} steps; it has no step {step}")
    return status


def parent_weights_file(parent_dir: Path, step: int, parent_steps: int) -> Path:
    path = weights_path(parent_dir, step)
    if not path.exists() and step == parent_steps:
        return parent_dir / "final.pt"
    return path


def _hyperparameters(optimizer) -> list[dict[str, Any]]:
    return [
        {k: copy.deepcopy(v) for k, v in group.items() if k != "params" and k not in GROUP_STATE_KEYS}
        for group in optimizer.param_groups
    ]


def start_from_parent(training: Training, init: dict[str, Any], runs_dir: Path, child_optimizer: str) -> None:
    """Load the parent's weights (and state) into ``training`` as ``init`` says.

    Raises ``ParentDiverged`` (record the child as diverged), ``CorruptArtifact``
    (a parent file is missing or unreadable), ``IncompatibleCheckpoint``.
    """
    parent_dir = Path(runs_dir) / init["run"]
    k = init["step"]
    status = _parent_status(parent_dir, init["run"], k)
    try:
        if init["restore"] == "weights":
            path = parent_weights_file(parent_dir, k, status["steps_completed"])
            load_into_model(training.model, load_weights(path), path, init["exclude"])
            return
        path = state_path(parent_dir, k)
        state = load_state(path)
    except DivergedCheckpoint as err:
        raise ParentDiverged(str(err)) from None
    parent_optimizer = state["spec"]["optimizer"]["name"]
    if parent_optimizer != child_optimizer:
        raise IncompatibleCheckpoint(
            f"{path}: optimizer state of {parent_optimizer!r}, the run uses {child_optimizer!r}; "
            f"restore: {init['restore']} needs the parent's optimizer (restore: weights does not)"
        )
    if state["step"] != k:
        raise CorruptArtifact(f"{path}: holds step {state['step']}, not {k}; delete it and rerun the parent's training job")
    load_into_model(training.model, state["model"], path)
    own = _hyperparameters(training.optimizer)
    try:
        training.optimizer.load_state_dict(state["optimizer"])
    except (ValueError, KeyError, RuntimeError) as err:
        raise IncompatibleCheckpoint(f"{path}: the optimizer state does not fit this run's optimizer: {err}") from None
    for group, hyper in zip(training.optimizer.param_groups, own):
        group.update(hyper)
    training.step = k
    if init["restore"] == "all":
        try:
            training.load_sampler_rng_instruments(state)
        except ValueError as err:
            raise IncompatibleCheckpoint(f"{path}: {err} (restore: all needs the parent's training set)") from None
