"""Helpers shared by the curvature analyses: parameter snapshots, functional
calls in a chosen dtype, BatchNorm mode control and the determinism check.

Every analysis evaluates the model through ``torch.func.functional_call`` on a
detached snapshot of its parameters and a copy of its buffers, so the model's
own tensors, ``.grad`` fields and running statistics are never touched.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
from torch import nn
from torch.func import functional_call

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

BATCHNORM_MODES = ("eval", "train")

_BN_TYPES = (nn.modules.batchnorm._BatchNorm,)


def parse_dtype(dtype: torch.dtype | str | None, model: nn.Module | None = None) -> torch.dtype:
    """Accept torch.float32/float64 or their names; None means the model's parameter dtype."""
    if dtype is None:
        if model is None:
            raise ValueError("dtype=None needs a model to take the dtype from")
        dtype = next(model.parameters()).dtype
    if isinstance(dtype, str):
        dtype = {"float32": torch.float32, "float64": torch.float64, "float": torch.float32,
                 "double": torch.float64}.get(dtype, dtype)
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
    return dtype


def check_batchnorm_mode(batchnorm: str) -> str:
    if batchnorm not in BATCHNORM_MODES:
        raise ValueError(f"batchnorm must be one of {BATCHNORM_MODES}, got {batchnorm!r}")
    return batchnorm


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, _BN_TYPES) for m in model.modules())


@contextlib.contextmanager
def module_modes(model: nn.Module, batchnorm: str | None = None) -> Iterator[None]:
    """Set BatchNorm layers to ``batchnorm`` mode inside the block; restore every module's mode after.

    Other modules keep the mode the caller left them in (dropout in a model in
    training mode is caught by :func:`check_deterministic`).
    """
    saved = [(m, m.training) for m in model.modules()]
    try:
        if batchnorm is not None:
            for m in model.modules():
                if isinstance(m, _BN_TYPES):
                    m.train(batchnorm == "train")
        yield
    finally:
        for m, mode in saved:
            m.training = mode


class ParameterSnapshot:
    """Detached copies of a model's trainable parameters (and its buffers) in one dtype.

    ``names``/``shapes``/``numels`` describe the flattened vector layout used by
    every operator: parameters in ``model.named_parameters()`` order, each
    flattened row-major.
    """

    def __init__(self, model: nn.Module, dtype: torch.dtype, params: dict[str, torch.Tensor] | None = None):
        named = {n: p for n, p in model.named_parameters() if p.requires_grad}
        if not named:
            raise ValueError("model has no trainable parameters")
        source = named if params is None else params
        self.dtype = dtype
        self.device = next(iter(named.values())).device
        self.names = list(named)
        self.shapes = [tuple(named[n].shape) for n in self.names]
        self.numels = [named[n].numel() for n in self.names]
        self.num_params = sum(self.numels)
        self.tensors = {n: source[n].detach().to(dtype=dtype).clone() for n in self.names}
        # Buffers are copied so train-mode BatchNorm cannot update the model's running stats.
        self.buffers = {
            n: (b.detach().to(dtype=dtype).clone() if b.is_floating_point() else b.detach().clone())
            for n, b in model.named_buffers()
        }
        # Frozen parameters enter the call as constants.
        self.frozen = {n: p.detach().to(dtype=dtype) for n, p in model.named_parameters() if not p.requires_grad}

    def vector(self) -> torch.Tensor:
        return torch.cat([self.tensors[n].reshape(-1) for n in self.names])

    def unflatten(self, vec: torch.Tensor) -> dict[str, torch.Tensor]:
        if vec.shape != (self.num_params,):
            raise ValueError(f"vector must have shape ({self.num_params},), got {tuple(vec.shape)}")
        out, i = {}, 0
        for n, shape, k in zip(self.names, self.shapes, self.numels):
            out[n] = vec[i : i + k].view(shape)
            i += k
        return out

    def flatten(self, tensors) -> torch.Tensor:
        """Concatenate a list (in ``names`` order) or dict of per-parameter tensors."""
        if isinstance(tensors, dict):
            tensors = [tensors[n] for n in self.names]
        return torch.cat([t.reshape(-1) for t in tensors])

    def leaves(self) -> dict[str, torch.Tensor]:
        """Fresh leaf tensors that require grad, for building a differentiable graph."""
        return {n: t.detach().requires_grad_(True) for n, t in self.tensors.items()}

    def call(self, model: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return functional_call(model, ({**self.frozen, **params}, self.buffers), (x,), tie_weights=True)


def as_tensor(x, dtype: torch.dtype, device) -> torch.Tensor:
    x = torch.as_tensor(x, device=device)
    return x.to(dtype) if x.is_floating_point() else x


def num_examples(x: torch.Tensor, y: torch.Tensor | None = None, name: str = "x") -> int:
    """The number of examples (first dimension); a clear error for empty data or x, y of different lengths.

    Every analysis calls this first, so empty data fails here and not later as an
    all-zero matrix, an IndexError or a misleading determinism error.
    """
    if x.ndim == 0:
        raise ValueError(f"{name} needs a first dimension of examples, got a scalar")
    n = int(x.shape[0])
    if y is not None and (y.ndim == 0 or int(y.shape[0]) != n):
        raise ValueError(f"{name} and y need the same number of examples, got {n} and "
                         f"{int(y.shape[0]) if y.ndim else 'a scalar'}")
    if n == 0:
        raise ValueError(f"{name} has no examples (first dimension 0): curvature needs at least one")
    return n


def chunks(n: int, chunk_size: int | None) -> list[tuple[int, int]]:
    """[start, stop) index ranges; the last one may be ragged."""
    if chunk_size is None:
        return [(0, n)]
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size!r}")
    chunk_size = int(chunk_size)
    return [(i, min(i + chunk_size, n)) for i in range(0, n, chunk_size)]


