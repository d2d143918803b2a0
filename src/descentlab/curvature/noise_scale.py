"""Gradient noise scale (McCandlish, Kaplan, Amodei et al., "An Empirical Model of
Large-Batch Training", arXiv 1812.06162).

B_simple = tr(Sigma) / |G|^2, with Sigma the per-example gradient covariance and
G the true gradient. Because E|G_B|^2 = |G|^2 + tr(Sigma)/B for a batch mean of
B examples, two batch sizes B_small < B_big give unbiased estimates
    |G|^2   ~ (B_big |G_big|^2 - B_small |G_small|^2) / (B_big - B_small)
    tr(Sigma) ~ (|G_small|^2 - |G_big|^2) / (1/B_small - 1/B_big)
(their Appendix A); average each over many batches before taking the ratio.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import torch

__all__ = ["two_batch_estimates", "noise_scale_from_per_example", "noise_scale_two_batch", "noise_scale_hessian"]


def two_batch_estimates(sq_norm_small: float, b_small: float, sq_norm_big: float, b_big: float) -> dict[str, float]:
    """Unbiased |G|^2 and tr(Sigma) from squared norms of batch-mean gradients at two batch sizes."""
    if not 0 < b_small < b_big:
        raise ValueError(f"need 0 < b_small < b_big, got b_small={b_small}, b_big={b_big}")
    g2 = (b_big * sq_norm_big - b_small * sq_norm_small) / (b_big - b_small)
    trace_sigma = (sq_norm_small - sq_norm_big) / (1.0 / b_small - 1.0 / b_big)
    return {"grad_sq_norm": float(g2), "trace_sigma": float(trace_sigma), "b_simple": float(trace_sigma / g2)}


def noise_scale_from_per_example(per_example_grads: torch.Tensor | Iterable[torch.Tensor]) -> dict[str, float]:
    """B_simple from an (N, P) matrix of per-example gradients, or from its row blocks.

    tr(Sigma) uses the unbiased (N - 1) covariance; |G|^2 = |mean|^2 - tr(Sigma)/N
    removes the bias of the squared mean (the B_big = N, B_small = 1 case of the
    two-batch estimate). ``b_simple_naive`` uses |mean|^2 instead.

    Blocks (e.g. chunks of examples as they are computed) are combined by the
    pairwise update of Chan, Golub & LeVeque (1979) for the sum of squared
    deviations, so the (N, P) matrix never has to exist at once; one block is the
    plain two-pass formula.
    """
    blocks = [per_example_grads] if isinstance(per_example_grads, torch.Tensor) else per_example_grads
    n, mean, m2 = 0, None, 0.0
    for block in blocks:
        g = block.to(torch.float64)
        k = g.shape[0]
        if k == 0:
            continue
        block_mean = g.mean(0)
        block_m2 = float(torch.linalg.vector_norm(g - block_mean) ** 2)
        if mean is None:
            n, mean, m2 = k, block_mean, block_m2
            continue
        delta = block_mean - mean
        total = n + k
        m2 += block_m2 + float(delta @ delta) * n * k / total
        mean = mean + delta * (k / total)
        n = total
    if n < 2:
        raise ValueError(f"need at least 2 per-example gradients, got {n}")
    trace_sigma = m2 / (n - 1)
    mean_sq = float(mean @ mean)
    g2 = mean_sq - trace_sigma / n
    return {"grad_sq_norm": g2, "trace_sigma": trace_sigma, "b_simple": trace_sigma / g2,
            "b_simple_naive": trace_sigma / mean_sq, "n": float(n)}


def noise_scale_two_batch(per_example_grads: torch.Tensor, b_small: int, b_big: int, n_draws: int = 100,
                          seed: int = 0) -> dict[str, float]:
    """The two-batch estimate, with |G_small|^2 and |G_big|^2 averaged over ``n_draws`` random
    batches drawn with replacement from the rows of ``per_example_grads``.

    With replacement, E|G_B|^2 = |mean|^2 + tr(Sigma_N)/B exactly, where Sigma_N is
    the covariance of the N rows (divided by N), so the estimates are unbiased
    for that finite population (without replacement a factor (N - B)/(N - 1) enters).
    In training, use the squared norms of real minibatch gradients with
    :func:`two_batch_estimates` instead.
    """
    g = per_example_grads.to(torch.float64)
    n = g.shape[0]
    if not 1 <= b_small < b_big:
        raise ValueError(f"need 1 <= b_small < b_big, got {b_small}, {b_big}")
    rng = np.random.default_rng(seed)
    sq = {}
    for b in (b_small, b_big):
        idx = torch.from_numpy(rng.integers(0, n, size=(int(n_draws), int(b))))
        means = g[idx].mean(1)
        sq[b] = float((means**2).sum(1).mean())
    return two_batch_estimates(sq[b_small], b_small, sq[b_big], b_big)


def noise_scale_hessian(op, per_example_grads: torch.Tensor, max_examples: int | None = None,
                        seed: int = 0) -> dict[str, float]:
    """B_noise = tr(H Sigma) / (G^T H G), the Hessian-weighted noise scale (McCandlish et al., eq. 2.7).

    ``op`` is a curvature operator (e.g. ``HessianOperator``) on the same data and
    parameter layout as the rows of ``per_example_grads``. tr(H Sigma) =
    (1/(N-1)) sum_i (g_i - G)^T H (g_i - G) costs one product per example used;
    ``max_examples`` uses a random subset of the centred rows (unbiased for the
    same mean), and G is always the mean of all rows. Also returns ``b_simple``.
    """
    g = per_example_grads.to(torch.float64)
    n = g.shape[0]
    if n < 2:
        raise ValueError(f"need at least 2 per-example gradients, got {n}")
    if g.shape[1] != op.shape[0]:
        raise ValueError(f"gradients have {g.shape[1]} entries, operator acts on {op.shape[0]}")
    mean = g.mean(0)
    centred = g - mean
    rows = np.arange(n)
    if max_examples is not None and int(max_examples) < n:
        if int(max_examples) < 1:
            raise ValueError(f"max_examples must be positive, got {max_examples!r}")
        rows = np.random.default_rng(seed).choice(n, size=int(max_examples), replace=False)

    def quad(v: torch.Tensor) -> float:
        return float(v.numpy() @ np.asarray(op.matvec(v.numpy()), dtype=np.float64).reshape(-1))

    trace_h_sigma = float(np.mean([quad(centred[i]) for i in rows])) * n / (n - 1)
    g_h_g = quad(mean)
    simple = noise_scale_from_per_example(g)
    return {"b_noise": trace_h_sigma / g_h_g, "trace_h_sigma": trace_h_sigma, "g_h_g": g_h_g,
            "b_simple": simple["b_simple"], "n_hvps": float(len(rows) + 1)}
