"""Fisher-weighted averaging (Matena & Raffel, NeurIPS 2022) and the diagonal
Fisher it needs.

``fisher_merge``: theta* = sum_i lam_i F~_i theta_i / sum_i lam_i F~_i elementwise,
with F~_i = max(F_i, epsilon): the floor keeps entries that no model is
"certain" about at the lam-weighted average instead of 0/0. ``floor="all"``
floors every model's Fisher; ``floor="first"`` only the first model's (the
official code's ``favor_target_model``). Tensors without a Fisher (buffers such
as BatchNorm statistics) get the lam-weighted average; integer tensors come
from the first model. Equal Fishers give the lam-weighted (by default uniform)
average. One pass: each model and its Fisher are read once.

``diagonal_fisher``: the mean (or sum) over examples of squared per-example
gradients, in eval mode (BatchNorm uses its running statistics):

* ``"empirical"``: gradients of ``loss_fn`` at the observed labels,
  (1/N) sum_n (grad loss(f(x_n), y_n))^2;
* ``"sampled"``: for a classifier's logits, labels drawn from the model,
  y ~ softmax(f(x_n)), ``n_samples`` per example, grad of -log p(y | x_n), squared,
  averaged (an unbiased estimate of the true Fisher; ``seed`` required; a chunk
  holds chunk_size * n_samples per-example gradients);
* ``"exact"``: the expectation over the model's labels,
  sum_c p_c(x_n) (grad log p_c(x_n))^2 (the official code's choice).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, jacrev, vmap

from ..curvature._model import chunks, module_modes, num_examples
from .states import Source, StateDict, is_merged, iter_states, load_state

__all__ = ["diagonal_fisher", "fisher_merge", "FISHER_KINDS", "FLOOR_RULES"]

FISHER_KINDS = ("empirical", "sampled", "exact")
FLOOR_RULES = ("all", "first")


def diagonal_fisher(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None, kind: str = "empirical",
                    loss_fn=F.cross_entropy, n_samples: int = 1, seed: int | None = None,
                    chunk_size: int | None = 256, reduction: str = "mean") -> StateDict:
    """Diagonal Fisher of the trainable parameters, name -> tensor of the parameter's shape."""
    if kind not in FISHER_KINDS:
        raise ValueError(f"kind must be one of {FISHER_KINDS}, got {kind!r}")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    if kind == "empirical" and y is None:
        raise ValueError("the empirical Fisher needs the labels y")
    if kind == "sampled":
        if seed is None:
            raise ValueError("kind='sampled' draws labels from the model: pass an integer seed")
        if int(n_samples) < 1:
            raise ValueError(f"n_samples must be >= 1, got {n_samples!r}")
    n = num_examples(x, y if kind == "empirical" else None)
    params = {k: p.detach() for k, p in model.named_parameters() if p.requires_grad}
    if not params:
        raise ValueError("the model has no trainable parameters")
    frozen = {k: p.detach() for k, p in model.named_parameters() if not p.requires_grad}
    buffers = {k: b.detach() for k, b in model.named_buffers()}

    def out_one(p, xi):
        return functional_call(model, ({**frozen, **p}, buffers), (xi.unsqueeze(0),))

    def loss_one(p, xi, yi):
        return loss_fn(out_one(p, xi), yi.unsqueeze(0))

    def nll_one(p, xi, yi):
        return F.cross_entropy(out_one(p, xi), yi.unsqueeze(0))

    def logp_one(p, xi):
        return F.log_softmax(out_one(p, xi), dim=-1).squeeze(0)

    fisher = {k: torch.zeros_like(v) for k, v in params.items()}
    g = torch.Generator().manual_seed(int(seed)) if kind == "sampled" else None
    with module_modes(model):
        model.eval()
        for a, b in chunks(n, chunk_size):
            xb = x[a:b]
            if kind == "empirical":
                grads = vmap(grad(loss_one), in_dims=(None, 0, 0))(params, xb, y[a:b])
                for k in fisher:
                    fisher[k].add_(grads[k].pow(2).sum(0))
            elif kind == "sampled":
                with torch.no_grad():
                    probs = F.softmax(functional_call(model, ({**frozen, **params}, buffers), (xb,)), dim=-1)
                labels = torch.multinomial(probs.cpu(), int(n_samples), replacement=True, generator=g)  # (B, S)
                labels = labels.to(xb.device)
                xs = xb.repeat_interleave(int(n_samples), dim=0)  # example-major, like labels.reshape(-1)
                grads = vmap(grad(nll_one), in_dims=(None, 0, 0))(params, xs, labels.reshape(-1))
                for k in fisher:
                    fisher[k].add_(grads[k].pow(2).sum(0), alpha=1.0 / int(n_samples))
            else:
                with torch.no_grad():
                    probs = F.softmax(functional_call(model, ({**frozen, **params}, buffers), (xb,)), dim=-1)
                jac = vmap(jacrev(logp_one), in_dims=(None, 0))(params, xb)  # name -> (B, C, *shape)
                for k in fisher:
                    j2 = jac[k].pow(2)
                    fisher[k].add_((probs.reshape(*probs.shape, *([1] * (j2.ndim - 2))) * j2).sum((0, 1)))
    if reduction == "mean":
        for v in fisher.values():
            v.div_(n)
    return fisher


