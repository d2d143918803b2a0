"""MoMo and MoMo-Adam (Schaipp et al., "MoMo: Momentum Models for Adaptive Learning
Rates", ICML 2024, arXiv 2305.07583); official code fabian-sp/MoMo (``momo-opt``).

MoMo keeps exponential averages d (gradients), f_bar (losses) and gamma
(<g_i, x_i>) and takes the step of the truncated model
    tau = min(lr / rho, (f_bar - rho*lb + <d, x> - gamma)_+ / ||d||^2),   x <- x - tau d,
with rho = 1 (or 1 - beta^k with ``bias_correction``); weight decay lambda enters
proximally: the numerator scales f_bar - rho*lb and gamma by (1 + lr*lambda) and
x is divided by (1 + lr*lambda). MoMo-Adam uses Adam's EMAs and preconditioner
D = sqrt(v / (1 - beta2^k)) + eps, the norm ||d||^2_{D^-1} and step x - tau d/D,
with rho = 1 - beta1^k.

The model is the whole parameter vector: <d, x>, gamma and ||d||^2 are summed
over all param groups, and each group applies its own ``lr`` and
``weight_decay`` (as the official code does). ``beta``/``betas``, ``lb`` and
the bias correction are global: they may not differ between groups.

Agreement with ``momo-opt`` 0.1.0 (float64, 20 steps, with and without
``use_fstar``): 1e-12, when the official code runs under a float64 default
dtype. Otherwise it keeps the <g, x> average in a float32 ``torch.zeros(1)`` /
``torch.tensor(0.)``: measured 2.5e-7 off with ``bias_correction=True``, 2e-8
for MoMo-Adam with ``use_fstar``.

Both need the loss, so ``step(closure)`` requires the closure (the training
loop always passes one). Complex parameters enter as their real views (inner
products and norms of the (real, imaginary) pairs), as torch.optim does. ``use_fstar=True`` replaces the fixed lower bound by
the official online estimate (MoMo*), kept in the global state.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
from torch._C._nn import flatten_dense_tensors

from . import OPTIMIZERS
from ._base import adam_direction, as_real, check_gradients, real_view, split_small

_GLOBAL = "global"  # key of the model-level state (step, loss average) in self.state


class _MomoBase(torch.optim.Optimizer):
    _global_keys: tuple[str, ...] = ()

    def _check_global_hparams(self) -> None:
        first = self.param_groups[0]
        for group in self.param_groups[1:]:
            for key in self._global_keys:
                if group[key] != first[key]:
                    raise ValueError(
                        f"{type(self).__name__}: {key!r} is global (one loss model for all "
                        f"parameters) but the param groups set {first[key]!r} and {group[key]!r}"
                    )

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        self._check_global_hparams()

    def _loss(self, closure: Callable[[], Any] | None):
        if closure is None:
            raise ValueError(f"{type(self).__name__} needs the loss: call step(closure)")
        with torch.enable_grad():
            loss = closure()
        return loss

    @staticmethod
    def _value(loss) -> float:
        return float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)

    def _global_state(self) -> dict[str, Any]:
        if _GLOBAL not in self.state:
            self.state[_GLOBAL] = {"step": 0, "loss_avg": 0.0}
        return self.state[_GLOBAL]

    def _adaptive_step(self, glob: dict[str, Any], group: dict[str, Any], rho: float, lb: float,
                       dot: float, gamma: float, norm: float) -> float:
        """tau = min(lr / rho, (s (f_bar - rho f*) + <d, x> - s gamma)_+ / norm), s = 1 + lr lambda.

        f* is ``lb``, or with ``use_fstar`` the online estimate of the official
        code (MoMo*), kept in the global state as ``lb_estimate``: reset to
        cap / (2 s rho) when the cap s f_bar + <d, x> - s gamma falls below
        s rho f*, then, after the step, set to (f_bar + <d, x> - gamma -
        tau norm / 2) / rho; never below ``lb``. Groups are taken in order,
        each seeing the estimate the previous one left.
        """
        lr = group["lr"]
        shrink = 1.0 + lr * group["weight_decay"]
        f_bar = glob["loss_avg"]
        # .get: param groups saved before use_fstar existed load without the key
        use_fstar = group.get("use_fstar", False)
        fstar = lb
        if use_fstar:
            fstar = glob.setdefault("lb_estimate", lb)
            cap = shrink * f_bar + dot - shrink * gamma
            if cap < shrink * rho * fstar:
                fstar = max(cap / (2.0 * shrink * rho), lb)
        numerator = shrink * (f_bar - rho * fstar) + dot - shrink * gamma
        tau = min(lr / rho, max(numerator, 0.0) / norm) if norm > 0 else 0.0
        if use_fstar:
            glob["lb_estimate"] = max((f_bar + dot - gamma - 0.5 * tau * norm) / rho, lb)
        return tau

    def _active(self) -> list[tuple[dict[str, Any], list[torch.Tensor]]]:
        out = []
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                check_gradients(self, params)
                out.append((group, params))
        return out

    def _real_views(self, params: list[torch.Tensor], *keys: str) -> list[list[torch.Tensor]]:
        """[params, grads, state[key] for each key], complex tensors as their real
        views: a complex parameter is updated as its real view (torch.optim's convention)."""
        return [[real_view(self, p) for p in params], [as_real(p.grad) for p in params],
                *([as_real(self.state[p][key]) for p in params] for key in keys)]


def _dots(xs: list[torch.Tensor], ys: list[torch.Tensor]) -> torch.Tensor:
    """<x_i, y_i> for each pair, as one 1-D tensor.

    Large tensors: ``torch.dot`` (one pass, no product tensor). Small CPU
    tensors: their products concatenated and summed per tensor in one
    ``segment_reduce`` (a Python call per tensor would cost more than the sums).
    """
    small, others = split_small(xs)
    parts, order = [], []
    for idx in small:
        products = torch._foreach_mul([xs[i] for i in idx], [ys[i] for i in idx])
        lengths = torch.tensor([xs[i].numel() for i in idx])
        parts.append(torch.segment_reduce(flatten_dense_tensors(products), "sum", lengths=lengths))
        order += idx
    if others:
        parts.append(torch.stack([torch.dot(xs[i].reshape(-1), ys[i].reshape(-1)) for i in others]))
        order += others
    values = torch.cat(parts) if len(parts) > 1 else parts[0]
    if order == sorted(order):
        return values
    return values[torch.tensor(order).argsort().to(values.device)]


def _average_dots(averages: list[torch.Tensor], new: torch.Tensor, beta: float, fresh: bool) -> torch.Tensor:
    """gamma_i <- beta gamma_i + (1 - beta) <g_i, x_i> (``fresh``: <g_i, x_i>) for the
    0-dim per-parameter states ``averages``, all at once; returns their sum."""
    averaged = new.clone() if fresh else torch.stack(averages).mul_(beta).add_(new, alpha=1.0 - beta)
    torch._foreach_copy_(averages, list(averaged.unbind()))
    return averaged.sum()


def _check(name: str, value: float, ok: bool) -> None:
    if not ok:
        raise ValueError(f"Invalid {name}: {value}")


@OPTIMIZERS.register("momo")
class Momo(_MomoBase):
    """MoMo on SGD with momentum (arXiv 2305.07583, Algorithm 1); defaults from ``momo-opt``.

    Args:
        lr: the cap alpha on the adaptive step (MoMo is robust to large values).
        beta: EMA factor of gradients, losses and <g, x>.
        weight_decay: proximal (divisive) weight decay.
        lb: lower bound f_* on the loss (0 for most losses).
        bias_correction: zero-initialised EMAs with rho = 1 - beta^k; if False
            (default) the EMAs start at the first values and rho = 1.
        use_fstar: estimate f_* online, starting from and never below ``lb``
            (the official code's MoMo*; see ``_adaptive_step``).
        foreach: multi-tensor (None/True) or per-parameter loop (False).
    """

    _global_keys = ("beta", "lb", "bias_correction", "use_fstar")

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1.0,
        beta: float = 0.9,
        weight_decay: float = 0.0,
        lb: float = 0.0,
        bias_correction: bool = False,
        use_fstar: bool = False,
        foreach: bool | None = None,
    ):
        _check("learning rate", lr, lr >= 0.0)
        _check("beta", beta, 0.0 <= beta < 1.0)
        _check("weight_decay", weight_decay, weight_decay >= 0.0)
        defaults = dict(lr=lr, beta=beta, weight_decay=weight_decay, lb=lb,
                        bias_correction=bias_correction, use_fstar=bool(use_fstar), foreach=foreach)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None):
        loss = self._loss(closure)
        active = self._active()  # checks the gradients before any state changes
        first = self.param_groups[0]
        beta, lb, bias_correction = first["beta"], first["lb"], first["bias_correction"]
        glob = self._global_state()
        glob["step"] = k = glob["step"] + 1
        f = self._value(loss)
        # Without bias correction the averages start at the first values.
        fresh = k == 1 and not bias_correction
        glob["loss_avg"] = f if fresh else beta * glob["loss_avg"] + (1.0 - beta) * f
        rho = 1.0 - beta**k if bias_correction else 1.0

        dots, gammas, norms = [], [], []
        for group, params in active:
            for p in params:
                state = self.state[p]
                if "grad_avg" not in state:
                    state["grad_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["grad_dot_w"] = torch.zeros((), dtype=p.real.dtype, device=p.device)
            params, grads, ds, gws = self._real_views(params, "grad_avg", "grad_dot_w")
            if group["foreach"] is False:
                for p, g, d, gw in zip(params, grads, ds, gws):
                    new_dot = (p * g).sum()
                    if fresh:
                        d.copy_(g)
                        gw.copy_(new_dot)
                    else:
                        d.mul_(beta).add_(g, alpha=1.0 - beta)
                        gw.mul_(beta).add_(new_dot, alpha=1.0 - beta)
                    dots.append((p * d).sum())
                    gammas.append(gw.clone())
                    norms.append(torch.linalg.vector_norm(d).square())
            else:
                gammas.append(_average_dots(gws, _dots(params, grads), beta, fresh))
                if fresh:
                    torch._foreach_copy_(ds, grads)
                else:
                    torch._foreach_mul_(ds, beta)
                    torch._foreach_add_(ds, grads, alpha=1.0 - beta)
                dots.append(_dots(params, ds).sum())
                norms.append(torch.stack(torch._foreach_norm(ds)).square().sum())
        if not active:
            return loss
        dot = torch.stack(dots).sum().item()
        gamma = torch.stack(gammas).sum().item()
        norm = torch.stack(norms).sum().item()

        for group, params in active:
            lr, lam = group["lr"], group["weight_decay"]
            shrink = 1.0 + lr * lam
            tau = self._adaptive_step(glob, group, rho, lb, dot, gamma, norm)
            params, _, ds = self._real_views(params, "grad_avg")
            if group["foreach"] is False:
                for p, d in zip(params, ds):
                    p.add_(d, alpha=-tau)
                    if lam > 0:
                        p.div_(shrink)
            else:
                torch._foreach_add_(params, ds, alpha=-tau)
                if lam > 0:
                    torch._foreach_div_(params, shrink)
        return loss


@OPTIMIZERS.register("momo_adam")
class MomoAdam(_MomoBase):
    """MoMo-Adam (arXiv 2305.07583, Algorithm 3); defaults from ``momo-opt``.

    Args:
        lr: the cap on the adaptive step (divided by 1 - beta1^k).
        betas: Adam's (beta1, beta2); beta1 also averages losses and <g, x>.
        eps: added to sqrt(v_hat) in D.
        weight_decay: lambda; ``divide=True`` (default) applies it proximally
            (x / (1 + lr*lambda)), ``divide=False`` AdamW-style (x * (1 - lr*lambda)).
        lb: lower bound f_* on the loss.
        use_fstar: estimate f_* online, starting from and never below ``lb``.
        foreach: multi-tensor (None/True) or per-parameter loop (False).
    """

    _global_keys = ("betas", "lb", "use_fstar")

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-2,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        lb: float = 0.0,
        divide: bool = True,
        use_fstar: bool = False,
        foreach: bool | None = None,
    ):
        _check("learning rate", lr, lr >= 0.0)
        _check("beta1", betas[0], 0.0 <= betas[0] < 1.0)
        _check("beta2", betas[1], 0.0 <= betas[1] < 1.0)
        _check("eps", eps, eps >= 0.0)
        _check("weight_decay", weight_decay, weight_decay >= 0.0)
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, lb=lb,
                        divide=divide, use_fstar=bool(use_fstar), foreach=foreach)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None):
        loss = self._loss(closure)
        active = self._active()  # checks the gradients before any state changes
        first = self.param_groups[0]
        (beta1, beta2), lb = first["betas"], first["lb"]
        glob = self._global_state()
        glob["step"] = k = glob["step"] + 1
        glob["loss_avg"] = beta1 * glob["loss_avg"] + (1.0 - beta1) * self._value(loss)
        bc1, bc2 = 1.0 - beta1**k, 1.0 - beta2**k

        dots, gammas, norms = [], [], []
        directions: dict[int, list[torch.Tensor]] = {}
        for group, params in active:
            for p in params:
                state = self.state[p]
                if "grad_avg" not in state:
                    state["grad_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["grad_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["grad_dot_w"] = torch.zeros((), dtype=p.real.dtype, device=p.device)
            params, grads, ds, vs, gws = self._real_views(params, "grad_avg", "grad_avg_sq", "grad_dot_w")
            eps = group["eps"]
            if group["foreach"] is False:
                for p, g, d, v, gw in zip(params, grads, ds, vs, gws):
                    d.mul_(beta1).add_(g, alpha=1.0 - beta1)
                    v.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
                    gw.mul_(beta1).add_((p * g).sum(), alpha=1.0 - beta1)
                    precond = v.div(bc2).sqrt_().add_(eps)
                    dots.append((p * d).sum())
                    gammas.append(gw.clone())
                    norms.append((d * d).div_(precond).sum())
            else:
                gammas.append(_average_dots(gws, _dots(params, grads), beta1, fresh=False))
                # d, v updated and u = d / (bc1 D) in one pass (fused Adam kernel);
                # kept for the step below, which is x - tau d / D = x - tau bc1 u
                directions[id(group)] = u = adam_direction(self, params, grads, ds, vs, k, beta1, beta2, eps)
                dots.append(_dots(params, ds).sum())
                norms.append(bc1 * _dots(u, ds).sum())  # ||d||^2_{D^-1} = bc1 <u, d>
        if not active:
            return loss
        dot = torch.stack(dots).sum().item()
        gamma = torch.stack(gammas).sum().item()
        norm = torch.stack(norms).sum().item()

        for group, params in active:
            lr, lam, eps = group["lr"], group["weight_decay"], group["eps"]
            shrink = 1.0 + lr * lam
            tau = self._adaptive_step(glob, group, bc1, lb, dot, gamma, norm)
            params, _, ds, vs = self._real_views(params, "grad_avg", "grad_avg_sq")
            decay_first = lam > 0 and not group["divide"]
            decay_after = lam > 0 and group["divide"]
            if group["foreach"] is False:
                for p, d, v in zip(params, ds, vs):
                    precond = v.div(bc2).sqrt_().add_(eps)
                    if decay_first:
                        p.mul_(1.0 - lam * lr)
                    p.addcdiv_(d, precond, value=-tau)
                    if decay_after:
                        p.div_(shrink)
            else:
                if decay_first:
                    torch._foreach_mul_(params, 1.0 - lam * lr)
                torch._foreach_add_(params, directions[id(group)], alpha=-tau * bc1)
                if decay_after:
                    torch._foreach_div_(params, shrink)
        return loss
