"""Post-hoc EMA (Karras et al. 2024, "Analyzing and Improving the Training
Dynamics of Diffusion Models", EDM2, arXiv 2312.02696): power-function EMA
profiles, and the least-squares reconstruction of any EMA length from their
snapshots after training.

A power-function EMA at its t-th update (t = 1, 2, ...) takes
``theta_e <- beta_t theta_e + (1 - beta_t) theta`` with
``beta_t = (1 - 1/t)^(gamma + 1)``; it weights past iterates about as
``tau^gamma`` on [0, t]. Its relative width is
``sigma_rel = sqrt((gamma + 1) / ((gamma + 2)^2 (gamma + 3)))``, inverted here
as the largest real root of ``gamma^3 + 7 gamma^2 + (16 - s) gamma + 12 - s``
with ``s = sigma_rel^-2``.

Reconstruction (the paper's continuous form): snapshot i of a profile with
exponent gamma_i taken at t_i stands for the density
``p_i(tau) = (gamma_i + 1) tau^gamma_i / t_i^(gamma_i + 1)`` on [0, t_i]; the
target profile is written as ``sum_i x_i p_i`` with x solving the least-squares
system ``A x = b`` of their L2 inner products (``p_dot_p``), and the weights
are ``sum_i x_i theta_i``.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

FORMAT = "descentlab-posthoc-ema/1"


def gamma_to_sigma_rel(gamma: float) -> float:
    return float(np.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3))))


def sigma_rel_to_gamma(sigma_rel: float) -> float:
    """The exponent gamma of the profile of relative width ``sigma_rel`` (> -1)."""
    if not 0 < sigma_rel:
        raise ValueError(f"sigma_rel must be positive, got {sigma_rel!r}")
    s = sigma_rel ** -2.0
    roots = np.roots([1.0, 7.0, 16.0 - s, 12.0 - s])
    real = roots[np.abs(roots.imag) < 1e-9].real
    gamma = float(real.max()) if real.size else -np.inf
    # sigma_rel rises from 0 at gamma = -1 and falls again; only the falling branch
    # (the largest root) has an EMA-like profile, and it needs gamma > -1.
    if not gamma > -1 or not np.isclose(gamma_to_sigma_rel(gamma), sigma_rel, rtol=1e-9, atol=0):
        raise ValueError(f"sigma_rel {sigma_rel!r} has no power-function profile (too wide)")
    return gamma


def power_beta(t: float, gamma: float) -> float:
    """The decay of the t-th update (t >= 1; the first copies: beta = 0)."""
    return (1.0 - 1.0 / t) ** (gamma + 1.0)


def p_dot_p(t_a: Any, gamma_a: Any, t_b: Any, gamma_b: Any) -> np.ndarray:
    """L2 inner product of two profiles (t_a, gamma_a) and (t_b, gamma_b), broadcast."""
    t_a, gamma_a, t_b, gamma_b = (np.asarray(v, dtype=np.float64) for v in (t_a, gamma_a, t_b, gamma_b))
    g = gamma_a + gamma_b + 1.0
    # min^g / (t_a^(gamma_a+1) t_b^(gamma_b+1)) in logs: the powers alone overflow
    # float64 for short EMAs (sigma_rel 0.01: gamma ~ 4,900) at a few thousand steps.
    log_ratio = g * np.log(np.minimum(t_a, t_b)) - (gamma_a + 1) * np.log(t_a) - (gamma_b + 1) * np.log(t_b)
    return (gamma_a + 1) * (gamma_b + 1) * np.exp(log_ratio) / g


def posthoc_coefficients(ts: Sequence[float], gammas: Sequence[float], t_target: float, gamma_target: float) -> np.ndarray:
    """The least-squares coefficients x of the snapshots (ts, gammas) for the target profile."""
    ts, gammas = np.asarray(ts, dtype=np.float64), np.asarray(gammas, dtype=np.float64)
    a = p_dot_p(ts[:, None], gammas[:, None], ts[None, :], gammas[None, :])
    b = p_dot_p(ts, gammas, t_target, gamma_target)
    return np.linalg.lstsq(a, b, rcond=None)[0]


def reconstruct_posthoc_ema(record: dict[str, Any] | str, sigma_rel: float, step: int | None = None) -> dict[str, Any]:
    """The weights of the power-function EMA of width ``sigma_rel`` at ``step``
    (default: the last snapshot's), from a post-hoc EMA record (a
    ``final.<name>.pt`` file of a ``posthoc_ema`` averager, or its path) using
    the snapshots taken up to ``step``. Floating tensors are the least-squares
    combination (in float64, cast back); integer buffers are the latest snapshot's."""
    import torch

    if not isinstance(record, dict):
        from ..checkpoints import CorruptArtifact, read_torch_file

        path, record = record, read_torch_file(record)
        if not isinstance(record, dict) or record.get("format") != FORMAT:
            raise CorruptArtifact(f"{path}: not a post-hoc EMA record (format {FORMAT!r})")
    snapshots = record["snapshots"]
    if step is not None:
        snapshots = [s for s in snapshots if s["step"] <= step]
    if not snapshots:
        raise ValueError(f"no post-hoc EMA snapshot at or before step {step}")
    last = max(snapshots, key=lambda s: s["t"])
    x = posthoc_coefficients([s["t"] for s in snapshots], [s["gamma"] for s in snapshots],
                             last["t"], sigma_rel_to_gamma(sigma_rel))
    out = {}
    for key, latest in last["weights"].items():
        if not (latest.is_floating_point() or latest.is_complex()):
            out[key] = latest.clone()
            continue
        total = torch.zeros_like(latest, dtype=torch.float64)
        for coef, snap in zip(x, snapshots):
            total += float(coef) * snap["weights"][key].to(torch.float64)
        out[key] = total.to(latest.dtype)
    return out
