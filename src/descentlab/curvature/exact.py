"""The dense Hessian and its spectrum, for small models (the oracle behind the iterative methods)."""

from __future__ import annotations

import torch
from torch import nn

from ._model import (LossFn, ParameterSnapshot, as_tensor, check_batchnorm_chunks, check_batchnorm_mode,
                     check_deterministic, has_batchnorm, module_modes, num_examples, parse_dtype)

__all__ = ["exact_hessian", "exact_spectrum"]


def exact_hessian(model: nn.Module, loss_fn: LossFn, x, y, dtype: torch.dtype | str = torch.float64,
                  batchnorm: str = "eval", max_params: int = 5000) -> torch.Tensor:
    """(P, P) Hessian of the mean loss over (x, y) by ``torch.func.hessian`` on the flat parameters.

    Parameters are in ``named_parameters()`` order, like the operators. Refuses
    more than ``max_params`` parameters (P^2 memory, P backward passes). With
    train-mode BatchNorm (which updates its running statistics in place, which
    torch.func transforms refuse, pytorch#85533) it uses
    ``torch.autograd.functional.hessian`` instead; the statistics updated are copies.
    Empty data, a random model (dropout in training mode) and train-mode BatchNorm
    on a single example are refused with a ValueError.
    """
    dtype = parse_dtype(dtype, model)
    check_batchnorm_mode(batchnorm)
    snap = ParameterSnapshot(model, dtype)
    if snap.num_params > max_params:
        raise ValueError(f"exact_hessian: {snap.num_params} parameters > max_params={max_params}; "
                         "use HessianOperator with eigsh/SLQ instead")
    x = as_tensor(x, dtype, snap.device)
    y = as_tensor(y, dtype, snap.device)
    ranges = [(0, num_examples(x, y))]
    check_batchnorm_chunks(model, batchnorm, ranges)

    def loss_of(flat):
        return loss_fn(snap.call(model, snap.unflatten(flat), x), y)

    with module_modes(model, batchnorm):
        check_deterministic(model, snap, x, ranges)
        if batchnorm == "train" and has_batchnorm(model):
            hess = torch.autograd.functional.hessian(loss_of, snap.vector())
        else:
            hess = torch.func.hessian(loss_of)(snap.vector())
    return hess.detach()


def exact_spectrum(model: nn.Module, loss_fn: LossFn, x, y, **kwargs) -> torch.Tensor:
    """All Hessian eigenvalues, ascending (float64 ``eigvalsh`` of the symmetrised dense Hessian)."""
    hess = exact_hessian(model, loss_fn, x, y, **kwargs).to(torch.float64)
    return torch.linalg.eigvalsh(0.5 * (hess + hess.T))
