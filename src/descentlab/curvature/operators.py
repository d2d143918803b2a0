"""Curvature matrices of a loss over a fixed dataset as scipy ``LinearOperator``s.

``HessianOperator``, ``GGNOperator`` and ``FisherOperator`` act on vectors in
the flattened-parameter space (parameters in ``named_parameters()`` order).
The dataset is processed in chunks and each chunk's contribution is weighted
by ``chunk_size / N``, so a ragged last chunk gives exactly the full-batch
matrix of the mean loss. Because they are ``LinearOperator``s,
``scipy.sparse.linalg.eigsh`` runs Lanczos on them directly (the design of
the curvlinops package by Dangel et al.).

Speed: when the data fit in one chunk (or ``cache_graph=True``), the
first-order graph is built once and every product is one extra backward pass
through it (the graph-reuse trick of PyHessian, Yao et al., arXiv 1912.07145),
which REFERENCES.md 5.1 measured at 29.8 vs 53.2 ms per product for a fresh
double backward (99k-parameter MLP, 2,000 examples, CPU).
Parameters are snapshotted at construction, so the operator is the curvature
at that point even if the model is trained further afterwards.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator
from torch import nn

from ._likelihood import LIKELIHOODS, gaussian_variance, infer_likelihood
from ._model import (
    LossFn,
    ParameterSnapshot,
    as_tensor,
    check_batchnorm_chunks,
    check_batchnorm_mode,
    check_deterministic,
    chunks,
    module_modes,
    num_examples,
    parse_dtype,
)

__all__ = ["CurvatureOperator", "HessianOperator", "GGNOperator", "FisherOperator"]


def _grad(outputs, inputs, grad_outputs=None, create_graph=False, retain_graph=None):
    """``torch.autograd.grad`` that returns zeros for inputs the outputs do not depend on."""
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    if grad_outputs is not None and not isinstance(grad_outputs, (list, tuple)):
        grad_outputs = [grad_outputs]
    keep = [i for i, o in enumerate(outputs) if o.requires_grad]
    if not keep:
        return [torch.zeros_like(t) for t in inputs]
    outs = [outputs[i] for i in keep]
    gos = None if grad_outputs is None else [grad_outputs[i] for i in keep]
    return list(
        torch.autograd.grad(outs, inputs, grad_outputs=gos, create_graph=create_graph,
                            retain_graph=retain_graph, allow_unused=True, materialize_grads=True)
    )


class CurvatureOperator(LinearOperator):
    """Common machinery: data, chunks, parameter snapshot, mode handling, product counting.

    Args:
        model: the network; its parameters, buffers, modes and ``.grad`` are left unchanged.
        loss_fn: ``loss_fn(outputs, targets)`` returning the mean over the batch.
        x, y: the fixed dataset (first dimension = examples).
        chunk_size: examples per forward pass (None: all at once).
        dtype: ``torch.float32`` or ``torch.float64`` (None: the model's dtype); the
            parameter snapshot, the data and the products use it.
        batchnorm: ``"eval"`` uses running statistics (chunking exact), ``"train"``
            uses each chunk's batch statistics (then the matrix depends on chunk_size).
        cache_graph: keep the first-order graph of the whole dataset between products
            (default: only when there is a single chunk, so chunking still saves memory).
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn, x, y, chunk_size: int | None = None,
                 dtype: torch.dtype | str | None = None, batchnorm: str = "eval",
                 cache_graph: bool | None = None):
        self.torch_dtype = parse_dtype(dtype, model)
        self.batchnorm = check_batchnorm_mode(batchnorm)
        self.model = model
        self.loss_fn = loss_fn
        self.snapshot = ParameterSnapshot(model, self.torch_dtype)
        device = self.snapshot.device
        self.x = as_tensor(x, self.torch_dtype, device)
        self.y = as_tensor(y, self.torch_dtype, device)
        self.num_examples = num_examples(self.x, self.y)
        self.ranges = chunks(self.num_examples, chunk_size)
        check_batchnorm_chunks(model, self.batchnorm, self.ranges)
        self.cache_graph = len(self.ranges) == 1 if cache_graph is None else bool(cache_graph)
        self._cache = None
        self.n_matvecs = 0
        with module_modes(model, self.batchnorm):
            check_deterministic(model, self.snapshot, self.x, self.ranges)
        P = self.snapshot.num_params
        super().__init__(dtype=np.dtype("float64" if self.torch_dtype == torch.float64 else "float32"),
                         shape=(P, P))

    # -- torch-level interface -------------------------------------------------------------
    @property
    def num_params(self) -> int:
        return self.snapshot.num_params

    def params_vector(self) -> torch.Tensor:
        """The snapshotted parameters, flattened."""
        return self.snapshot.vector()

    def matvec_torch(self, v: torch.Tensor) -> torch.Tensor:
        """Product with a flat torch vector (counted in ``n_matvecs``)."""
        v = v.to(dtype=self.torch_dtype, device=self.snapshot.device).reshape(-1)
        if v.shape[0] != self.num_params:
            raise ValueError(f"vector has {v.shape[0]} entries, operator has {self.num_params}")
        self.n_matvecs += 1
        pieces = [v[i:j].view(s) for (i, j), s in zip(self._offsets(), self.snapshot.shapes)]
        with torch.enable_grad():
            out = self._product(pieces)
        return self.snapshot.flatten(out).detach()

    def _offsets(self):
        out, i = [], 0
        for k in self.snapshot.numels:
            out.append((i, i + k))
            i += k
        return out

    def _cache_valid(self) -> bool:
        """Whether the kept graph was built from the snapshot as it is now.

        The graph's leaves share storage (and version counters) with the snapshot,
        so an in-place change of a snapshot tensor would make the old graph stale:
        it is rebuilt instead. The model's own parameters are not the snapshot, so
        training the model further leaves the operator (and its graph) unchanged.
        """
        versions = tuple((id(t), t._version) for t in self.snapshot.tensors.values())
        if self._cache is not None and getattr(self, "_cache_versions", None) == versions:
            return True
        self._cache, self._cache_versions = None, versions
        return False

    def _weight(self, a: int, b: int) -> float:
        return (b - a) / self.num_examples

    def _product(self, pieces: list[torch.Tensor]) -> list[torch.Tensor]:
        raise NotImplementedError

    # -- scipy interface -------------------------------------------------------------------
    def _matvec(self, v):
        v = np.asarray(v)
        out = self.matvec_torch(torch.from_numpy(np.ascontiguousarray(v.reshape(-1))))
        return out.cpu().numpy().astype(self.dtype, copy=False).reshape(v.shape)

    def _rmatvec(self, v):
        return self._matvec(v)  # symmetric

    def _matmat(self, V):
        rows = np.ascontiguousarray(np.asarray(V).T)  # one copy, then contiguous columns
        return np.stack([self._matvec(r) for r in rows], axis=1)

    def _adjoint(self):
        return self

    def to_dense(self) -> torch.Tensor:
        """The matrix column by column (P products; only for small models)."""
        eye = torch.eye(self.num_params, dtype=self.torch_dtype)
        return torch.stack([self.matvec_torch(eye[:, j]) for j in range(self.num_params)], dim=1)