def check_batchnorm_chunks(model: nn.Module, batchnorm: str, ranges: list[tuple[int, int]]) -> None:
    """Refuse train-mode BatchNorm on a chunk of one example.

    Batch statistics of a single example are degenerate (BatchNorm1d raises at
    the first product; a 2-d map would be normalised by one image's statistics),
    so this is refused for every BatchNorm type, before any product.
    """
    if batchnorm != "train" or not has_batchnorm(model):
        return
    single = [(a, b) for a, b in ranges if b - a == 1]
    if single:
        n = ranges[-1][1]
        raise ValueError(
            f"batchnorm='train' uses each chunk's batch statistics, but the chunks of these {n} examples "
            f"include {len(single)} of a single example (examples {single[0][0]}:{single[0][1]}); choose a "
            "chunk_size that leaves at least 2 examples in every chunk (the last one included), or "
            "batchnorm='eval'"
        )


def check_deterministic(model: nn.Module, snapshot: ParameterSnapshot, x: torch.Tensor,
                        ranges: list[tuple[int, int]]) -> None:
    """Refuse a random model (dropout in training mode): evaluate every chunk twice, compare the outputs.

    The check covers all the data, chunk by chunk as the analysis will see it:
    two forward passes without a graph, less work than one curvature product.
    It compares the model's outputs elementwise, so randomness that leaves every
    output unchanged on these data goes unnoticed. Call it inside the mode
    context (``module_modes``) of the analysis.
    """
    with torch.no_grad():
        for a, b in ranges:
            first = snapshot.call(model, snapshot.tensors, x[a:b])
            second = snapshot.call(model, snapshot.tensors, x[a:b])
            # outputs that overflow (a diverging model) compare as equal inf/nan, not as a nan tolerance
            finite = first[torch.isfinite(first)]
            scale = float(finite.abs().max()) if finite.numel() else 0.0
            if not torch.allclose(first, second, rtol=1e-5, atol=1e-6 * scale, equal_nan=True):
                diff = float((first - second).abs().max())
                raise ValueError(
                    f"the model is not deterministic (two evaluations of examples {a}:{b} differ by up to "
                    f"{diff:.3g}): a model in training mode with dropout or other randomness has no "
                    "well-defined curvature; call model.eval() first (BatchNorm is chosen separately "
                    "with batchnorm='eval'|'train')"
                )
