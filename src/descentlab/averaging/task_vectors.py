"""Merges of task vectors tau_i = theta_i - theta_0 around a pretrained model theta_0.

* Task arithmetic (Ilharco et al., ICLR 2023): theta_0 + lam * sum_i tau_i.
* TIES (Yadav et al., NeurIPS 2023), as in the paper and its official code
  (prateeky2806/ties-merging, ``state_dict_to_vector`` then ``topk_values_mask``):
  1. trim: each task vector keeps its top-``density`` entries by magnitude,
     ranked over the WHOLE flattened task vector (all merged tensors of the
     model together, "global"), not tensor by tensor. With d entries and
     k = floor(d * density) >= 1, the threshold is the k-th largest |tau| and
     every entry with |tau| >= threshold is kept (ties at the threshold
     survive); density >= 1 keeps everything. (The official code's
     ``kthvalue(d - k)`` threshold keeps k + 1 entries: one more than the
     paper's top-k%; we keep k.);
  2. elect: the sign of sum_i trimmed tau_i per entry; an entry whose sum is
     exactly 0 gets the majority sign (the sign of the sum of all elected
     signs in the model; + if that is 0 too);
  3. disjoint mean: per entry, the mean of the trimmed tau_i that are non-zero
     and of the elected sign (0 where none is);
  4. theta_0 + lam * that.
* DARE (Yu et al., ICML 2024): each task-vector entry is dropped with
  probability ``drop`` and the survivors are rescaled by 1 / (1 - drop), so
  E[DARE(tau)] = tau; then the vectors are combined by task arithmetic or by
  TIES' elect + disjoint mean (``combine="ties"``, no magnitude trim).
  Masks: model i's entries are drawn from a ``torch.Generator`` seeded with
  ``dare_seed(seed, i)``, tensor by tensor in state-dict order,
  ``keep = torch.rand(shape) >= drop``; see :func:`dare_keep_masks`.

Where mergekit 0.1.5 differs (REFERENCES 4.4; measured in tests/averaging/
test_mergekit_differences.py): it trims TIES per tensor, rescales DARE
survivors to keep each tensor's L1 norm instead of by 1 / (1 - drop), and its
task arithmetic sums the task vectors with lam fixed to 1 (per-model weights only).

Only floating tensors are merged; integer tensors come from theta_0, and so do
the floating tensors named in ``carry`` (e.g. BatchNorm running statistics,
which DARE's rescaling can push negative; recompute them after merging). Every
rule streams: the fine-tuned models are read one at a time (TIES twice: the
trimmed sum for the sign election, then the disjoint mean; so pass paths or
state dicts. Task arithmetic and DARE with task arithmetic read them once and
accept a one-shot iterator).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch

from .states import Source, StateDict, iter_states, load_state, reiterable, task_vector

__all__ = ["task_arithmetic", "ties_merge", "ties_threshold", "dare", "dare_merge", "dare_seed", "dare_keep_masks",
           "DARE_COMBINES"]

DARE_COMBINES = ("task_arithmetic", "ties")


def _base(base: Source, carry: Iterable[str]) -> tuple[StateDict, frozenset[str]]:
    theta0 = load_state(base)
    carry = frozenset(carry)
    unknown = sorted(carry - set(theta0))
    if unknown:
        raise ValueError(f"carry names tensors the models do not have: {unknown}")
    return theta0, carry


def _tau(state: StateDict, theta0: StateDict, carry: frozenset[str]) -> dict[str, torch.Tensor]:
    """The task vector without the carried names."""
    return {k: v for k, v in task_vector(state, theta0).items() if k not in carry}


def _assemble(base: StateDict, delta: dict[str, torch.Tensor], lam: float) -> StateDict:
    """theta_0 + lam * delta, in theta_0's order and dtypes; tensors without a delta from theta_0."""
    return {k: (v + lam * delta[k].to(v.dtype)) if k in delta else v.clone() for k, v in base.items()}