class HessianOperator(CurvatureOperator):
    """Hessian of the mean loss over (x, y) with respect to the trainable parameters.

    Products are double-backward Hessian-vector products (Pearlmutter 1994);
    ``gradient()`` and ``loss()`` give the full-batch first-order quantities.
    """

    def _first_order(self, a: int, b: int, params: dict[str, torch.Tensor]):
        with module_modes(self.model, self.batchnorm):
            out = self.snapshot.call(self.model, params, self.x[a:b])
        loss = self.loss_fn(out, self.y[a:b]) * self._weight(a, b)
        grads = _grad(loss, list(params.values()), create_graph=True)
        return loss, grads

    def _graph(self):
        if not self._cache_valid():
            params = self.snapshot.leaves()
            total_loss, total = 0.0, None
            for a, b in self.ranges:
                loss, grads = self._first_order(a, b, params)
                total_loss = total_loss + loss
                total = grads if total is None else [t + g for t, g in zip(total, grads)]
            self._cache = (params, total, total_loss)
        return self._cache

    def _product(self, pieces):
        if self.cache_graph:
            params, grads, _ = self._graph()
            return _grad(grads, list(params.values()), grad_outputs=pieces, retain_graph=True)
        total = None
        for a, b in self.ranges:
            params = self.snapshot.leaves()
            _, grads = self._first_order(a, b, params)
            hv = _grad(grads, list(params.values()), grad_outputs=pieces)
            total = hv if total is None else [t + h for t, h in zip(total, hv)]
        return total

    def gradient(self) -> torch.Tensor:
        """Full-batch gradient of the mean loss, flattened."""
        with torch.enable_grad():
            if self.cache_graph:
                _, grads, _ = self._graph()
                return self.snapshot.flatten(grads).detach()
            total = 0
            for a, b in self.ranges:
                params = self.snapshot.leaves()
                _, grads = self._first_order(a, b, params)
                total = total + self.snapshot.flatten(grads).detach()
            return total

    def loss(self) -> float:
        """Full-batch mean loss."""
        total = 0.0
        with torch.no_grad(), module_modes(self.model, self.batchnorm):
            for a, b in self.ranges:
                out = self.snapshot.call(self.model, self.snapshot.tensors, self.x[a:b])
                total += float(self.loss_fn(out, self.y[a:b])) * self._weight(a, b)
        return total


