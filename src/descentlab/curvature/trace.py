"""Stochastic trace estimates with standard errors.

Hutchinson (1989): tr H = E[z^T H z] for Rademacher z. Hutch++ (Meyer, Musco,
Musco, Woodruff, arXiv 2010.09649): spend a third of the products on a
sketch Q = orth(H S), take tr(Q^T H Q) exactly and Hutchinson on the deflated
(I - QQ^T) H (I - QQ^T); much lower variance when the spectrum has a few
large outliers, as network Hessians do. There is no early stopping by default
(PyHessian's tolerance stop ended its estimate 10.5% low after 9 samples).

``hessian_trace`` works on the model itself: the exact GGN trace as a control
variate, tr H = tr G + tr(H - G), with only the residual H - G estimated, block
by block (see its docstring).
"""

from __future__ import annotations

from dataclasses import dataclass

import math

import numpy as np
import torch
from torch import nn

from ._linop import CountingOperator, apply_rows, orthonormal_rows, rademacher, single_threaded_blas, work_dtype
from ._model import LossFn, ParameterSnapshot, module_modes
from .operators import HessianOperator, _grad

__all__ = ["TraceResult", "hutchinson", "hutchpp", "hessian_trace"]


@dataclass
class TraceResult:
    estimate: float
    stderr: float  # standard error of the stochastic part: std(samples, ddof=1) / sqrt(len(samples))
    n_hvps: int
    samples: np.ndarray  # the quadratic forms z^T A z averaged in the stochastic part
    method: str
    converged: bool | None = None  # tolerance met (None: no tolerance, a fixed budget)
    parts: dict | None = None  # hessian_trace: the GGN trace and the residual's blocks

    def as_dict(self, prefix: str = "trace") -> dict[str, float]:
        return {prefix: self.estimate, f"{prefix}_stderr": self.stderr, f"{prefix}_hvps": float(self.n_hvps)}


def _probes(rng, n, m, dtype, distribution):
    """m probes of length n as the rows of an (m, n) array."""
    if distribution == "rademacher":
        return rademacher(rng, (m, n), dtype)
    if distribution == "gaussian":
        return rng.standard_normal((m, n)).astype(dtype)
    raise ValueError(f"distribution must be 'rademacher' or 'gaussian', got {distribution!r}")


def _stderr(samples: np.ndarray) -> float:
    return float(np.std(samples, ddof=1) / np.sqrt(len(samples))) if len(samples) > 1 else float("nan")


def hutchinson(op, n_probes: int = 100, distribution: str = "rademacher", seed: int = 0) -> TraceResult:
    """Hutchinson's estimator mean(z^T H z) over ``n_probes`` probes (one product each)."""
    if int(n_probes) < 1:
        raise ValueError(f"n_probes must be >= 1, got {n_probes!r}")
    counted = CountingOperator(op)
    rng = np.random.default_rng(seed)
    n = op.shape[0]
    samples = np.empty(int(n_probes))
    with single_threaded_blas():
        for i in range(int(n_probes)):  # one probe at a time: memory stays O(P)
            z = _probes(rng, n, 1, work_dtype(op), distribution)[0]
            samples[i] = float(z @ np.asarray(counted.matvec(z)).reshape(-1))
    return TraceResult(float(samples.mean()), _stderr(samples), counted.count, samples, "hutchinson")


