"""Reading and writing a run's checkpoint files, with errors that say what to do.

A run directory holds, for each step ``k`` its spec lists under ``checkpoints``:

- ``checkpoints/step_<k:06d>.pt``: the model's evaluation weights (a
  ``state_dict``; Schedule-Free optimizers publish their averaged weights);
- ``checkpoints/state_<k:06d>.pt``: the full training state at step ``k``
  (training-mode weights, optimizer state, sampler position, torch RNG state,
  instrument states, base learning rates, the open loss window), from which a
  run can continue (see ``descentlab.train.from_run``).

A run that diverged at step ``j`` writes, under the names of the checkpoints
after ``j`` that it never reached, a small *marker* file instead of weights;
reading one raises ``DivergedCheckpoint``. Any other failure to read a file (it
is missing, truncated, not a torch file, or holds something else) raises
``CorruptArtifact``, whose message names the file and the fix.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

STATE_FORMAT = "descentlab-training-state/1"
MARKER_KEY = "descentlab_diverged_marker"
# Keys every training-state file holds (see descentlab.train.training.Training.state_dict).
STATE_KEYS = ("format", "run_id", "spec", "step", "model", "optimizer", "sampler", "torch_rng",
              "instruments", "base_lrs", "window_loss", "window_n")

_FIX = "delete it and rerun the training job that writes it"


class ArtifactError(RuntimeError):
    """A run artifact that cannot be used; the message names the file."""


class CorruptArtifact(ArtifactError):
    """A checkpoint file that is missing, truncated, not a torch file, or of the wrong kind."""


class DivergedCheckpoint(ArtifactError):
    """A checkpoint name under which a diverged run wrote a marker, not weights."""


class IncompatibleCheckpoint(ArtifactError):
    """Weights or optimizer state that do not fit the model/optimizer they are loaded into."""


def weights_path(run_dir: str | os.PathLike, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step_{step:06d}.pt"


def state_path(run_dir: str | os.PathLike, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"state_{step:06d}.pt"


def save_atomic(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary name, then rename: a killed writer leaves no half file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def diverged_marker(message: str, **info: Any) -> dict[str, Any]:
    """The content of a marker file: ``message`` is what reading it will raise."""
    return {MARKER_KEY: True, "message": message, **info}


def read_torch_file(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """``torch.load(weights_only=True)``; every failure becomes ``CorruptArtifact``,
    a marker file ``DivergedCheckpoint``."""
    path = Path(path)
    if not path.is_file():
        raise CorruptArtifact(f"{path}: missing; rerun the training job that writes it")
    try:
        obj = torch.load(path, weights_only=True, map_location=map_location)
    except Exception as err:  # truncated zip, pickle errors, foreign formats: all unreadable
        raise CorruptArtifact(
            f"{path}: cannot be read as a torch file ({type(err).__name__}: {err}); "
            f"it is truncated or not a checkpoint: {_FIX}"
        ) from err
    if isinstance(obj, dict) and obj.get(MARKER_KEY):
        raise DivergedCheckpoint(f"{path}: {obj['message']}")
    return obj


def load_weights(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, torch.Tensor]:
    """A model ``state_dict`` (``final.pt``, ``checkpoints/step_<k>.pt``)."""
    obj = read_torch_file(path, map_location)
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise CorruptArtifact(f"{path}: not a weights file (a mapping of tensor names to tensors); {_FIX}")
    return obj


def load_state(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """A training state (``checkpoints/state_<k>.pt``)."""
    obj = read_torch_file(path, map_location)
    if not isinstance(obj, dict) or obj.get("format") != STATE_FORMAT:
        raise CorruptArtifact(f"{path}: not a training-state file (format {STATE_FORMAT!r}); {_FIX}")
    missing = [k for k in STATE_KEYS if k not in obj]
    if missing:
        raise CorruptArtifact(f"{path}: training-state file lacks {missing}; {_FIX}")
    return obj


def check_compatible(
    own: dict[str, torch.Tensor],
    loaded: dict[str, torch.Tensor],
    path: str | os.PathLike,
    exclude: tuple[str, ...] | list[str] = (),
) -> None:
    """Raise ``IncompatibleCheckpoint`` naming the first tensor that is missing,
    extra or of another shape, ignoring names that start with an ``exclude`` prefix."""

    def kept(name: str) -> bool:
        return not any(name.startswith(prefix) for prefix in exclude)

    for name, value in own.items():
        if not kept(name):
            continue
        if name not in loaded:
            raise IncompatibleCheckpoint(
                f"{path}: has no tensor {name!r} (the model's has shape {tuple(value.shape)}); "
                "the checkpoint is of another model (init.exclude can leave tensors out)"
            )
        if tuple(loaded[name].shape) != tuple(value.shape):
            raise IncompatibleCheckpoint(
                f"{path}: tensor {name!r} has shape {tuple(loaded[name].shape)}, the model's has "
                f"shape {tuple(value.shape)} (init.exclude can leave tensors out)"
            )
    for name, value in loaded.items():
        if kept(name) and name not in own:
            raise IncompatibleCheckpoint(
                f"{path}: holds tensor {name!r} (shape {tuple(value.shape)}) that the model does not have "
                "(init.exclude can leave tensors out)"
            )


def load_into_model(
    model: torch.nn.Module,
    weights: dict[str, torch.Tensor],
    path: str | os.PathLike,
    exclude: tuple[str, ...] | list[str] = (),
) -> None:
    """Load ``weights`` into ``model`` strictly (names and shapes), except tensors whose
    names start with an ``exclude`` prefix: those keep the model's own values."""
    own = model.state_dict()
    check_compatible(own, weights, path, exclude)
    merged = {name: value if any(name.startswith(p) for p in exclude) else weights[name] for name, value in own.items()}
    model.load_state_dict(merged)
