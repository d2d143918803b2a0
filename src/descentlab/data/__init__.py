"""Datasets: the ``DATASETS`` registry and the saved-split format.

A dataset builder is called as ``builder(**kwargs)`` and returns a
``SplitData``: fixed train/val/test tensors plus what a model needs to know.
Every offline builder is deterministic in its ``seed``; nothing downloads.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..registry import Registry

DATASETS = Registry("dataset")

SPLITS = ("train", "val", "test")
# Evaluation-only splits a dataset may add (never trained on); every SplitData has SPLITS.
EXTRA_SPLITS = ("test_shifted",)


@dataclass
class SplitData:
    """Inputs are stored flat, (N, prod(input_shape)); models reshape as they need."""

    x: dict[str, torch.Tensor]
    y: dict[str, torch.Tensor]
    task: str  # "classification" (int64 labels) or "regression" (float targets)
    num_outputs: int
    input_shape: tuple[int, ...]
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.task not in ("classification", "regression"):
            raise ValueError(f"task must be classification or regression, got {self.task!r}")
        unknown = sorted(set(self.x) - set(SPLITS) - set(EXTRA_SPLITS))
        if unknown:
            raise ValueError(f"unknown splits {unknown}; splits are {SPLITS} plus optionally {EXTRA_SPLITS}")
        for split in self.splits:
            if self.x[split].shape[0] != self.y[split].shape[0]:
                raise ValueError(f"{split}: {self.x[split].shape[0]} inputs but {self.y[split].shape[0]} targets")

    @property
    def splits(self) -> tuple[str, ...]:
        """SPLITS, then the extra evaluation splits this dataset has."""
        return SPLITS + tuple(s for s in EXTRA_SPLITS if s in self.x)

    def size(self, split: str) -> int:
        return int(self.x[split].shape[0])

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "task": self.task,
            "num_outputs": self.num_outputs,
            "input_shape": list(self.input_shape),
            "info": self.info,
        }
        for split in self.splits:
            out[f"x_{split}"] = self.x[split]
            out[f"y_{split}"] = self.y[split]
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SplitData":
        return cls(
            x={s: d[f"x_{s}"] for s in SPLITS + EXTRA_SPLITS if f"x_{s}" in d},
            y={s: d[f"y_{s}"] for s in SPLITS + EXTRA_SPLITS if f"y_{s}" in d},
            task=d["task"],
            num_outputs=int(d["num_outputs"]),
            input_shape=tuple(d["input_shape"]),
            info=dict(d.get("info", {})),
        )

    def save(self, path: str | os.PathLike) -> None:
        """Write atomically, so a killed job never leaves a half-written file behind."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(self.to_dict(), tmp)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SplitData":
        return cls.from_dict(torch.load(path, weights_only=True))


def _split(x: np.ndarray, y: np.ndarray, seed: int, val_fraction: float, test_fraction: float):
    """Shuffle with ``seed`` and cut into train/val/test."""
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(f"bad split fractions val={val_fraction}, test={test_fraction}")
    n = len(x)
    order = np.random.default_rng(seed).permutation(n)
    n_test, n_val = int(round(n * test_fraction)), int(round(n * val_fraction))
    parts = {
        "test": order[:n_test],
        "val": order[n_test : n_test + n_val],
        "train": order[n_test + n_val :],
    }
    return {k: x[v] for k, v in parts.items()}, {k: y[v] for k, v in parts.items()}


def _classification(xs, ys, num_classes, input_shape, info) -> SplitData:
    return SplitData(
        x={k: torch.as_tensor(np.ascontiguousarray(v), dtype=torch.float32) for k, v in xs.items()},
        y={k: torch.as_tensor(v, dtype=torch.int64) for k, v in ys.items()},
        task="classification",
        num_outputs=int(num_classes),
        input_shape=tuple(input_shape),
        info=info,
    )


