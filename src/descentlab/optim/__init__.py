"""Optimizers: the ``OPTIMIZERS`` registry (name -> ``torch.optim.Optimizer`` class).

Where torch ships a method we register torch's class rather than rewriting it.
Every registered builder is called as ``builder(params, **hyperparameters)``.

Optimizers that need more than a plain ``step()`` tell the training loop so
through class attributes:

- every optimizer is stepped with a closure (``zero_grad, forward, loss,
  backward``), so two-step methods (SAM) and loss-based ones (MoMo) work;
- ``create_graph = True``: the closure's backward keeps the graph
  (Hessian-vector products, e.g. AdaHessian);
- ``train()`` / ``eval()`` methods (Schedule-Free) are called around evaluation
  and checkpointing, so evaluated and saved weights are the averaged ones.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any, Iterable

import torch

from ..registry import Registry

OPTIMIZERS = Registry("optimizer")

# torch ships these: register its classes, never a rewrite.
OPTIMIZERS.register("sgd", torch.optim.SGD)
OPTIMIZERS.register("adam", torch.optim.Adam)
OPTIMIZERS.register("adamw", torch.optim.AdamW)
OPTIMIZERS.register("adagrad", torch.optim.Adagrad)
OPTIMIZERS.register("adafactor", torch.optim.Adafactor)
OPTIMIZERS.register("nadam", torch.optim.NAdam)
OPTIMIZERS.register("radam", torch.optim.RAdam)


@OPTIMIZERS.register("amsgrad")
def amsgrad(params: Iterable[Any], **hparams: Any) -> torch.optim.Adam:
    """torch's Adam with ``amsgrad=True`` (running max of v, divided by sqrt(bc2))."""
    return torch.optim.Adam(params, amsgrad=True, **hparams)


# Our own optimizers live one family per module in this package and register
# themselves on import; importing them all here fills the registry.
for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")


# Every optimizer class of ours, importable from the package (``from
# descentlab.optim import Lion``); the registry holds the same classes.
from .adagrad_norm import AdaGradNorm  # noqa: E402
from .adahessian import AdaHessian  # noqa: E402
from .adamp import SGDP, AdamP  # noqa: E402
from .ademamix import AdEMAMix  # noqa: E402
from .adamw_decoupled import AdamWDecoupled  # noqa: E402
from .diffgrad import DiffGrad  # noqa: E402
from .exadam import EXAdam  # noqa: E402
from .grams import Grams  # noqa: E402
from .lion import Lion  # noqa: E402
from .mars import MARS  # noqa: E402
from .momo import Momo, MomoAdam  # noqa: E402
from .muon import MuonAdamW  # noqa: E402
from .nag_gs import NAGGS  # noqa: E402
from .sam import ASAM, SAM  # noqa: E402
from .schedulefree import ScheduleFreeAdamW, ScheduleFreeSGD  # noqa: E402
from .shampoo import Shampoo  # noqa: E402

__all__ = [
    "OPTIMIZERS", "build_optimizer",
    "AdaGradNorm", "AdaHessian", "AdamP", "AdamWDecoupled", "SGDP", "AdEMAMix", "DiffGrad", "EXAdam", "Grams",
    "Lion", "MARS", "Momo", "MomoAdam", "MuonAdamW", "NAGGS", "SAM", "ASAM",
    "ScheduleFreeAdamW", "ScheduleFreeSGD", "Shampoo",
]


def build_optimizer(params: Iterable[Any], spec: dict[str, Any]) -> torch.optim.Optimizer:
    """Build an optimizer from ``{"name": ..., **hyperparameters}``."""
    return OPTIMIZERS.build(spec, params)