def fisher_merge(sources: Iterable[Source], fishers: Iterable[Source], weights: Sequence[float] | None = None,
                 epsilon: float = 1e-6, floor: str = "all") -> StateDict:
    """Fisher-weighted average of the models (see the module docstring)."""
    if floor not in FLOOR_RULES:
        raise ValueError(f"floor must be one of {FLOOR_RULES}, got {floor!r}")
    if not epsilon >= 0:
        raise ValueError(f"epsilon must be >= 0, got {epsilon!r}")
    fishers = iter(fishers)
    numerator: dict[str, torch.Tensor] = {}
    denominator: dict[str, torch.Tensor] = {}
    layout: dict[str, torch.dtype] = {}
    kept: StateDict = {}
    fisher_names: set[str] = set()
    i = -1
    for i, state in enumerate(iter_states(sources)):
        try:
            fisher = load_state(next(fishers))
        except StopIteration:
            raise ValueError(f"fewer Fishers than models (none for model {i})") from None
        if weights is not None and i >= len(weights):
            raise ValueError(f"{len(weights)} weights for more than {len(weights)} models")
        lam = 1.0 if weights is None else float(weights[i])
        if i == 0:
            layout = {k: v.dtype for k, v in state.items()}
            kept = {k: v.clone() for k, v in state.items() if not is_merged(v)}
            fisher_names = set(fisher)
            unknown = sorted(fisher_names - {k for k, v in state.items() if is_merged(v)})
            if unknown:
                raise ValueError(f"the Fisher names tensors the model has not (or does not merge): {unknown}")
        elif set(fisher) != fisher_names:
            other = sorted(set(fisher) ^ fisher_names)
            raise ValueError(f"the Fisher of model {i} covers other tensors than model 0's (first: {other[0]!r})")
        for k, v in state.items():
            if not is_merged(v):
                continue
            if k in fisher:
                f = fisher[k]
                if tuple(f.shape) != tuple(v.shape):
                    raise ValueError(f"the Fisher of model {i}: tensor {k!r} has shape {tuple(f.shape)}, the "
                                     f"model's has shape {tuple(v.shape)}")
                f = f.to(torch.float64)
                if floor == "all" or i == 0:
                    f = f.clamp(min=epsilon)
                w = lam * f
            else:
                w = torch.full(v.shape, lam, dtype=torch.float64, device=v.device)
            if k in numerator:
                numerator[k].add_(w * v.to(torch.float64))
                denominator[k].add_(w)
            else:
                numerator[k], denominator[k] = w * v.to(torch.float64), w.clone()
        del state, fisher
    if i < 0:
        raise ValueError("no models were given to merge")
    if next(fishers, None) is not None:
        raise ValueError(f"more Fishers than the {i + 1} models")
    if weights is not None and len(weights) != i + 1:
        raise ValueError(f"{len(weights)} weights for {i + 1} models")
    out: StateDict = {}
    for k, dtype in layout.items():
        if k not in numerator:
            out[k] = kept[k]
            continue
        if bool((denominator[k] == 0).any()):
            raise ValueError(f"tensor {k!r}: the weighted Fishers sum to zero somewhere; use epsilon > 0")
        out[k] = (numerator[k] / denominator[k]).to(dtype)
    return out
