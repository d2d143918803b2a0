"""The forward pass of R stacked runs of one ``nn.Sequential``, layer by layer,
without ``vmap``.

``torch.vmap`` of ``functional_call`` works for any model but costs Python
time on every call and turns a convolution with per-run weights into a slow
grouped convolution laid out by vmap. For the layers of the model registry
this module writes the batched computation directly:

- ``Linear``: one ``baddbmm`` over the run dimension, activations (R, N, F);
- ``Conv1d``/``Conv2d``, ``BatchNorm1d``/``BatchNorm2d``, ``AdaptiveAvgPool``:
  the runs folded into the channels, activations (N, R*C, *spatial): a
  convolution with ``groups = R * groups`` (2-D ones channels-last, which
  oneDNN runs fastest), and BatchNorm over R*C channels, so each run keeps
  its own batch statistics and running statistics (views of its rows of the
  stacked buffers, updated in place as ``nn.BatchNorm`` does);
- ``Flatten``/``Unflatten`` and elementwise activations as they are.

``DirectForward.supports(model)`` says why a model cannot take this path
(then ``ModelStack`` uses vmap). The numbers are the layers' own to rounding;
tests compare against each run's own module in float64.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DirectForward", "unsupported_reason"]

ELEMENTWISE = (nn.ReLU, nn.Tanh, nn.GELU, nn.SiLU, nn.LeakyReLU, nn.Sigmoid, nn.ELU, nn.Softplus, nn.Identity)
CONVS = {nn.Conv1d: F.conv1d, nn.Conv2d: F.conv2d}
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
POOLS = {nn.AdaptiveAvgPool1d: F.adaptive_avg_pool1d, nn.AdaptiveAvgPool2d: F.adaptive_avg_pool2d}


def unsupported_reason(model: nn.Module) -> str | None:
    """Why ``model`` cannot take the direct path, or None when it can."""
    if type(model) is not nn.Sequential:
        return f"the model is a {type(model).__name__}, not an nn.Sequential"
    for name, layer in model.named_children():
        kind = type(layer)
        if getattr(layer, "inplace", False):
            return f"layer {name}: {kind.__name__} in place (the input may be shared by the runs)"
        if kind in ELEMENTWISE or kind is nn.Linear or kind in POOLS:
            continue
        if kind is nn.Flatten:
            if layer.start_dim != 1 or layer.end_dim != -1:
                return f"layer {name}: Flatten over dims {layer.start_dim}..{layer.end_dim} (only 1..-1)"
        elif kind is nn.Unflatten:
            if layer.dim == 0:
                return f"layer {name}: Unflatten of the batch dimension"
        elif kind in CONVS:
            if layer.padding_mode != "zeros":
                return f"layer {name}: padding_mode {layer.padding_mode!r} (only 'zeros')"
        elif kind in NORMS:
            if layer.momentum is None:
                return f"layer {name}: BatchNorm with momentum None (a cumulative average per run)"
        else:
            return f"layer {name}: {kind.__name__} has no direct batched form"
    return None


class _Act:
    """An activation batch of R runs: ``t`` is (R, N, *features) when ``folded`` is
    False, else (N, R*C, *spatial) (runs folded into the channels)."""

    __slots__ = ("t", "folded")

    def __init__(self, t: torch.Tensor, folded: bool):
        self.t, self.folded = t, folded

    def stacked(self, R: int) -> torch.Tensor:
        if not self.folded:
            return self.t
        N, RC = self.t.shape[:2]
        return self.t.reshape(N, R, RC // R, *self.t.shape[2:]).transpose(0, 1)

    def folded_(self, R: int) -> torch.Tensor:
        if self.folded:
            return self.t
        R_, N = self.t.shape[:2]
        return self.t.transpose(0, 1).reshape(N, R_ * self.t.shape[2], *self.t.shape[3:])


class DirectForward:
    """Outputs (R, N, *out) of the R runs of ``template``'s architecture; see the module docstring."""

    def __init__(self, template: nn.Module):
        reason = unsupported_reason(template)
        if reason is not None:
            raise ValueError(f"DirectForward: {reason}")
        self.layers = list(template.named_children())

    def __call__(self, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor], x: torch.Tensor,
                 batched_x: bool, training: bool) -> torch.Tensor:
        """``params``/``buffers``: (R, *shape) by their ``named_parameters`` names; ``x``:
        (R, N, *in) when ``batched_x``, else (N, *in), one batch for every run."""
        R = next(iter(params.values())).shape[0]
        h = _Act(x if batched_x else x.unsqueeze(0).expand(R, *x.shape), folded=False)
        for name, layer in self.layers:
            h = self._layer(name, layer, h, params, buffers, R, training)
        return h.stacked(R)

    def _layer(self, name: str, layer: nn.Module, h: _Act, params: dict, buffers: dict, R: int, training: bool) -> _Act:
        kind = type(layer)
        p = lambda key: params.get(f"{name}.{key}")  # noqa: E731
        if kind in ELEMENTWISE:
            return _Act(layer(h.t), h.folded)
        if kind is nn.Flatten:
            t = h.stacked(R)
            return _Act(t.reshape(R, t.shape[1], -1), folded=False)
        if kind is nn.Unflatten:
            # one dimension more in front: the runs
            return _Act(h.stacked(R).unflatten(layer.dim + 1 if layer.dim > 0 else layer.dim, layer.unflattened_size), folded=False)
        if kind is nn.Linear:
            t = h.stacked(R)
            flat = t.reshape(R, -1, t.shape[-1])
            w, b = p("weight"), p("bias")
            out = torch.bmm(flat, w.transpose(1, 2)) if b is None else torch.baddbmm(b.unsqueeze(1), flat, w.transpose(1, 2))
            return _Act(out.reshape(*t.shape[:-1], out.shape[-1]), folded=False)
        if kind in CONVS:
            t = h.folded_(R)
            if kind is nn.Conv2d:
                t = t.contiguous(memory_format=torch.channels_last)
            w, b = p("weight"), p("bias")
            out = CONVS[kind](t, w.reshape(-1, *w.shape[2:]), None if b is None else b.reshape(-1),
                              layer.stride, layer.padding, layer.dilation, R * layer.groups)
            return _Act(out, folded=True)
        if kind in NORMS:
            return _Act(_batch_norm(name, layer, h.folded_(R), params, buffers, training), folded=True)
        if kind in POOLS:
            t = h.folded_(R)
            if kind is nn.AdaptiveAvgPool2d and layer.output_size in (1, (1, 1)) and t.is_contiguous(memory_format=torch.channels_last):
                # the mean over (H, W) of a channels-last tensor as a view (N, H*W, R*C):
                # its backward stays channels-last (adaptive_avg_pool2d's comes back
                # NCHW and the backward kernels before it convert; measured ~15% slower)
                N, RC, H, W = t.shape
                pooled = t.permute(0, 2, 3, 1).reshape(N, H * W, RC).mean(1)
                return _Act(pooled.view(N, RC, 1, 1), folded=True)
            return _Act(POOLS[kind](t, layer.output_size), folded=True)
        raise AssertionError(f"unsupported layer {name} slipped through unsupported_reason")


def _batch_norm(name: str, layer: Any, t: torch.Tensor, params: dict, buffers: dict, training: bool) -> torch.Tensor:
    """``nn.BatchNorm*.forward`` over R*C channels (see torch/nn/modules/batchnorm.py)."""
    weight, bias = params.get(f"{name}.weight"), params.get(f"{name}.bias")
    mean, var = buffers.get(f"{name}.running_mean"), buffers.get(f"{name}.running_var")
    tracked = buffers.get(f"{name}.num_batches_tracked")
    if training and layer.track_running_stats and tracked is not None:
        tracked.add_(1)
    use_batch_stats = training or (mean is None and var is None)
    keep = not training or layer.track_running_stats
    return F.batch_norm(
        t,
        mean.view(-1) if keep and mean is not None else None,
        var.view(-1) if keep and var is not None else None,
        None if weight is None else weight.reshape(-1),
        None if bias is None else bias.reshape(-1),
        use_batch_stats, layer.momentum, layer.eps,
    )