def _sum_task_vectors(theta0: StateDict, finetuned: Iterable[Source], carry: frozenset[str],
                      transform=None) -> dict[str, torch.Tensor]:
    """sum_i transform(i, theta_i - theta_0), reading one fine-tuned model at a time."""
    total: dict[str, torch.Tensor] | None = None
    for i, state in enumerate(iter_states(finetuned, reference=theta0)):
        tau = _tau(state, theta0, carry)
        del state
        if transform is not None:
            tau = transform(i, tau)
        if total is None:
            total = tau
        else:
            for k, v in tau.items():
                total[k].add_(v)
    if total is None:
        raise ValueError("no fine-tuned models were given to merge")
    return total


def task_arithmetic(base: Source, finetuned: Iterable[Source], lam: float = 1.0, carry: Iterable[str] = ()) -> StateDict:
    """theta_0 + lam * sum_i (theta_i - theta_0), one fine-tuned model at a time."""
    theta0, carry = _base(base, carry)
    return _assemble(theta0, _sum_task_vectors(theta0, finetuned, carry), float(lam))


def ties_threshold(tau: dict[str, torch.Tensor], density: float) -> float:
    """The magnitude at or above which TIES keeps entries of one whole task vector (global trim)."""
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density (the fraction of each task vector kept) must be in (0, 1], got {density!r}")
    if density >= 1.0:
        return 0.0
    flat = torch.cat([v.reshape(-1).abs() for v in tau.values()])
    d = flat.numel()
    keep = int(d * density)
    if keep < 1:
        raise ValueError(f"density {density!r} keeps no entry of a task vector with {d} entries")
    return float(flat.kthvalue(d - keep + 1).values)  # the keep-th largest |tau|


def _trim(tau: dict[str, torch.Tensor], threshold: float) -> dict[str, torch.Tensor]:
    return {k: v.masked_fill(v.abs() < threshold, 0.0) for k, v in tau.items()}


