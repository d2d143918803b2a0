"""State-dict utilities shared by every merge rule.

* Inputs ("sources") are weights files (read with
  :func:`descentlab.checkpoints.load_weights`), state dicts, or ``nn.Module``s.
  They are read one at a time, when the rule reaches them, so a rule that
  merges N models holds a few state dicts, not N.
* Every input must have the reference's architecture: the same tensor names,
  the same shapes, and floating tensors where the reference has them. The
  error names the first tensor (in the reference's order) that differs, and
  both shapes. Merged state dicts follow the reference's order.
* Floating tensors (parameters, BatchNorm running statistics) are merged.
  Integer and boolean tensors (BatchNorm's ``num_batches_tracked``) are
  *carried*: copied from the first input, never averaged as floats.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from typing import Union

import torch
from torch import nn

from ..checkpoints import load_weights

StateDict = dict[str, torch.Tensor]
Source = Union[str, os.PathLike, Mapping[str, torch.Tensor], nn.Module]

__all__ = ["StateDict", "Source", "load_state", "iter_states", "check_same_architecture", "is_merged",
           "carried", "layout", "task_vector", "WeightedSum", "reiterable", "first_differing_tensor"]


def load_state(source: Source) -> StateDict:
    """A detached name -> tensor dict from a weights-file path, a mapping or a module."""
    if isinstance(source, (str, os.PathLike)):
        return load_weights(source)
    if isinstance(source, nn.Module):
        return {k: v.detach() for k, v in source.state_dict().items()}
    if isinstance(source, Mapping):
        bad = [k for k, v in source.items() if not isinstance(v, torch.Tensor)]
        if bad:
            raise TypeError(f"a state dict maps names to tensors; {bad[0]!r} holds a {type(source[bad[0]]).__name__}")
        return dict(source)
    raise TypeError(f"a merge input is a weights-file path, a state dict or an nn.Module, not a {type(source).__name__}")


def is_merged(tensor: torch.Tensor) -> bool:
    """Floating tensors are merged; integer/boolean ones (counters) are carried from the first input."""
    return tensor.is_floating_point()


def carried(state: Mapping[str, torch.Tensor]) -> StateDict:
    """The tensors of ``state`` that are carried unchanged (cloned)."""
    return {k: v.clone() for k, v in state.items() if not is_merged(v)}


def first_differing_tensor(reference: Mapping[str, torch.Tensor], other: Mapping[str, torch.Tensor]) -> str | None:
    """A sentence about the first tensor (in the reference's order) that differs, or None."""
    for name, ref in reference.items():
        if name not in other:
            return f"has no tensor {name!r} (the reference's has shape {tuple(ref.shape)})"
        got = other[name]
        if tuple(got.shape) != tuple(ref.shape):
            return f"tensor {name!r} has shape {tuple(got.shape)}, the reference's has shape {tuple(ref.shape)}"
        if got.is_floating_point() != ref.is_floating_point():
            return f"tensor {name!r} is {got.dtype}, the reference's is {ref.dtype} (floating and integer tensors differ)"
    extra = [k for k in other if k not in reference]
    if extra:
        return f"holds tensor {extra[0]!r} (shape {tuple(other[extra[0]].shape)}) that the reference does not have"
    return None


def check_same_architecture(reference: Mapping[str, torch.Tensor], other: Mapping[str, torch.Tensor],
                            what: str = "an input") -> None:
    """ValueError naming the first tensor in which ``other`` differs from ``reference``."""
    problem = first_differing_tensor(reference, other)
    if problem is not None:
        raise ValueError(f"merge inputs must share an architecture: {what} {problem}")


def reiterable(sources: Iterable[Source], rule: str) -> Iterable[Source]:
    """Refuse a one-shot iterator where ``rule`` reads its inputs more than once."""
    if isinstance(sources, Iterator):
        raise ValueError(f"{rule} reads its inputs more than once: pass a list of paths, state dicts or "
                         "modules, not a one-shot iterator or generator")
    return sources


def iter_states(sources: Iterable[Source], reference: Mapping[str, torch.Tensor] | None = None,
                first_index: int = 0) -> Iterator[StateDict]:
    """Load the inputs one at a time, each checked against ``reference`` (default: the first input)."""
    for i, source in enumerate(sources, start=first_index):
        state = load_state(source)
        if reference is None:
            reference = layout(state)  # names, shapes, dtypes only: the first input is not kept alive
        else:
            check_same_architecture(reference, state, what=f"input {i}" + (
                f" ({os.fspath(source)})" if isinstance(source, (str, os.PathLike)) else ""))
        yield state


def layout(state: Mapping[str, torch.Tensor]) -> StateDict:
    """Storage-free (meta) copies of the tensors: enough to check another input's architecture."""
    return {k: torch.empty(v.shape, dtype=v.dtype, device="meta") for k, v in state.items()}


def task_vector(state: Mapping[str, torch.Tensor], base: Mapping[str, torch.Tensor]) -> StateDict:
    """tau = theta - theta_0 on the merged (floating) tensors; carried tensors are left out."""
    check_same_architecture(base, state, what="a fine-tuned model")
    return {k: v - base[k] for k, v in state.items() if is_merged(v)}


class WeightedSum:
    """Running sum_i w_i theta_i over the floating tensors, one input at a time.

    A weight is a number, or a name -> tensor mapping of elementwise weights
    (Fisher merging). Integer tensors are kept from the first input added.
    Accumulation is in the inputs' dtype unless ``dtype`` is given; ``result``
    casts back to the first input's dtypes.
    """

    def __init__(self, dtype: torch.dtype | None = None):
        self.dtype = dtype
        self.sum: StateDict | None = None
        self.carried: StateDict = {}
        self.layout: dict[str, tuple[torch.Size, torch.dtype]] = {}
        self.reference: StateDict = {}
        self.count = 0

    @staticmethod
    def _weight(weight, name: str):
        return weight[name] if isinstance(weight, Mapping) else weight

    def add(self, state: Mapping[str, torch.Tensor], weight: float | Mapping[str, torch.Tensor] = 1.0) -> None:
        if self.sum is None:
            self.layout = {k: (v.shape, v.dtype) for k, v in state.items()}
            self.reference = layout(state)
            self.carried = carried(state)
            self.sum = {}
            for k, v in state.items():
                if is_merged(v):
                    self.sum[k] = v.to(self.dtype or v.dtype) * self._weight(weight, k)
        else:
            check_same_architecture(self.reference, state, what=f"input {self.count}")
            for k, acc in self.sum.items():
                w = self._weight(weight, k)
                if isinstance(w, torch.Tensor):
                    acc.addcmul_(state[k].to(acc.dtype), w.to(acc.dtype))
                else:
                    acc.add_(state[k].to(acc.dtype), alpha=float(w))
        self.count += 1

    def copy(self) -> "WeightedSum":
        """An independent running sum with the same contents (the greedy soup's trial)."""
        new = WeightedSum(self.dtype)
        new.sum = None if self.sum is None else {k: v.clone() for k, v in self.sum.items()}
        new.carried, new.layout, new.reference, new.count = self.carried, self.layout, self.reference, self.count
        return new

    def result(self, scale: float | Mapping[str, torch.Tensor] = 1.0) -> StateDict:
        """scale * sum (a number or per-tensor divisors' inverses), carried tensors included, in the input order and dtypes."""
        if self.sum is None:
            raise ValueError("no inputs were given to merge")
        out = {}
        for k, (_, dtype) in self.layout.items():
            out[k] = (self.sum[k] * self._weight(scale, k)).to(dtype) if k in self.sum else self.carried[k].clone()
        return out