def _mnist1d_raw(n_samples: int, seed: int, generator: dict | None = None, train_split: float | None = None) -> dict:
    """``make_dataset`` with the package's defaults but ``generator``'s values;
    it reseeds numpy's and Python's global RNGs, so their states are restored."""
    generator = dict(generator or {})
    os.environ.setdefault("MPLBACKEND", "Agg")  # mnist1d imports pyplot
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    unknown = sorted(set(generator) - set(vars(args)) - {"num_samples", "seed"}) or sorted(set(generator) & {"num_samples", "seed", "url"})
    if unknown:
        raise ValueError(f"mnist1d shift: {unknown} are not generator arguments it may change; it may change "
                         f"{sorted(set(vars(args)) - {'num_samples', 'seed', 'url'})}")
    for key, value in generator.items():
        setattr(args, key, value)
    if train_split is not None:
        args.train_split = train_split
    args.num_samples = int(n_samples)
    args.seed = int(seed)
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        return make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)


# The shifted test set's generator seed is seed + SHIFT_SEED_OFFSET: new examples, not the test set redrawn.
SHIFT_SEED_OFFSET = 1_000_003


@DATASETS.register("mnist1d")
def mnist1d(n_samples: int = 5000, seed: int = 42, val_fraction: float = 0.1, shift: dict | None = None) -> SplitData:
    """MNIST-1D (Greydanus 2020) generated locally with ``mnist1d.data.make_dataset``.

    ``get_dataset`` is never used: it downloads by default. The package's own
    train/test cut (80/20) is kept; val is taken from train. ``shift``
    (generator arguments, e.g. ``{iid_noise_scale: 0.1, max_translation: 60}``)
    adds an evaluation split ``test_shifted``: as many new examples as the test
    set, drawn with those arguments (and a different seed), standardised on
    their own as the generator does.
    """
    raw = _mnist1d_raw(n_samples, seed)
    xs, ys = _split(raw["x"], raw["y"], seed, val_fraction, 0.0)
    xs["test"], ys["test"] = raw["x_test"], raw["y_test"]
    info = {"source": "mnist1d.make_dataset"}
    if shift:
        n_test = len(raw["y_test"])
        if not isinstance(shift, dict):
            raise ValueError(f"mnist1d shift must be a mapping of generator arguments, got {shift!r}")
        shifted = _mnist1d_raw(n_test, seed + SHIFT_SEED_OFFSET, shift, train_split=1.0)
        xs["test_shifted"], ys["test_shifted"] = shifted["x"][:n_test], shifted["y"][:n_test]
        info["shift"] = dict(shift)
    return _classification(xs, ys, 10, (raw["x"].shape[1],), info)


@DATASETS.register("digits")
def digits(seed: int = 0, val_fraction: float = 0.1, test_fraction: float = 0.2) -> SplitData:
    """scikit-learn's bundled 8x8 digits (1,797 images, 10 classes), scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.data / 16.0).astype(np.float32)
    xs, ys = _split(x, bunch.target, seed, val_fraction, test_fraction)
    return _classification(xs, ys, 10, (1, 8, 8), {"source": "sklearn.datasets.load_digits"})


@DATASETS.register("gaussian_mixture")
def gaussian_mixture(
    n_samples: int = 4000,
    n_classes: int = 10,
    dim: int = 32,
    separation: float = 3.0,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
) -> SplitData:
    """Balanced classes around random means (norm ~ ``separation``) with unit isotropic noise."""
    if n_classes < 2 or dim < 1 or n_samples < n_classes:
        raise ValueError("gaussian_mixture: need n_classes >= 2, dim >= 1, n_samples >= n_classes")
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((n_classes, dim)) * (separation / np.sqrt(dim))
    y = np.arange(n_samples) % n_classes
    x = (means[y] + rng.standard_normal((n_samples, dim))).astype(np.float32)
    xs, ys = _split(x, y, seed, val_fraction, test_fraction)
    return _classification(xs, ys, n_classes, (dim,), {"source": "generated"})


def teacher_weights(dim: int, teacher_width: int, num_outputs: int, teacher_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The teacher of ``teacher_student(..., teacher_seed=s)``: (w1, w2), y = tanh(x @ w1) @ w2."""
    rng = np.random.default_rng(teacher_seed)
    w1 = rng.standard_normal((dim, teacher_width)) / np.sqrt(dim)
    w2 = rng.standard_normal((teacher_width, num_outputs)) / np.sqrt(teacher_width)
    return w1, w2


