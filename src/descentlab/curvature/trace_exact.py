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
Cost: when every trainable parameter belongs to an ``nn.Linear`` on 2-D inputs,
C backward passes to the layer outputs and the factorisation
(J_i J_i^T)_cd = sum_layers <g_ic, g_id> (||a_i||^2 + 1[bias]) of each layer's
per-example gradient g a^T (Goodfellow, arXiv 1510.01799); otherwise per-example
Jacobians from ``torch.func`` (chunk_size x C x P numbers at a time, much slower).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import hessian, jacrev, vmap

from ._model import LossFn, ParameterSnapshot, as_tensor, check_deterministic, chunks, module_modes, parse_dtype
from .trace import TraceResult

__all__ = ["ggn_trace"]


def _linear_only(model: nn.Module) -> bool:
    owners = [m for m in model.modules() if any(p.requires_grad for p in m.parameters(recurse=False))]
    return bool(owners) and all(type(m) is nn.Linear for m in owners)


def _linear_kernel(model: nn.Module, snap: ParameterSnapshot, x: torch.Tensor) -> torch.Tensor | None:
    """Per-example C x C kernels J_i J_i^T for a network whose parameters all sit in nn.Linear layers."""
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
    if any(a.ndim != 2 for _, a, _ in layers) or out.ndim != 2:
        return None
    out = out.reshape(len(x), -1)
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

    BatchNorm runs in eval mode (per-example Jacobians); random models are refused.
    """
    dtype = parse_dtype(dtype, model)
    snap = ParameterSnapshot(model, dtype)
    x = as_tensor(x, dtype, snap.device)
    y = as_tensor(y, dtype, snap.device)
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"x and y need the same non-zero number of examples, got {len(x)} and {len(y)}")

    def out_one(params, xi):
        return snap.call(model, params, xi.unsqueeze(0)).reshape(-1)

    def loss_of_out(out, yi):
        return loss_fn(out.unsqueeze(0), yi.unsqueeze(0))

    jac = vmap(jacrev(out_one), in_dims=(None, 0))
    fast = _linear_only(model)
    out_hess = vmap(hessian(loss_of_out), in_dims=(0, 0))
    terms = []
    with module_modes(model, "eval"):
        check_deterministic(model, snap, loss_fn, x[: min(len(x), 8)], y[: min(len(y), 8)])
        for a, b in chunks(len(x), chunk_size):
            with torch.no_grad():
                outs = snap.call(model, snap.tensors, x[a:b])
            h = out_hess(outs.reshape(b - a, -1), y[a:b])  # (B, C, C)
            kernel = _linear_kernel(model, snap, x[a:b]) if fast else None
            if kernel is None:
                with torch.enable_grad():
                    j = jac(snap.tensors, x[a:b])  # name -> (B, C, *shape)
                kernel = sum(torch.einsum("bcp,bdp->bcd", t.reshape(b - a, t.shape[1], -1),
                                          t.reshape(b - a, t.shape[1], -1)) for t in j.values())
            terms.append(torch.einsum("bcd,bdc->b", h, kernel).detach())
    samples = torch.cat(terms).to(torch.float64).cpu().numpy()
    return TraceResult(float(samples.mean()), 0.0, 0, samples, "exact-ggn")
