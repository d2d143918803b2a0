"""In-training curvature instruments, called by the training loop as
``instrument(step, model, loss_fn, x_train, y_train) -> dict[str, float]``.

``TopEigenvalue`` tracks the sharpness (top Hessian eigenvalue) for
edge-of-stability plots (Cohen, Kaur, Li, Kolter, Talwalkar, arXiv 2103.00065):
full-batch GD's sharpness rises to about 2/lr and hovers there.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from ._model import module_modes
from .eigen import top_eigenvalues
from .operators import HessianOperator

__all__ = ["TopEigenvalue"]


class TopEigenvalue:
    """Top Hessian eigenvalue every ``every`` steps, on a fixed subset of the training set.

    Args:
        every: measure on steps that are multiples of ``every`` (step 0 included).
        n_examples: size of the fixed random subset (None: all examples); chosen at
            the first measurement with ``seed`` and reused, so changes are due to
            the weights and not the data (the EoS protocol uses 5,000 examples).
        tol: relative residual tolerance of the top Ritz pair.
        method: ``"lanczos"`` (early-stopping Lanczos: a warm start near the answer
            converges in a few products) or ``"eigsh"`` (ARPACK, which spends at
            least ncv = 20 products per call even when warm-started).
        chunk_size, dtype, batchnorm: passed to :class:`HessianOperator`.

    Each measurement is warm-started from the previous top eigenvector. The
    model is evaluated with dropout off (all modules in eval mode, BatchNorm as
    ``batchnorm`` says); its modes and parameters are restored. Returns
    ``{"sharpness", "sharpness_residual", "sharpness_hvps"}``, or ``{}`` off
    its steps and when the weights or the loss on the subset are not finite
    (a diverging run).
    """

    def __init__(self, every: int = 1, n_examples: int | None = None, tol: float = 1e-3,
                 chunk_size: int | None = None, dtype=None, batchnorm: str = "eval", seed: int = 0,
                 prefix: str = "sharpness", method: str = "lanczos"):
        if int(every) < 1:
            raise ValueError(f"every must be a positive integer, got {every!r}")
        if n_examples is not None and int(n_examples) < 1:
            raise ValueError(f"n_examples must be positive or None, got {n_examples!r}")
        if not tol >= 0:
            raise ValueError(f"tol must be >= 0, got {tol!r}")
        self.every, self.n_examples, self.tol = int(every), n_examples, float(tol)
        self.chunk_size, self.dtype, self.batchnorm, self.seed = chunk_size, dtype, batchnorm, seed
        if method not in ("lanczos", "eigsh"):
            raise ValueError(f"method must be 'lanczos' or 'eigsh', got {method!r}")
        self.prefix, self.method = prefix, method
        self.indices: torch.Tensor | None = None
        self.eigenvector: np.ndarray | None = None

    def _subset(self, n: int) -> torch.Tensor | None:
        if self.n_examples is None or self.n_examples >= n:
            return None
        if self.indices is None:
            gen = torch.Generator().manual_seed(self.seed)
            self.indices = torch.randperm(n, generator=gen)[: int(self.n_examples)].sort().values
        return self.indices

    def __call__(self, step: int, model: nn.Module, loss_fn, x_train, y_train) -> dict[str, float]:
        if step % self.every != 0:
            return {}
        if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
            return {}  # a run blowing up: no curvature to measure; the loop marks it diverged at its next log
        idx = self._subset(len(x_train))
        x, y = (x_train, y_train) if idx is None else (x_train[idx.to(x_train.device)], y_train[idx.to(y_train.device)])
        with module_modes(model):
            model.eval()
            op = HessianOperator(model, loss_fn, x, y, chunk_size=self.chunk_size, dtype=self.dtype,
                                 batchnorm=self.batchnorm)
            if not math.isfinite(op.loss()):
                return {}  # finite weights whose outputs overflow: diverging too (one forward, against the HVPs to come)
            v0 = self.eigenvector if self.eigenvector is not None and self.eigenvector.shape[0] == op.shape[0] else None
            res = top_eigenvalues(op, k=1, tol=self.tol, v0=v0, seed=self.seed, method=self.method)
        self.eigenvector = res.eigenvectors[:, 0].copy()
        p = self.prefix
        return {p: float(res.eigenvalues[0]), f"{p}_residual": float(res.residuals[0]),
                f"{p}_hvps": float(res.n_hvps)}

    # The training loop saves these with its resume point, so a resumed run
    # warm-starts from the same vector and records the same numbers.
    def state_dict(self) -> dict:
        return {
            "indices": self.indices,
            "eigenvector": None if self.eigenvector is None else torch.from_numpy(self.eigenvector.copy()),
        }

    def load_state_dict(self, state: dict) -> None:
        self.indices = state["indices"]
        vec = state["eigenvector"]
        self.eigenvector = None if vec is None else vec.numpy().copy()
