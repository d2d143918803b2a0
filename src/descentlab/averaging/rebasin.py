"""Permutation alignment by weight matching (Ainsworth, Hayase & Srinivasa,
"Git Re-Basin", ICLR 2023), for MLPs and CNNs with BatchNorm.

A :class:`PermutationSpec` says, for every tensor that a hidden-unit
permutation touches, which permutation acts on each axis. Permuting hidden
units P_l reorders the rows of layer l's weight and bias (and its BatchNorm's
weight, bias and running statistics) and the columns (input channels) of layer
l + 1's weight, so the network computes the same function.

Weight matching maximises sum_l <W_l^A, P_l W_l^B P_{l-1}^T> over the
permutations of B by coordinate descent: for one permutation at a time (in a
random order each round, from ``seed``), the others fixed, the objective is
linear in it and ``scipy.optimize.linear_sum_assignment`` solves it exactly;
rounds repeat until no permutation improves (or ``max_iter``). BatchNorm
running statistics are permuted but left out of the objective (they are not
weights).

A permutation is a LongTensor ``perm``: B's unit ``perm[i]`` is matched to
A's unit ``i`` (``B_aligned[i] = B[perm[i]]`` along that axis).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from .states import Source, StateDict, check_same_architecture, iter_states, load_state

__all__ = ["PermutationSpec", "sequential_spec", "apply_permutation", "weight_matching", "align", "aligned",
           "random_permutation"]

_ELEMENTWISE = (nn.ReLU, nn.Tanh, nn.GELU, nn.SiLU, nn.LeakyReLU, nn.ELU, nn.Sigmoid, nn.Identity, nn.Dropout,
                nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
                nn.AvgPool1d, nn.AvgPool2d, nn.MaxPool1d, nn.MaxPool2d)
_CONV = (nn.Conv1d, nn.Conv2d)
_BN = (nn.BatchNorm1d, nn.BatchNorm2d)
_BN_STATS = ("running_mean", "running_var")


@dataclass(frozen=True)
class PermutationSpec:
    """``axes[tensor] = (perm name or None per axis)``; ``sizes[perm]`` its length;
    ``matched``: the tensors in the matching objective (the others are only permuted)."""

    axes: dict[str, tuple[str | None, ...]]
    sizes: dict[str, int]
    matched: frozenset[str] = field(default_factory=frozenset)

    def perm_to_tensors(self) -> dict[str, list[tuple[str, int]]]:
        out: dict[str, list[tuple[str, int]]] = {p: [] for p in self.sizes}
        for name, axes in self.axes.items():
            for axis, p in enumerate(axes):
                if p is not None:
                    out[p].append((name, axis))
        return out


def sequential_spec(model: nn.Module) -> PermutationSpec:
    """The spec of an ``nn.Sequential`` of Linear/Conv1d/Conv2d layers, BatchNorm, activations,
    pooling and Flatten/Unflatten (the project's ``mlp`` and ``cnn``): every hidden layer's
    output units are permutable; the last layer's outputs are not."""
    if not isinstance(model, nn.Sequential):
        raise ValueError(f"sequential_spec needs an nn.Sequential, got {type(model).__name__}; build a "
                         "PermutationSpec by hand for other architectures")
    layers = [(name, m) for name, m in model.named_children() if isinstance(m, (nn.Linear, *_CONV))]
    if not layers:
        raise ValueError("the model has no Linear or Conv layers to permute")
    last = layers[-1][0]
    axes: dict[str, tuple[str | None, ...]] = {}
    sizes: dict[str, int] = {}
    matched: set[str] = set()
    current: str | None = None  # the permutation acting on the features flowing out of the previous layer
    spatial = False  # the features are conv channels with spatial extent still present
    for name, m in model.named_children():
        if isinstance(m, (nn.Linear, *_CONV)):
            if isinstance(m, nn.Linear) and spatial and current is not None and m.in_features != sizes[current]:
                raise ValueError(f"layer {name!r} reads {m.in_features} flattened features from {sizes[current]} "
                                 "permuted channels with a spatial extent; pool them first (not supported)")
            out_perm = None if name == last else f"P{len(sizes)}"
            n_out = m.out_features if isinstance(m, nn.Linear) else m.out_channels
            if out_perm is not None:
                sizes[out_perm] = n_out
            extra = (None,) * (m.weight.ndim - 2)
            axes[f"{name}.weight"] = (out_perm, current, *extra)
            matched.add(f"{name}.weight")
            if m.bias is not None:
                axes[f"{name}.bias"] = (out_perm,)
                matched.add(f"{name}.bias")
            current, spatial = out_perm, isinstance(m, _CONV)
        elif isinstance(m, _BN):
            if m.affine:
                axes[f"{name}.weight"] = (current,)
                axes[f"{name}.bias"] = (current,)
                matched.update({f"{name}.weight", f"{name}.bias"})
            if m.track_running_stats:
                for stat in _BN_STATS:
                    axes[f"{name}.{stat}"] = (current,)
        elif isinstance(m, (nn.Flatten, nn.Unflatten)):
            continue
        elif isinstance(m, _ELEMENTWISE):
            if getattr(m, "output_size", None) in (1, (1,), (1, 1)):
                spatial = False  # global pooling: one feature per channel
        else:
            raise ValueError(f"sequential_spec: module {name!r} ({type(m).__name__}) is not supported "
                             "(Linear, Conv1d/2d, BatchNorm1d/2d, activations, pooling, Flatten/Unflatten)")
    return PermutationSpec(axes, sizes, frozenset(matched))


def apply_permutation(spec: PermutationSpec, perms: Mapping[str, torch.Tensor], state: Source) -> StateDict:
    """``state`` with every axis named in ``spec`` reordered by its permutation; other tensors copied."""
    state = load_state(state)
    missing = [p for p in spec.sizes if p not in perms]
    if missing:
        raise ValueError(f"no permutation given for {missing}")
    out = {}
    for name, v in state.items():
        axes = spec.axes.get(name)
        if axes is None:
            out[name] = v.clone()
            continue
        if len(axes) != v.ndim:
            raise ValueError(f"the spec gives {len(axes)} axes for tensor {name!r} of shape {tuple(v.shape)}")
        for axis, p in enumerate(axes):
            if p is not None:
                if v.shape[axis] != len(perms[p]):
                    raise ValueError(f"permutation {p!r} has length {len(perms[p])}, tensor {name!r} has "
                                     f"{v.shape[axis]} entries along axis {axis}")
                v = torch.index_select(v, axis, perms[p].to(device=v.device, dtype=torch.long))
        out[name] = v.clone()
    unknown = [n for n in spec.axes if n not in state]
    if unknown:
        raise ValueError(f"the spec names tensors the state dict does not have: {unknown[:3]}")
    return out


def random_permutation(spec: PermutationSpec, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(int(seed))
    return {p: torch.randperm(n, generator=g) for p, n in spec.sizes.items()}


def _permuted_except(spec, perms, name, w, except_axis):
    for axis, p in enumerate(spec.axes[name]):
        if axis != except_axis and p is not None:
            w = torch.index_select(w, axis, perms[p])
    return w


def weight_matching(spec: PermutationSpec, state_a: Source, state_b: Source, max_iter: int = 100,
                    seed: int = 0, init: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The permutations of B that best match A's weights (coordinate descent; see the module docstring)."""
    sa, sb = load_state(state_a), load_state(state_b)
    check_same_architecture(sa, sb, what="model B")
    perms = {p: (torch.arange(n) if init is None else init[p].to(torch.long).clone()) for p, n in spec.sizes.items()}
    touches = spec.perm_to_tensors()
    names = list(spec.sizes)
    rng = np.random.default_rng(seed)
    for _ in range(int(max_iter)):
        progress = False
        for idx in rng.permutation(len(names)):
            p = names[idx]
            n = spec.sizes[p]
            cost = torch.zeros(n, n, dtype=torch.float64)
            for name, axis in touches[p]:
                if name not in spec.matched:
                    continue
                wa = sa[name].to("cpu", torch.float64).movedim(axis, 0).reshape(n, -1)
                wb = _permuted_except(spec, perms, name, sb[name].to("cpu", torch.float64), axis)
                wb = wb.movedim(axis, 0).reshape(n, -1)
                cost += wa @ wb.T
            c = cost.numpy()
            _, ci = linear_sum_assignment(c, maximize=True)
            old = float(c[np.arange(n), perms[p].numpy()].sum())
            new = float(c[np.arange(n), ci].sum())
            if new > old + 1e-12 * max(1.0, abs(old)):
                perms[p] = torch.as_tensor(ci, dtype=torch.long)
                progress = True
        if not progress:
            break
    return perms


def align(spec_or_model: PermutationSpec | nn.Module, state_a: Source, state_b: Source, max_iter: int = 100,
          seed: int = 0) -> StateDict:
    """B permuted to match A by weight matching (then merge A with the result)."""
    spec = spec_or_model if isinstance(spec_or_model, PermutationSpec) else sequential_spec(spec_or_model)
    perms = weight_matching(spec, state_a, state_b, max_iter=max_iter, seed=seed)
    return apply_permutation(spec, perms, state_b)


def aligned(spec_or_model: PermutationSpec | nn.Module, reference: Source, sources: Iterable[Source],
            max_iter: int = 100, seed: int = 0) -> Iterator[StateDict]:
    """Each input permuted to match ``reference``, one at a time: feed it to any streaming merge
    (``uniform_soup(aligned(model, theta_ref, paths))``)."""
    spec = spec_or_model if isinstance(spec_or_model, PermutationSpec) else sequential_spec(spec_or_model)
    ref = load_state(reference)
    for state in iter_states(sources, reference=ref):
        yield apply_permutation(spec, weight_matching(spec, ref, state, max_iter=max_iter, seed=seed), state)
