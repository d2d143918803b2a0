"""Penalty terms added to a base loss: the log-partition penalty (on the logits) and
norm loss (on the model).

Both are wrappers in the registry, so a config adds them around any loss:

    {"name": "log_partition_penalty", "base": {"name": "cross_entropy"}, "coefficient": 1e-4}
    {"name": "norm_loss", "base": {"name": "cross_entropy"}, "coefficient": 1e-3}

and they nest (a ``norm_loss`` whose base is a ``log_partition_penalty``).
``norm_loss`` needs the model: ``build_loss(spec, model=model)`` binds it (or
``loss.bind_model(model)``).

The log-partition penalty is often called "z-loss" (PaLM); the registered name
``z_loss`` still builds it but is deprecated (a DeprecationWarning), because the
literature's Z-loss (de Brébisson & Vincent, arXiv 1604.08859) is another loss,
registered as ``spherical_z_loss`` (classification.py).
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from . import LOSSES, check_classification


def _build_base(base: dict | str | nn.Module) -> nn.Module:
    if isinstance(base, nn.Module):
        return base
    if isinstance(base, (dict, str)):
        return LOSSES.build(base)
    raise TypeError(f"base must be a loss spec (dict or name) or an nn.Module, got {type(base).__name__}")


def log_partition_penalty(outputs: torch.Tensor) -> torch.Tensor:
    """mean over the batch of logsumexp(z)^2 (multiply by the coefficient yourself)."""
    return (torch.logsumexp(outputs, dim=-1) ** 2).mean()


def z_loss_penalty(outputs: torch.Tensor) -> torch.Tensor:
    """Deprecated name of ``log_partition_penalty``."""
    warnings.warn("z_loss_penalty is deprecated: use log_partition_penalty (the same function)",
                  DeprecationWarning, stacklevel=2)
    return log_partition_penalty(outputs)


@LOSSES.register("log_partition_penalty")
class LogPartitionPenalty(nn.Module):
    """base(outputs, targets) + coefficient * mean(logsumexp(z)^2).

    The auxiliary "z-loss" of PaLM (Chowdhery et al., arXiv 2204.02311, coefficient
    1e-4) that keeps the softmax normaliser log Z near 0; studied with qk-layernorm
    against logit divergence in Wortsman et al., arXiv 2309.14322. Not the
    spherical Z-loss of arXiv 1604.08859 (``spherical_z_loss``).
    """

    def __init__(self, base: dict | str | nn.Module = "cross_entropy", coefficient: float = 1e-4,
                 *, name: str = "log_partition_penalty"):
        super().__init__()
        self.name = name  # in error messages: the name the config used
        if not coefficient >= 0:
            raise ValueError(f"{name}: coefficient must be >= 0, got {coefficient}")
        self.base = _build_base(base)
        self.coefficient = float(coefficient)

    def forward(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        check_classification(outputs, targets, self.name)
        return self.base(outputs, targets) + self.coefficient * log_partition_penalty(outputs)


@LOSSES.register("z_loss")
def deprecated_z_loss(base: dict | str | nn.Module = "cross_entropy", coefficient: float = 1e-4) -> LogPartitionPenalty:
    """Deprecated name of ``log_partition_penalty`` (warns, then builds it)."""
    warnings.warn(
        "loss 'z_loss' is deprecated: it is the log-partition penalty, registered as "
        "'log_partition_penalty' (the literature's Z-loss, arXiv 1604.08859, is 'spherical_z_loss')",
        DeprecationWarning, stacklevel=2)
    return LogPartitionPenalty(base, coefficient, name="z_loss")


def norm_penalty(model: nn.Module, coefficient: float = 1.0, skip_vectors: bool = True) -> torch.Tensor:
    """coefficient * sum over output neurons / filters i of (1 - ||w_i||_2)^2.

    Georgiou et al., "Norm Loss: An efficient yet effective regularization method
    for deep neural networks", arXiv 2103.06583. w_i is row i of a weight of shape
    (out, ...) flattened (a Linear's output neuron, a conv's output filter). With
    ``skip_vectors`` (default) 1-d parameters (biases, norm-layer scales) are left
    out; otherwise each counts as a single vector. Its gradient,
    2 coefficient (1 - 1/||w_i||) w_i, is the correction Ranger21 applies.
    """
    terms = []
    for param in model.parameters():
        if param.ndim >= 2:
            norms = param.flatten(1).norm(dim=1)
        elif param.ndim == 1 and not skip_vectors:
            norms = param.norm().reshape(1)
        else:
            continue
        terms.append(((1.0 - norms) ** 2).sum())
    if not terms:
        raise ValueError("norm_loss: the model has no weight matrices or filters to regularise")
    return coefficient * torch.stack(terms).sum()


@LOSSES.register("norm_loss")
class NormLoss(nn.Module):
    """base(outputs, targets) + coefficient * sum_i (1 - ||w_i||)^2 over the bound model.

    Bind the model with ``build_loss(spec, model=model)`` or ``bind_model(model)``;
    the model is held by reference, not registered as a submodule, so the loss's
    parameters and state dict stay empty.
    """

    def __init__(
        self, base: dict | str | nn.Module = "cross_entropy", coefficient: float = 1e-3, skip_vectors: bool = True
    ):
        super().__init__()
        if not coefficient >= 0:
            raise ValueError(f"norm_loss: coefficient must be >= 0, got {coefficient}")
        self.base = _build_base(base)
        self.coefficient = float(coefficient)
        self.skip_vectors = bool(skip_vectors)
        object.__setattr__(self, "_model", None)

    def bind_model(self, model: nn.Module) -> "NormLoss":
        if not isinstance(model, nn.Module):
            raise TypeError(f"norm_loss: bind_model needs an nn.Module, got {type(model).__name__}")
        object.__setattr__(self, "_model", model)
        return self

    def forward(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self._model is None:
            raise RuntimeError(
                "norm_loss: no model bound; build it with build_loss(spec, model=model) "
                "or call loss.bind_model(model) first"
            )
        return self.base(outputs, targets) + norm_penalty(self._model, self.coefficient, self.skip_vectors)
