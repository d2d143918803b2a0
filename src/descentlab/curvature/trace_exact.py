"""Exact trace of the generalised Gauss-Newton matrix, deterministic, without probes.

tr G = (1/N) sum_i tr(H_i J_i J_i^T), with J_i the (C x P) output Jacobian of
example i and H_i the Hessian of its loss w.r.t. its outputs; the per-example
C x C kernel J_i J_i^T is built from chunked per-example Jacobians (torch.func).

For networks that are piecewise linear in each parameter tensor separately
(ReLU/LeakyReLU MLPs and CNNs, max/avg pooling, eval-mode BatchNorm; no smooth
activations, no LayerNorm, no attention), the outputs have zero second
derivative inside each layer, so the Hessian's diagonal blocks equal the GGN's
and tr H = tr G exactly (the reason BackPACK's DiagHessian for such nets is
a GGN diagonal). Otherwise this is tr G only.
Cost: a fast path for networks whose trainable parameters all sit in ``nn.Linear``
layers takes C backward passes to the layer outputs and the factorisation
(J_i J_i^T)_cd = sum_layers <g_ic, g_id> (||a_i||^2 + 1[bias]) of each layer's
per-example gradient g a^T (Goodfellow, arXiv 1510.01799). It is used only when
its assumptions are seen to hold: every trainable parameter belongs to exactly
one ``nn.Linear`` whose weight trains, each such layer is called once per
forward pass on a 2-D (examples, features) input, and the outputs are
(examples, C). (A parameter used outside its layer's forward, e.g. a weight read
directly by another module, cannot be seen and is not supported by the fast
path.) Otherwise, per-example Jacobians from ``torch.func`` (chunk_size x C x P
numbers at a time, much slower); that path takes outputs of any per-example
shape (e.g. MSE on (N, 2, 3), per-pixel cross-entropy on (N, C, H, W)).
Both paths need the loss of a batch to be the mean of the per-example losses;
this is checked on every chunk.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import hessian, jacrev, vmap

from ._model import (LossFn, ParameterSnapshot, as_tensor, check_deterministic, chunks, module_modes, num_examples,
                     parse_dtype)
from .trace import TraceResult

__all__ = ["ggn_trace"]


def _linear_only(model: nn.Module) -> bool:
    """Every trainable parameter belongs to exactly one nn.Linear, and that layer's weight trains."""
    owners: dict[int, int] = {}
    for m in model.modules():
        own = [p for p in m.parameters(recurse=False) if p.requires_grad]
        if not own:
            continue
        if type(m) is not nn.Linear or not m.weight.requires_grad:
            return False
        for p in own:
            owners[id(p)] = owners.get(id(p), 0) + 1
    return bool(owners) and all(count == 1 for count in owners.values())


def _linear_kernel(model: nn.Module, snap: ParameterSnapshot, x: torch.Tensor) -> torch.Tensor | None:
    """Per-example C x C kernels J_i J_i^T for a network whose parameters all sit in nn.Linear layers;
    None where the forward pass breaks the fast path's assumptions (see the module docstring)."""
    records = []

    def hook(module, inputs, output):
        records.append((module, inputs[0], output))

    handles = [m.register_forward_hook(hook) for m in model.modules() if type(m) is nn.Linear]
    try:
        with torch.enable_grad():
            out = snap.call(model, snap.tensors, x.detach().requires_grad_(True))
    finally:
        for h in handles:
            h.remove()
    layers = [(m, a, z) for m, a, z in records if m.weight.requires_grad]
    called = [id(m) for m, _, _ in layers]
    if len(set(called)) != len(called):  # a layer applied twice: its Jacobian has cross terms
        return None
    if out.ndim != 2 or out.shape[0] != len(x):
        return None
    if any(a.ndim != 2 or a.shape[0] != len(x) or z.shape[0] != len(x) for _, a, z in layers):
        return None
    n_out = out.shape[1]
    grads = [torch.autograd.grad(out[:, c].sum(), [z for _, _, z in layers], retain_graph=c < n_out - 1)
             for c in range(n_out)]
    kernel = torch.zeros(len(x), n_out, n_out, dtype=out.dtype, device=out.device)
    for li, (m, a, _) in enumerate(layers):
        g = torch.stack([grads[c][li] for c in range(n_out)], dim=1)  # (B, C, h)
        scale = (a.detach() ** 2).sum(1) + (1.0 if m.bias is not None and m.bias.requires_grad else 0.0)
        kernel += torch.einsum("bch,bdh->bcd", g, g) * scale[:, None, None]
    return kernel.detach()


def ggn_trace(model: nn.Module, loss_fn: LossFn, x, y, chunk_size: int | None = 1024,
              dtype: torch.dtype | str | None = None) -> TraceResult:
    """tr of the GGN of the mean loss over (x, y); ``samples`` holds the per-example terms.

    BatchNorm runs in eval mode (per-example Jacobians); random models and empty data are refused.
    """
    dtype = parse_dtype(dtype, model)
    snap = ParameterSnapshot(model, dtype)
    x = as_tensor(x, dtype, snap.device)
    y = as_tensor(y, dtype, snap.device)
    ranges = chunks(num_examples(x, y), chunk_size)

    def out_one(params, xi):
        return snap.call(model, params, xi.unsqueeze(0)).reshape(-1)

    jac = vmap(jacrev(out_one), in_dims=(None, 0))
    fast = _linear_only(model)
    terms = []
    with module_modes(model, "eval"):
        check_deterministic(model, snap, x, ranges)
        for a, b in ranges:
            with torch.no_grad():
                outs = snap.call(model, snap.tensors, x[a:b])
            shape = outs.shape[1:]  # one example's outputs, flattened to C numbers below

            def loss_of_out(out, yi):
                return loss_fn(out.reshape(1, *shape), yi.unsqueeze(0))

            _check_mean_of_examples(loss_fn, loss_of_out, outs, y[a:b], a, b)
            h = vmap(hessian(loss_of_out))(outs.reshape(b - a, -1), y[a:b])  # (B, C, C)
            kernel = _linear_kernel(model, snap, x[a:b]) if fast else None
            if kernel is None:
                with torch.enable_grad():
                    j = jac(snap.tensors, x[a:b])  # name -> (B, C, *shape)
                kernel = sum(torch.einsum("bcp,bdp->bcd", t.reshape(b - a, t.shape[1], -1),
                                          t.reshape(b - a, t.shape[1], -1)) for t in j.values())
            terms.append(torch.einsum("bcd,bdc->b", h, kernel).detach())
    samples = torch.cat(terms).to(torch.float64).cpu().numpy()
    return TraceResult(float(samples.mean()), 0.0, 0, samples, "exact-ggn")


def _check_mean_of_examples(loss_fn, loss_of_out, outs, y, a, b) -> None:
    """The per-example decomposition needs loss(batch) = mean of the per-example losses."""
    with torch.no_grad():
        batch = loss_fn(outs, y)
        mean = vmap(loss_of_out)(outs.reshape(b - a, -1), y).mean()
    if not torch.allclose(batch, mean, rtol=1e-5, atol=1e-8):
        raise ValueError(f"ggn_trace needs a loss that is the mean of per-example losses; on examples {a}:{b} "
                         f"the batch loss is {float(batch):.8g} but the mean of the per-example losses is "
                         f"{float(mean):.8g} (sum reduction? ignore_index? class weights?)")
