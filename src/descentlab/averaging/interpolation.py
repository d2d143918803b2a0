"""Linear and layer-wise interpolation between two models.

theta(alpha) = (1 - alpha) theta_A + alpha theta_B on floating tensors;
integer tensors come from A. Layer-wise interpolation gives each layer its
own alpha; a layer is a tensor name's module prefix (``"3"`` for
``"3.weight"`` and ``"3.bias"``), as listed by :func:`layer_names`.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from .states import Source, StateDict, check_same_architecture, is_merged, load_state

__all__ = ["interpolate", "interpolate_layerwise", "layer_names", "layer_of"]


def layer_of(name: str) -> str:
    """The module prefix of a tensor name ('' for a top-level tensor)."""
    return name.rsplit(".", 1)[0] if "." in name else ""


def layer_names(state: Source) -> list[str]:
    """The layers holding merged (floating) tensors, in state-dict order."""
    out: list[str] = []
    for k, v in load_state(state).items():
        if is_merged(v) and layer_of(k) not in out:
            out.append(layer_of(k))
    return out


def _pair(a: Source, b: Source) -> tuple[StateDict, StateDict]:
    sa, sb = load_state(a), load_state(b)
    check_same_architecture(sa, sb, what="model B")
    return sa, sb


def interpolate(a: Source, b: Source, alpha: float) -> StateDict:
    """(1 - alpha) A + alpha B (alpha outside [0, 1] extrapolates)."""
    sa, sb = _pair(a, b)
    return {k: torch.lerp(v, sb[k].to(v.dtype), float(alpha)) if is_merged(v) else v.clone() for k, v in sa.items()}


def interpolate_layerwise(a: Source, b: Source, alphas: Mapping[str, float], default: float | None = None) -> StateDict:
    """Each layer at its own alpha; layers missing from ``alphas`` take ``default`` (an error if None)."""
    sa, sb = _pair(a, b)
    layers = layer_names(sa)
    unknown = [name for name in alphas if name not in layers]
    if unknown:
        raise ValueError(f"alphas names layers the model does not have: {unknown}; its layers: {layers}")
    missing = [name for name in layers if name not in alphas]
    if missing and default is None:
        raise ValueError(f"no alpha for layers {missing}; give them in alphas or pass default=")
    out = {}
    for k, v in sa.items():
        if not is_merged(v):
            out[k] = v.clone()
            continue
        alpha = float(alphas.get(layer_of(k), default))
        out[k] = torch.lerp(v, sb[k].to(v.dtype), alpha)
    return out
