"""Models: the ``MODELS`` registry.

A model builder is called as ``builder(input_shape, num_outputs, **kwargs)``,
where ``input_shape`` is one example's shape, e.g. ``(40,)`` for MNIST-1D or
``(1, 8, 8)`` for the digits images.
"""

from __future__ import annotations

import math
from typing import Sequence

from torch import nn

from ..registry import Registry

MODELS = Registry("model")

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "silu": nn.SiLU}


def _activation(name: str) -> type[nn.Module]:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; valid: {', '.join(sorted(ACTIVATIONS))}")
    return ACTIVATIONS[name]


@MODELS.register("mlp")
def mlp(
    input_shape: Sequence[int],
    num_outputs: int,
    width: int = 100,
    depth: int = 2,
    activation: str = "relu",
    bias: bool = True,
) -> nn.Sequential:
    """``depth`` hidden layers of ``width`` units; inputs are flattened."""
    if depth < 0 or width < 1:
        raise ValueError(f"mlp: need depth >= 0 and width >= 1, got depth={depth}, width={width}")
    act = _activation(activation)
    layers: list[nn.Module] = [nn.Flatten()]
    fan_in = math.prod(input_shape)
    for _ in range(depth):
        layers += [nn.Linear(fan_in, width, bias=bias), act()]
        fan_in = width
    layers.append(nn.Linear(fan_in, num_outputs, bias=bias))
    return nn.Sequential(*layers)


@MODELS.register("cnn")
def cnn(
    input_shape: Sequence[int],
    num_outputs: int,
    channels: int = 16,
    depth: int = 2,
    kernel_size: int = 3,
    batchnorm: bool = False,
    activation: str = "relu",
) -> nn.Sequential:
    """A small CNN: ``depth`` conv blocks (conv, [BN], act), global average pool, linear.

    1-D inputs of shape (L,) or (C, L) use Conv1d; images (C, H, W) use Conv2d.
    """
    shape = tuple(input_shape)
    if len(shape) == 1:
        shape = (1, shape[0])
    if len(shape) not in (2, 3):
        raise ValueError(f"cnn: inputs must be (L,), (C, L) or (C, H, W), got {tuple(input_shape)}")
    conv, norm, pool = (
        (nn.Conv1d, nn.BatchNorm1d, nn.AdaptiveAvgPool1d)
        if len(shape) == 2
        else (nn.Conv2d, nn.BatchNorm2d, nn.AdaptiveAvgPool2d)
    )
    act = _activation(activation)
    layers: list[nn.Module] = [nn.Unflatten(1, shape)]
    in_channels = shape[0]
    for _ in range(depth):
        layers.append(conv(in_channels, channels, kernel_size, padding=kernel_size // 2, bias=not batchnorm))
        if batchnorm:
            layers.append(norm(channels))
        layers.append(act())
        in_channels = channels
    layers += [pool(1), nn.Flatten(), nn.Linear(in_channels, num_outputs)]
    return nn.Sequential(*layers)


def build_model(spec: dict, input_shape: Sequence[int], num_outputs: int) -> nn.Module:
    return MODELS.build(spec, tuple(input_shape), num_outputs)


# The small GPT of the language-model studies; imported last: it registers into MODELS.
from . import gpt  # noqa: E402,F401
