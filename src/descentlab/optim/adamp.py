"""AdamP and SGDP: remove the radial component of the update of scale-invariant weights.

Heo et al., "AdamP: Slowing Down the Slowdown for Momentum Optimizers on
Scale-invariant Weights", ICLR 2021, arXiv 2006.08217; official code = PyPI
``adamp``. For a parameter w with more than one dimension, the weight is
deemed scale-invariant when the gradient is nearly orthogonal to it:
max |cos(g, w)| < delta / sqrt(dim) in the channel view (one row per output
channel), else in the layer view (the whole tensor). Then the update p loses
its radial part, p <- p - w_unit <w_unit, p> (per row of the view that
matched), and weight decay is scaled by ``wd_ratio``. One-dimensional
parameters, and updates that are not projected, are plain AdamW / SGD.

AdamP:  p = m / (sqrt(v_hat) + eps)  (nesterov: (beta1 m + (1 - beta1) g) / ...)
        w <- w (1 - lr wd ratio) - lr / bc1 * p
SGDP:   b <- mu b + (1 - dampening) g;  p = b  (nesterov: g + mu b)
        w <- w (1 - lr wd ratio / (1 - mu)) - lr p      (official SGDP decay)
Note that SGDP's buffer starts at 0 (b_1 = (1 - dampening) g, unlike torch's SGD).
A complex parameter is updated as its real view (one more trailing dimension of
size 2), so a complex vector counts as two-dimensional and may be projected.

The paper (Algorithm 1) projects the update q_t = Pi(p_t) and keeps the buffer
p_t. The official SGDP without Nesterov projects in place, so its momentum
buffer is projected as well; ``project_buffer=True`` reproduces that (default
False: the paper).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from . import OPTIMIZERS
from ._base import (
    MultiTensorOptimizer, adam_direction_into, as_float, check_beta, check_betas, check_lr, check_non_negative,
    foreach_into, work_chunks,
)


def project_radial(
    weight: Tensor, grad: Tensor, update: Tensor, delta: float, wd_ratio: float, eps: float
) -> tuple[Tensor, float]:
    """(update without its radial part, wd_ratio) for scale-invariant weights, else (update, 1).

    Row dot products and norms are computed once (fused ``vecdot`` /
    ``vector_norm``); the layer view's are sums of the channel view's. Norms are
    clamped below by eps in the cosine and eps is added to the norm of w, as in
    the official code.
    """
    w = weight.reshape(weight.shape[0], -1)
    g = grad.reshape(grad.shape[0], -1)
    dots = torch.linalg.vecdot(w, g, dim=1)
    w_norms = torch.linalg.vector_norm(w, dim=1)
    g_norms = torch.linalg.vector_norm(g, dim=1)
    channel_cos = dots.abs() / (w_norms.clamp_min(eps) * g_norms.clamp_min(eps))
    if channel_cos.max() < delta / math.sqrt(w.shape[1]):
        w_unit = w / w_norms.add(eps).unsqueeze(1)
    else:
        w_norm = w_norms.square().sum().sqrt()
        layer_cos = dots.sum().abs() / (w_norm.clamp_min(eps) * g_norms.square().sum().sqrt().clamp_min(eps))
        if not layer_cos < delta / math.sqrt(w.numel()):
            return update, 1.0
        w_unit = (w / w_norm.add(eps)).reshape(1, -1)
    u = update.reshape(w_unit.shape)
    radial = torch.linalg.vecdot(w_unit, u, dim=1).unsqueeze(1)
    return torch.addcmul(u, w_unit, radial, value=-1.0).reshape(update.shape), wd_ratio


# Below ATen's parallel grain size (32768 elements) a tensor's reductions run
# serially; a batch of such tensors is split between threads by output rows only,
# so each row is summed in the same order as for the tensor alone. A larger tensor
# alone may have one row split between threads (the layer view): it is not batched.
_BATCH_BELOW = 32768


def project_radial_same_shape(
    weights: list[Tensor], grads: list[Tensor], updates: list[Tensor],
    delta: float, wd_ratio: float, eps: float, product_buffer: Tensor | None = None,
) -> tuple[list[Tensor], list[float]]:
    """``project_radial`` for tensors of one shape at once, bit for bit.

    The same operations on a leading batch dimension: one set of kernels and a
    single sync for the whole batch instead of a Python loop (the cost on many
    small tensors). Unprojected updates are returned as the same objects.
    ``product_buffer`` (one tensor only): a contiguous free buffer shaped like
    it, for the products w * g of the row dot products (``vecdot`` is that
    product summed; the tests check that the two agree).
    """
    count, rows = len(weights), weights[0].shape[0]

    def batch(tensors: list[Tensor]) -> Tensor:
        stacked = torch.stack(tensors) if count > 1 else tensors[0].unsqueeze(0)
        return stacked.reshape(count, rows, -1)

    w, g = batch(weights), batch(grads)
    cols = w.shape[2]
    if product_buffer is not None and count == 1 and product_buffer.is_contiguous():
        dots = torch.mul(w, g, out=product_buffer.view(w.shape)).sum(2)
    else:
        dots = torch.linalg.vecdot(w, g, dim=2)
    w_norms = torch.linalg.vector_norm(w, dim=2)
    g_norms = torch.linalg.vector_norm(g, dim=2)
    channel_cos = dots.abs() / (w_norms.clamp_min(eps) * g_norms.clamp_min(eps))
    channel = channel_cos.amax(1) < delta / math.sqrt(cols)
    w_norm = w_norms.square().sum(1).sqrt()
    layer_cos = dots.sum(1).abs() / (w_norm.clamp_min(eps) * g_norms.square().sum(1).sqrt().clamp_min(eps))
    layer = layer_cos < delta / math.sqrt(rows * cols)
    # one sync for the batch's data-dependent choice
    choices = torch.stack((channel, layer)).tolist()
    channel_idx = [i for i in range(count) if choices[0][i]]
    layer_idx = [i for i in range(count) if not choices[0][i] and choices[1][i]]
    out, ratios = list(updates), [1.0] * count
    if not channel_idx and not layer_idx:
        return out, ratios
    u = batch(updates)

    def take(x: Tensor, idx: list[int]) -> Tensor:
        return x if len(idx) == count else x[idx]

    if channel_idx:
        w_unit = take(w, channel_idx) / take(w_norms, channel_idx).add(eps).unsqueeze(2)
        u_sel = take(u, channel_idx)
        radial = torch.linalg.vecdot(w_unit, u_sel, dim=2).unsqueeze(2)
        projected = torch.addcmul(u_sel, w_unit, radial, value=-1.0)
        for j, i in enumerate(channel_idx):
            out[i], ratios[i] = projected[j].reshape(updates[i].shape), wd_ratio
    if layer_idx:
        k = len(layer_idx)
        w_unit = (take(w, layer_idx) / take(w_norm, layer_idx).add(eps).reshape(k, 1, 1)).reshape(k, 1, -1)
        u_sel = take(u, layer_idx).reshape(k, 1, -1)
        radial = torch.linalg.vecdot(w_unit, u_sel, dim=2).unsqueeze(2)
        projected = torch.addcmul(u_sel, w_unit, radial, value=-1.0)
        for j, i in enumerate(layer_idx):
            out[i], ratios[i] = projected[j].reshape(updates[i].shape), wd_ratio
    return out, ratios


def project_radial_foreach(
    params: list[Tensor], grads: list[Tensor], updates: list[Tensor],
    delta: float, wd_ratio: float, eps: float, free_buffers: list[Tensor | None] | None = None,
) -> tuple[list[Tensor], list[float]]:
    """``project_radial`` of every parameter with more than one dimension.

    Small CPU tensors of one shape go through ``project_radial_same_shape``
    together; large ones (where batching saves nothing and multi-threaded
    reductions could split differently) one at a time, with ``free_buffers[i]``
    (if given) as their product buffer.
    """
    groups: dict[Any, list[int]] = {}
    for i, p in enumerate(params):
        if p.dim() > 1:
            # CPU only: CUDA picks its reduction split from the number of outputs
            batchable = p.device.type == "cpu" and p.numel() < _BATCH_BELOW
            key = (p.shape, p.dtype) if batchable else i
            groups.setdefault(key, []).append(i)
    out, ratios = list(updates), [1.0] * len(params)
    for idx in groups.values():
        buffer = free_buffers[idx[0]] if free_buffers is not None and len(idx) == 1 else None
        projected, group_ratios = project_radial_same_shape(
            [params[i] for i in idx], [grads[i] for i in idx], [updates[i] for i in idx],
            delta, wd_ratio, eps, buffer,
        )
        for i, u, r in zip(idx, projected, group_ratios):
            out[i], ratios[i] = u, r
    return out, ratios


def _check_projection(delta: float, wd_ratio: float, eps: float) -> None:
    check_non_negative("delta", delta)
    check_non_negative("wd_ratio", wd_ratio)
    check_non_negative("eps", eps)


@OPTIMIZERS.register("adamp")
class AdamP(MultiTensorOptimizer):
    """AdamP (arXiv 2006.08217); defaults are the official code's."""

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        delta: float = 0.1,
        wd_ratio: float = 0.1,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
    ):
        check_lr(lr)
        check_betas(betas)
        check_non_negative("weight_decay", weight_decay)
        _check_projection(delta, wd_ratio, eps)
        defaults = dict(
            lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, delta=delta,
            wd_ratio=wd_ratio, nesterov=bool(nesterov), maximize=maximize, foreach=foreach,
        )
        super().__init__(params, defaults)

    def _init_state(self, p: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def _project(self, group, p: Tensor, g: Tensor, update: Tensor) -> tuple[Tensor, float]:
        if p.dim() <= 1:
            return update, 1.0
        return project_radial(p, g, update, group["delta"], group["wd_ratio"], group["eps"])

    def _update_reference(self, group, params, grads, steps) -> None:
        lr, wd, eps = as_float(group["lr"]), group["weight_decay"], group["eps"]
        beta1, beta2 = group["betas"]
        for p, g, t in zip(params, grads, steps):
            state = self.state[p]
            m, v = state["exp_avg"], state["exp_avg_sq"]
            m.lerp_(g, 1 - beta1)
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            # m / (sqrt(v / bc2) + eps) = sqrt(bc2) * m / (sqrt(v) + eps sqrt(bc2)); the
            # projection is linear, so sqrt(bc2) can go into the step size.
            bc2_sqrt = math.sqrt(1 - beta2**t)
            denom = v.sqrt().add_(eps * bc2_sqrt)
            momentum = (m * beta1).add_(g, alpha=1 - beta1) if group["nesterov"] else m
            update, ratio = self._project(group, p, g, momentum / denom)
            if wd != 0:
                p.mul_(1 - lr * wd * ratio)
            p.add_(update, alpha=-lr * bc2_sqrt / (1 - beta1**t))

    def _update_foreach(self, group, params, grads, step) -> None:
        lr, wd = as_float(group["lr"]), group["weight_decay"]
        exp_avgs = [self.state[p]["exp_avg"] for p in params]
        exp_avg_sqs = [self.state[p]["exp_avg_sq"] for p in params]
        delta, wd_ratio, eps = group["delta"], group["wd_ratio"], group["eps"]
        # chunks that fit the one work buffer (see _base.work_chunks): the update
        # and a spare (Nesterov's denominator, then the projection's products);
        # a tensor split into blocks is split between rows
        choices: dict[int, tuple[str | None, Tensor | None]] = {}
        for chunk in work_chunks(self, (params, grads, exp_avgs, exp_avg_sqs), 2, align=row_length):
            p, g, m, v = chunk.pieces
            if not chunk.blocked:
                updates, step_size = self._updates(group, p, g, m, v, chunk.buffers[0], chunk.outs(1), step)
                updates, ratios = project_radial_foreach(p, g, updates, delta, wd_ratio, eps, chunk.outs(1))
                if wd != 0:
                    torch._foreach_mul_(p, [1 - lr * wd * r for r in ratios])
                torch._foreach_add_(p, updates, alpha=-step_size)
                continue
            (i,) = chunk.index
            if i not in choices:  # the first block: choose the projection from the whole tensor
                choices[i] = radial_choice(params[i], grads[i], delta, eps, chunk.buffers[1][0])
                if choices[i][0] == "layer":  # <w_unit, u> over the whole tensor first: no blocks
                    self._step_whole(group, params[i], grads[i], exp_avgs[i], exp_avg_sqs[i], step)
            kind, w_norms = choices[i]
            if kind == "layer":
                continue
            (u,), step_size = self._updates(group, p, g, m, v, chunk.buffers[0], chunk.buffers[1], step)
            ratio = 1.0
            if kind == "channel":
                cols = row_length(params[i])
                first = (p[0].storage_offset() - params[i].storage_offset()) // cols
                w, rows = p[0].view(-1, cols), u.view(-1, cols)
                w_unit = w / w_norms[first: first + w.shape[0]].add(eps).unsqueeze(1)
                rows.addcmul_(w_unit, torch.linalg.vecdot(w_unit, rows, dim=1).unsqueeze(1), value=-1.0)
                ratio = wd_ratio
            if wd != 0:
                p[0].mul_(1 - lr * wd * ratio)
            p[0].add_(u, alpha=-step_size)

    def _step_whole(self, group, p, g, m, v, step) -> None:
        """The update of one tensor at once (fresh temporaries, freed after)."""
        lr, wd = as_float(group["lr"]), group["weight_decay"]
        u = torch.empty_like(p, memory_format=torch.preserve_format)
        (u,), step_size = self._updates(group, [p], [g], [m], [v], [u], None, step)
        u, ratio = project_radial(p, g, u, group["delta"], group["wd_ratio"], group["eps"])
        if wd != 0:
            p.mul_(1 - lr * wd * ratio)
        p.add_(u, alpha=-step_size)

    def _updates(self, group, params, grads, exp_avgs, exp_avg_sqs, out, spare, step):
        """(updates before the projection, in ``out`` unless Nesterov's are fresh, and
        the step size), moments updated; ``spare`` (or None): buffers for Nesterov's
        denominator."""
        lr, eps = as_float(group["lr"]), group["eps"]
        beta1, beta2 = group["betas"]
        if not group["nesterov"]:
            # u = m_hat / (sqrt(v_hat) + eps) = (m / denom) sqrt(bc2) / bc1: the reference's
            # update times a scalar, which the (linear) projection carries through
            return adam_direction_into(self, out, grads, exp_avgs, exp_avg_sqs, step, beta1, beta2, eps), lr
        # (beta1 m + (1 - beta1) g) / (sqrt(v) + eps sqrt(bc2)), moments updated
        torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
        bc2_sqrt = math.sqrt(1 - beta2**step)
        denom = foreach_into("sqrt", spare, exp_avg_sqs)
        torch._foreach_add_(denom, eps * bc2_sqrt)
        updates = foreach_into("mul", out if spare is not None else None, exp_avgs, beta1)
        torch._foreach_add_(updates, grads, alpha=1 - beta1)
        torch._foreach_div_(updates, denom)
        return updates, lr * bc2_sqrt / (1 - beta1**step)


def row_length(p: Tensor) -> int:
    """Elements per row of the channel view (one row per output channel)."""
    return p[0].numel() if p.dim() > 1 else 1


def radial_choice(
    weight: Tensor, grad: Tensor, delta: float, eps: float, space: Tensor
) -> tuple[str | None, Tensor | None]:
    """``project_radial``'s choice for a contiguous tensor: ("channel", row norms of
    w), ("layer", None) or (None, None); the same sums, with the products w * g
    formed a few rows at a time in ``space`` (1-D, at least a row long)."""
    if weight.dim() <= 1:
        return None, None
    w = weight.view(weight.shape[0], -1)
    g = grad.view(grad.shape[0], -1)
    rows, cols = w.shape
    per = max(1, space.numel() // cols)
    dots = torch.cat([torch.mul(w[r: r + per], g[r: r + per], out=space[: min(per, rows - r) * cols]
                                .view(-1, cols)).sum(1) for r in range(0, rows, per)])
    w_norms = torch.linalg.vector_norm(w, dim=1)
    g_norms = torch.linalg.vector_norm(g, dim=1)
    channel_cos = dots.abs() / (w_norms.clamp_min(eps) * g_norms.clamp_min(eps))
    if channel_cos.max() < delta / math.sqrt(cols):
        return "channel", w_norms
    w_norm = w_norms.square().sum().sqrt()
    layer_cos = dots.sum().abs() / (w_norm.clamp_min(eps) * g_norms.square().sum().sqrt().clamp_min(eps))
    return ("layer", None) if layer_cos < delta / math.sqrt(w.numel()) else (None, None)


@OPTIMIZERS.register("sgdp")
class SGDP(MultiTensorOptimizer):
    """SGDP (arXiv 2006.08217); defaults are the official code's (lr has none there)."""

    counts_steps = False

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        eps: float = 1e-8,
        delta: float = 0.1,
        wd_ratio: float = 0.1,
        project_buffer: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
    ):
        check_lr(lr)
        check_beta("momentum", momentum)
        check_non_negative("dampening", dampening)
        check_non_negative("weight_decay", weight_decay)
        _check_projection(delta, wd_ratio, eps)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError(
                f"nesterov needs momentum > 0 and dampening == 0 "
                f"(got momentum={momentum!r}, dampening={dampening!r})"
            )
        defaults = dict(
            lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
            nesterov=bool(nesterov), eps=eps, delta=delta, wd_ratio=wd_ratio,
            project_buffer=bool(project_buffer), maximize=maximize, foreach=foreach,
        )
        super().__init__(params, defaults)

    def _init_state(self, p: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def _project(self, group, p: Tensor, g: Tensor, update: Tensor) -> tuple[Tensor, float]:
        if p.dim() <= 1:
            return update, 1.0
        return project_radial(p, g, update, group["delta"], group["wd_ratio"], group["eps"])

    @staticmethod
    def _maybe_project_buffer(group, buf: Tensor, update: Tensor) -> None:
        """Official-code behaviour: without Nesterov the projected update is the buffer."""
        if group["project_buffer"] and not group["nesterov"] and update is not buf:
            buf.copy_(update)

    def _decay_factor(self, group, lr: float, ratio: float) -> float:
        return 1 - lr * group["weight_decay"] * ratio / (1 - group["momentum"])

    def _update_reference(self, group, params, grads, steps) -> None:
        lr, mu = as_float(group["lr"]), group["momentum"]
        for p, g in zip(params, grads):
            buf = self.state[p]["momentum_buffer"]
            buf.mul_(mu).add_(g, alpha=1 - group["dampening"])
            direction = g + mu * buf if group["nesterov"] else buf
            update, ratio = self._project(group, p, g, direction)
            self._maybe_project_buffer(group, buf, update)
            if group["weight_decay"] != 0:
                p.mul_(self._decay_factor(group, lr, ratio))
            p.add_(update, alpha=-lr)

    def _update_foreach(self, group, params, grads, step) -> None:
        lr, mu = as_float(group["lr"]), group["momentum"]
        bufs = [self.state[p]["momentum_buffer"] for p in params]
        torch._foreach_mul_(bufs, mu)
        torch._foreach_add_(bufs, grads, alpha=1 - group["dampening"])
        if group["nesterov"]:
            updates = list(torch._foreach_add(grads, torch._foreach_mul(bufs, mu)))
        else:
            updates = list(bufs)
        updates, ratios = project_radial_foreach(
            params, grads, updates, group["delta"], group["wd_ratio"], group["eps"])
        for buf, update in zip(bufs, updates):
            self._maybe_project_buffer(group, buf, update)
        if group["weight_decay"] != 0:
            torch._foreach_mul_(params, [self._decay_factor(group, lr, r) for r in ratios])
        torch._foreach_add_(params, updates, alpha=-lr)
