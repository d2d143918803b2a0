"""In-training instruments: the ``INSTRUMENTS`` registry.

An instrument is built as ``builder(**kwargs)`` from a spec entry
``{"name": ..., "every": k, ...}`` and called by the training loop right after
an optimizer step as ``instrument(step, model, loss_fn, x_train, y_train)``; it
returns a dict ``metric -> value`` (empty on steps where it does not measure),
recorded with split "train". Instruments must leave the model's parameters,
mode and gradients as they found them.
"""

from __future__ import annotations

import torch

from ..registry import Registry

INSTRUMENTS = Registry("instrument")


@INSTRUMENTS.register("grad_norm")
class GradNorm:
    """Global L2 norm of the gradient of the step just taken (the input of the
    refined schedule of Defazio et al., arXiv 2310.07831)."""

    def __init__(self, every: int = 1):
        if every < 1:
            raise ValueError(f"grad_norm: every must be >= 1, got {every}")
        self.every = every

    def __call__(self, step, model, loss_fn, x, y) -> dict[str, float]:
        if step % self.every:
            return {}
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        if not grads:
            return {}
        return {"grad_norm": float(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))))}


@INSTRUMENTS.register("top_eigenvalue")
def top_eigenvalue(every: int = 10, n_examples: int | None = None, tol: float = 1e-3, **kwargs):
    """Sharpness (top Hessian eigenvalue of the training loss, warm-started
    Lanczos) every ``every`` steps, for edge-of-stability plots; see
    ``descentlab.curvature.instruments.TopEigenvalue`` for the options."""
    from ..curvature.instruments import TopEigenvalue

    return TopEigenvalue(every=every, n_examples=n_examples, tol=tol, **kwargs)


@INSTRUMENTS.register("noise_scale")
def noise_scale(every: int = 10, n_examples: int = 512, seed: int = 0, **kwargs):
    """Gradient noise scale B_simple (McCandlish et al.) every ``every`` steps on a fixed
    training subset; see ``descentlab.curvature.noise_instrument.NoiseScale``."""
    from ..curvature.noise_instrument import NoiseScale

    return NoiseScale(every=every, n_examples=n_examples, seed=seed, **kwargs)


@INSTRUMENTS.register("logit_growth")
class LogitGrowth:
    """Every ``every`` steps, the model's ``logit_growth`` on its first
    ``n_examples`` training inputs (fixed, so the curve follows the weights, not
    the sample): for the GPT, the largest attention logit and the mean output
    log-partition (Wortsman et al., arXiv 2309.14322, Sections 3.1-3.2)."""

    def __init__(self, every: int = 10, n_examples: int = 32):
        if every < 1 or n_examples < 1:
            raise ValueError(f"logit_growth: every and n_examples must be >= 1, got {every}, {n_examples}")
        self.every, self.n_examples = every, n_examples

    def __call__(self, step, model, loss_fn, x, y) -> dict[str, float]:
        if step % self.every:
            return {}
        if not hasattr(model, "logit_growth"):
            raise ValueError(f"instrument logit_growth: model {type(model).__name__} has no attention logits (use model gpt)")
        return model.logit_growth(x[: self.n_examples])


def build_instrument(spec: dict):
    return INSTRUMENTS.build(spec)