class _OutputSpaceOperator(CurvatureOperator):
    """G = sum_chunks J^T M J with an output-space matrix M: Jv by the double-vjp trick, then J^T."""

    def _chunk_graph(self, a: int, b: int):
        params = self.snapshot.leaves()
        with module_modes(self.model, self.batchnorm):
            out = self.snapshot.call(self.model, params, self.x[a:b])
        # J^T u is linear in the dummy u; differentiating it w.r.t. u gives J v (forward mode by two vjps).
        u = torch.zeros_like(out, requires_grad=True)
        jtu = _grad(out, list(params.values()), grad_outputs=u, create_graph=True)
        state = self._output_state(out, a, b)
        return params, out, u, jtu, state

    def _graphs(self):
        if not self._cache_valid():
            self._cache = [self._chunk_graph(a, b) for a, b in self.ranges]
        return self._cache

    def _product(self, pieces):
        total = None
        graphs = self._graphs() if self.cache_graph else (self._chunk_graph(a, b) for a, b in self.ranges)
        for params, out, u, jtu, state in graphs:
            jv = _grad(jtu, [u], grad_outputs=pieces, retain_graph=True)[0]
            mjv = self._output_product(state, jv)
            gv = _grad(out, list(params.values()), grad_outputs=mjv, retain_graph=True)
            total = gv if total is None else [t + g for t, g in zip(total, gv)]
        return total

    def _output_state(self, out, a, b):
        raise NotImplementedError

    def _output_product(self, state, jv):
        raise NotImplementedError


class GGNOperator(_OutputSpaceOperator):
    """Generalised Gauss-Newton matrix G = J^T H_loss J (Schraudolph 2002; Martens, arXiv 1412.1193).

    H_loss is the Hessian of the mean loss w.r.t. the network outputs, obtained
    by autograd from ``loss_fn`` itself, so any twice-differentiable loss works.
    """

    def _output_state(self, out, a, b):
        z = out.detach().requires_grad_(True)
        loss = self.loss_fn(z, self.y[a:b]) * self._weight(a, b)
        gz = torch.autograd.grad(loss, z, create_graph=True)[0]
        return z, gz

    def _output_product(self, state, jv):
        z, gz = state
        if not gz.requires_grad:  # loss linear in the outputs
            return torch.zeros_like(jv)
        return torch.autograd.grad(gz, z, grad_outputs=jv, retain_graph=True)[0]


class FisherOperator(_OutputSpaceOperator):
    """True Fisher F = (1/N) sum_i J_i^T E_{y~p(.|x_i)}[grad log p grad log p^T] J_i, in closed form.

    The likelihood p is the one whose mean negative log-likelihood is ``loss_fn``
    (``likelihood=None``, the default: mean cross-entropy -> categorical, mean
    squared error -> Gaussian; any other loss raises), so F equals the GGN for
    these losses. Or explicitly:
    ``likelihood="categorical"``: p = softmax(outputs) over the last dimension of (N, C)
    logits, output-space Fisher diag(p) - p p^T.
    ``likelihood="gaussian"``: N(outputs, variance * Id), output-space Fisher Id / variance;
    ``variance=None`` (only with mean squared error) is C / 2 for C output numbers per
    example, the variance whose negative log-likelihood is the loss.
    The expectation over model-sampled labels is exact, not Monte Carlo. This is not
    the empirical Fisher (1/N) sum g_i g_i^T.
    """

    def __init__(self, model, loss_fn, x, y, chunk_size=None, dtype=None, batchnorm="eval",
                 cache_graph=None, likelihood: str | None = None, variance: float | None = None):
        if likelihood is None:
            likelihood = infer_likelihood(loss_fn)
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS} or None, got {likelihood!r}")
        if likelihood == "categorical" and variance is not None:
            raise ValueError(f"variance applies to the gaussian likelihood only, got variance={variance!r}")
        self.likelihood = likelihood
        self.variance = gaussian_variance(loss_fn, variance) if likelihood == "gaussian" else None
        super().__init__(model, loss_fn, x, y, chunk_size=chunk_size, dtype=dtype, batchnorm=batchnorm,
                         cache_graph=cache_graph)

    def _output_state(self, out, a, b):
        if self.likelihood == "categorical" and out.ndim != 2:
            raise ValueError(f"categorical Fisher needs (N, C) logits, got shape {tuple(out.shape)}")
        per_example = 1.0 / self.num_examples
        if self.likelihood == "categorical":
            return torch.softmax(out.detach(), dim=-1), per_example
        variance = self.variance if self.variance is not None else out[0].numel() / 2.0
        return None, per_example / variance

    def _output_product(self, state, jv):
        p, scale = state
        if p is None:
            return jv * scale
        return (p * jv - p * (p * jv).sum(dim=-1, keepdim=True)) * scale