@DATASETS.register("teacher_student")
def teacher_student(
    n_samples: int = 4000,
    dim: int = 20,
    num_outputs: int = 1,
    teacher_width: int = 32,
    noise: float = 0.1,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    teacher_seed: int | None = None,
) -> SplitData:
    """Regression on the outputs of a random one-hidden-layer tanh teacher, plus Gaussian noise.

    ``teacher_seed`` (default None: the teacher is drawn from ``seed``'s stream
    after the inputs, so it changes with ``n_samples``) draws the teacher from
    its own stream (:func:`teacher_weights`): datasets of any size and sample
    seed then share one teacher, as scaling-law studies need.
    """
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_samples, dim))
    if teacher_seed is None:
        w1 = rng.standard_normal((dim, teacher_width)) / np.sqrt(dim)
        w2 = rng.standard_normal((teacher_width, num_outputs)) / np.sqrt(teacher_width)
    else:
        w1, w2 = teacher_weights(dim, teacher_width, num_outputs, teacher_seed)
    y = np.tanh(x @ w1) @ w2 + noise * rng.standard_normal((n_samples, num_outputs))
    xs, ys = _split(x.astype(np.float32), y.astype(np.float32), seed, val_fraction, test_fraction)
    return SplitData(
        x={k: torch.from_numpy(v) for k, v in xs.items()},
        y={k: torch.from_numpy(v) for k, v in ys.items()},
        task="regression",
        num_outputs=num_outputs,
        input_shape=(dim,),
        info={"source": "generated", "noise": noise},
    )


def with_label_noise(data: SplitData, fraction: float, seed: int) -> SplitData:
    """A copy whose training labels are, for a random ``fraction`` of examples,
    replaced by a uniformly drawn *different* class; val and test stay clean."""
    if data.task != "classification":
        raise ValueError("label_noise applies to classification datasets only")
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"label_noise must be in [0, 1], got {fraction}")
    gen = torch.Generator().manual_seed(int(seed) + 7919)  # independent of the split's permutation
    y = data.y["train"].clone()
    n_noisy = int(round(fraction * len(y)))
    idx = torch.randperm(len(y), generator=gen)[:n_noisy]
    shift = torch.randint(1, data.num_outputs, (n_noisy,), generator=gen)
    y[idx] = (y[idx] + shift) % data.num_outputs
    info = dict(data.info, label_noise=fraction, noisy_indices=idx.tolist())
    return SplitData(x=dict(data.x), y=dict(data.y, train=y), task=data.task,
                     num_outputs=data.num_outputs, input_shape=data.input_shape, info=info)


# Options every dataset spec may carry, applied after its builder.
COMMON_OPTIONS = ("label_noise",)


def build_dataset(spec: dict) -> SplitData:
    """Build ``{"name": ..., **kwargs}``; ``label_noise: f`` flips a fraction f
    of the training labels (seeded by the dataset's ``seed``, default 0)."""
    spec = dict(spec)
    noise = float(spec.pop("label_noise", 0.0))
    data = DATASETS.build(spec)
    return with_label_noise(data, noise, spec.get("seed", 0)) if noise else data


# Token streams (nanoGPT's format) and the ``charlm`` dataset; imported last: it registers into DATASETS.
from . import tokens  # noqa: E402,F401