def _trimmer(density: float, before: Callable[[int, dict], dict]) -> Callable[[int, dict], dict]:
    """before(i, tau), then TIES' trim; model i's threshold is computed on the first pass and reused."""
    thresholds: dict[int, float] = {}

    def transform(i: int, tau: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        tau = before(i, tau)
        if i not in thresholds:
            thresholds[i] = ties_threshold(tau, density)
        return _trim(tau, thresholds[i])

    return transform


def _elect_and_merge(theta0: StateDict, finetuned: Iterable[Source],
                     transform: Callable[[int, dict[str, torch.Tensor]], dict[str, torch.Tensor]],
                     lam: float, carry: frozenset[str]) -> StateDict:
    """TIES' steps 2-4 over transformed (trimmed or DARE'd) task vectors: two more passes over the inputs."""
    total: dict[str, torch.Tensor] | None = None
    for i, state in enumerate(iter_states(finetuned, reference=theta0)):
        tau = transform(i, _tau(state, theta0, carry))
        del state
        if total is None:
            total = tau
        else:
            for k, v in tau.items():
                total[k].add_(v)
    if total is None:
        raise ValueError("no fine-tuned models were given to merge")
    sign = {k: torch.sign(v).to(torch.int8) for k, v in total.items()}
    del total
    majority = int(np.sign(sum(int(s.sum(dtype=torch.int64)) for s in sign.values()))) or 1
    for s in sign.values():
        s[s == 0] = majority
    agree_sum: dict[str, torch.Tensor] = {}
    agree_count: dict[str, torch.Tensor] = {}
    for i, state in enumerate(iter_states(finetuned, reference=theta0)):
        tau = transform(i, _tau(state, theta0, carry))
        del state
        for k, v in tau.items():
            agree = (torch.sign(v).to(torch.int8) == sign[k]) & (v != 0)
            kept = torch.where(agree, v, torch.zeros_like(v))
            if k in agree_sum:
                agree_sum[k].add_(kept)
                agree_count[k].add_(agree.to(torch.int32))
            else:
                agree_sum[k], agree_count[k] = kept, agree.to(torch.int32)
    merged = {k: agree_sum[k] / agree_count[k].clamp(min=1).to(agree_sum[k].dtype) for k in agree_sum}
    return _assemble(theta0, merged, float(lam))


def ties_merge(base: Source, finetuned: Iterable[Source], density: float = 0.2, lam: float = 1.0,
               carry: Iterable[str] = ()) -> StateDict:
    """TIES-merging with the paper's global trim; see the module docstring for every step."""
    finetuned = reiterable(finetuned, "ties_merge")
    theta0, carry = _base(base, carry)
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density (the fraction of each task vector kept) must be in (0, 1], got {density!r}")
    return _elect_and_merge(theta0, finetuned, _trimmer(density, lambda i, tau: tau), lam, carry)


def dare_seed(seed: int, index: int) -> int:
    """The generator seed of model ``index``'s DARE masks: independent streams per (seed, index)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1, dtype=np.uint64)[0])


def dare_keep_masks(tau: dict[str, torch.Tensor], drop: float, seed: int, index: int = 0) -> dict[str, torch.Tensor]:
    """Boolean masks of the entries DARE keeps in model ``index``'s task vector."""
    if not 0.0 <= drop < 1.0:
        raise ValueError(f"drop (the probability of dropping an entry) must be in [0, 1), got {drop!r}")
    g = torch.Generator().manual_seed(dare_seed(seed, index))
    # drawn on the CPU, so a seed gives the same masks on every device
    return {k: (torch.rand(v.shape, generator=g) >= drop).to(v.device) for k, v in tau.items()}


def dare(tau: dict[str, torch.Tensor], drop: float, seed: int, index: int = 0) -> dict[str, torch.Tensor]:
    """Drop And REscale one task vector: keep each entry with probability 1 - drop, scale survivors by 1/(1 - drop)."""
    masks = dare_keep_masks(tau, drop, seed, index)
    scale = 1.0 / (1.0 - drop)
    return {k: torch.where(masks[k], v * scale, torch.zeros_like(v)) for k, v in tau.items()}


def dare_merge(base: Source, finetuned: Iterable[Source], drop: float, seed: int,
               combine: str = "task_arithmetic", lam: float = 1.0, density: float = 1.0,
               carry: Iterable[str] = ()) -> StateDict:
    """DARE on every task vector, then task arithmetic (theta_0 + lam * sum) or TIES
    (``combine="ties"``: the DARE'd vectors trimmed to ``density`` as in :func:`ties_merge`, by
    default not at all, then elect + disjoint mean; the DARE code applies DARE to each model, then
    any merge)."""
    if combine not in DARE_COMBINES:
        raise ValueError(f"combine must be one of {DARE_COMBINES}, got {combine!r}")
    if not 0.0 <= drop < 1.0:
        raise ValueError(f"drop (the probability of dropping an entry) must be in [0, 1), got {drop!r}")
    if seed is None:
        raise ValueError("dare_merge needs an integer seed (the masks are random)")
    if combine == "task_arithmetic" and density != 1.0:
        raise ValueError("density (a TIES trim) applies only with combine='ties'")
    theta0, carry = _base(base, carry)
    if combine == "ties":
        finetuned = reiterable(finetuned, "dare_merge(combine='ties')")
        if density >= 1.0:
            return _elect_and_merge(theta0, finetuned, lambda i, tau: dare(tau, drop, seed, i), lam, carry)
        return _elect_and_merge(theta0, finetuned, _trimmer(density, lambda i, tau: dare(tau, drop, seed, i)),
                                lam, carry)
    total = _sum_task_vectors(theta0, finetuned, carry, lambda i, tau: dare(tau, drop, seed, i))
    return _assemble(theta0, total, float(lam))