def hutchpp(op, n_hvps: int = 102, distribution: str = "rademacher", seed: int = 0) -> TraceResult:
    """Hutch++ with ``n_hvps`` products: k = n_hvps // 3 sketch columns, k for tr(Q^T H Q),
    the remaining n_hvps - 2k as Hutchinson probes of the deflated operator."""
    if int(n_hvps) < 4:
        raise ValueError(f"hutchpp needs n_hvps >= 4 (sketch, projection and >= 2 probes), got {n_hvps!r}")
    counted = CountingOperator(op)
    rng = np.random.default_rng(seed)
    n, dtype = op.shape[0], work_dtype(op)
    k = min(int(n_hvps) // 3, n)
    n_probes = int(n_hvps) - 2 * k
    with single_threaded_blas():  # blocks are (columns, P) rows: each probe contiguous
        S = _probes(rng, n, k, dtype, distribution)
        Q = orthonormal_rows(apply_rows(counted, S))
        exact_part = float(np.einsum("ij,ij->", Q, apply_rows(counted, Q), dtype=np.float64))
        G = _probes(rng, n, n_probes, dtype, distribution)
        G -= (G @ Q.T) @ Q
        samples = np.einsum("ij,ij->i", G, apply_rows(counted, G), dtype=np.float64)
    return TraceResult(exact_part + float(samples.mean()), _stderr(samples), counted.count, samples, "hutch++")


# ---------------------------------------------------------------------------------------------
# Hessian trace with the exact GGN trace as a control variate
# ---------------------------------------------------------------------------------------------
class _ResidualOperator(HessianOperator):
    """R = H - G = sum_k (dL/df_k) Hess f_k, the Hessian of the linearised loss sum_k stop_grad(dL/df_k) f_k.

    One product is one double backward pass (like an HVP), not an HVP minus a GGN product,
    and R is exact rather than a difference of two rounded products.
    """

    def _first_order(self, a: int, b: int, params: dict[str, torch.Tensor]):
        with module_modes(self.model, self.batchnorm):
            out = self.snapshot.call(self.model, params, self.x[a:b])
        f = out.detach().requires_grad_(True)
        dloss_df = torch.autograd.grad(self.loss_fn(f, self.y[a:b]) * self._weight(a, b), f)[0]
        linearised = (dloss_df.detach() * out).sum()
        return linearised, _grad(linearised, list(params.values()), create_graph=True)


BLOCKINGS = ("module", "all")


def _parameter_blocks(snapshot: ParameterSnapshot, blocks: str) -> list[tuple[str, torch.Tensor]]:
    """(name, flat indices) of each block: the parameters of one module, or all of them."""
    if blocks == "all":
        return [("all", torch.arange(snapshot.num_params))]
    groups: dict[str, list[torch.Tensor]] = {}
    start = 0
    for name, k in zip(snapshot.names, snapshot.numels):
        groups.setdefault(name.rpartition(".")[0], []).append(torch.arange(start, start + k))
        start += k
    return [(module or "(top level)", torch.cat(idx)) for module, idx in groups.items()]


def _check_trace_args(rtol, blocks, min_probes, max_hvps) -> None:
    if rtol is not None and not (isinstance(rtol, (int, float)) and math.isfinite(rtol) and rtol > 0):
        raise ValueError(f"rtol must be a finite number > 0 (or None for a fixed budget), got {rtol!r}")
    if blocks not in BLOCKINGS:
        raise ValueError(f"blocks must be one of {BLOCKINGS}, got {blocks!r}")
    if not isinstance(min_probes, int) or min_probes < 2:
        raise ValueError(f"min_probes must be an integer >= 2 (a standard error needs two samples), got {min_probes!r}")
    if not isinstance(max_hvps, int) or max_hvps < 1:
        raise ValueError(f"max_hvps must be a positive integer, got {max_hvps!r}")


def hessian_trace(model: nn.Module, loss_fn: LossFn, x, y, rtol: float | None = 1e-3, *, blocks: str = "module",
                  min_probes: int = 4, max_hvps: int = 2000, seed: int = 0, chunk_size: int | None = None,
                  ggn_chunk_size: int | None = 1024, dtype: torch.dtype | str | None = None) -> TraceResult:
    """tr H of the mean loss over (x, y): tr G exactly (``ggn_trace``) plus an unbiased estimate of tr(H - G).

    H = G + R with R = sum_k (dL/df_k) Hess f_k (the outputs' curvature weighted by the
    loss gradient). The residual's trace is the sum of the traces of its diagonal blocks
    R_bb, one block per module's own parameters (``blocks="module"``) or one for all
    (``blocks="all"``); each block gets its own Rademacher probes z_b (zero outside the
    block), one product R z_b each (a double backward pass, counted in ``n_hvps``).
    Cross-block terms of R never enter, so their variance does not either: for a network
    that is piecewise linear in each module's parameters (ReLU MLPs and CNNs, eval-mode
    BatchNorm) every R_bb is zero, every sample is 0 and the estimate is tr G with
    standard error 0. For smooth networks (tanh, GELU, ...) R_bb is not zero.

    Guarantees: the estimate is unbiased for any model and loss that ``ggn_trace``
    accepts (mean of per-example losses, deterministic model). ``rtol=None``: exactly
    ``min_probes`` probes per block, averaged. With ``rtol`` (Stein's two-stage procedure):
    ``min_probes`` pilot probes per block give each block's sample variance s_b^2 and a
    pilot estimate t; then n_b = ceil(s_b * sum(s) / (rtol * |t|)^2) fresh probes per block
    (at least 1; Neyman allocation, planned standard error <= rtol * |t|), and only the
    fresh probes enter the estimate, so the sample-dependent stop adds no bias (a stop on
    the running standard error relative to the running estimate was measurably biased
    upwards). ``converged`` is False when that plan did not fit in ``max_hvps`` products
    (the fresh probes are then cut in proportion). ``stderr`` is sqrt(sum_b s_b^2 / n_b)
    with s_b^2 pooled over pilot and fresh probes: an estimate, not a bound, so it may
    exceed the planned rtol * |t| when the pilot underestimated a variance; the error is
    within a few standard errors, not within ``rtol``.

    BatchNorm runs in eval mode (as in ``ggn_trace``); a random model (dropout in training
    mode), empty data and a loss that is not the mean of per-example losses are refused.
    ``chunk_size`` is the residual operator's (None: one kept graph), ``ggn_chunk_size``
    ``ggn_trace``'s. ``parts`` holds the GGN trace, the pilot estimate and, per block,
    (mean, standard error, pilot probes, fresh probes) of its residual trace; ``samples``
    the residual samples that enter the estimate, block by block.
    """
    from .trace_exact import ggn_trace  # trace_exact imports TraceResult from here

    _check_trace_args(rtol, blocks, min_probes, max_hvps)
    residual = _ResidualOperator(model, loss_fn, x, y, chunk_size=chunk_size, dtype=dtype, batchnorm="eval")
    groups = _parameter_blocks(residual.snapshot, blocks)
    least = (min_probes + (rtol is not None)) * len(groups)
    if least > max_hvps:
        raise ValueError(f"max_hvps={max_hvps} is below the {least} products of the first stage "
                         f"({min_probes} probes per block{' + 1 fresh' if rtol is not None else ''}, "
                         f"{len(groups)} blocks)")
    ggn = ggn_trace(model, loss_fn, x, y, chunk_size=ggn_chunk_size, dtype=dtype)
    rng = np.random.default_rng(seed)
    z = torch.zeros(residual.num_params, dtype=residual.torch_dtype, device=residual.snapshot.device)

    def probes(b: int, n: int) -> np.ndarray:
        idx, out = groups[b][1], np.empty(n)
        for i in range(n):
            z.zero_()
            z[idx] = torch.from_numpy(rademacher(rng, len(idx), np.float64)).to(device=z.device, dtype=z.dtype)
            out[i] = float(torch.dot(z[idx].double(), residual.matvec_torch(z)[idx].double()))
        return out

    pilot = [probes(b, min_probes) for b in range(len(groups))]
    pilot_estimate = ggn.estimate + sum(float(p.mean()) for p in pilot)
    converged = None
    if rtol is None:
        fresh = pilot
        pilot_estimate = None
    else:
        sd = np.array([p.std(ddof=1) for p in pilot])
        target = rtol * abs(pilot_estimate)
        plan = (np.ceil(sd * sd.sum() / target**2) if target > 0 else np.full(len(sd), np.inf)) if sd.any() else 0 * sd
        plan = np.maximum(plan, 1)
        room = max_hvps - residual.n_matvecs
        converged = bool(plan.sum() <= room)
        if not converged:  # cut in proportion, at least one fresh probe per block
            share = sd / sd.sum() if sd.any() else np.full(len(sd), 1 / len(sd))
            plan = np.maximum(np.floor(share * (room - len(sd))), 0) + 1
        fresh = [probes(b, int(n)) for b, n in enumerate(plan)]
    means = np.array([float(f.mean()) for f in fresh])
    pooled = [np.concatenate([p, f]) if f is not p else p for p, f in zip(pilot, fresh)]
    var_of_mean = np.array([q.var(ddof=1) / len(f) for q, f in zip(pooled, fresh)])
    parts = {"ggn": ggn.estimate, "pilot_estimate": pilot_estimate,
             "blocks": {name: (float(m), float(np.sqrt(v)), min_probes if rtol is not None else 0, len(f))
                        for (name, _), m, v, f in zip(groups, means, var_of_mean, fresh)}}
    return TraceResult(ggn.estimate + float(means.sum()), float(np.sqrt(var_of_mean.sum())), residual.n_matvecs,
                       np.concatenate(fresh), "ggn+residual", converged, parts)
