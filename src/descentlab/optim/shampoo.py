"""Shampoo with grafting, for small models (Gupta, Koren, Singer, "Shampoo:
Preconditioned Stochastic Tensor Optimization", ICML 2018, arXiv 1802.09568; grafting
and the eps-shifted eigendecomposition roots as in Shi et al., "A Distributed
Data-Parallel PyTorch Implementation of the Distributed Shampoo Optimizer...",
arXiv 2309.06497).

Per parameter of order k (a matrix: k = 2), one Kronecker factor per dimension i
whose size lies in (1, max_preconditioner_dim]:
    F_i <- beta2 F_i + (1 - beta2) G_(i) G_(i)^T      (G_(i): mode-i unfolding; sums if beta2 = 1)
and, every ``precondition_frequency`` steps from ``start_preconditioning_step``,
the inverse root (F_i + epsilon Id)^(-1/(2 k')) by eigendecomposition (eigenvalues
clipped at 0 before the shift), k' = the number of preconditioned dimensions. For
a matrix that is L^(-1/4) M R^(-1/4). Dimensions above ``max_preconditioner_dim``
(or of size 1) get no factor: along them the step is the graft's.

Momentum M = EMA_beta1(g) (bias-corrected) is preconditioned, then **grafted**:
the Shampoo direction is rescaled to the per-parameter norm of the graft direction
    Adam:    M_hat / (sqrt(v / (1 - beta2^t)) + eps),  v = EMA_beta2(g^2)
    AdaGrad: M_hat / (sqrt(sum g^2) + eps)
so the step size follows the first-order method and Shampoo chooses the
direction. Before ``start_preconditioning_step`` the step *is* the graft's (so it
equals Adam/AdamW, or AdaGrad with beta1 = 0). Weight decay is decoupled
(p <- p (1 - lr wd)).

Complex parameters are refused: complex Kronecker factors would be Hermitian
(G G^H), and the real view would add a factor for its trailing dimension of
size 2, a different preconditioner.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch

from . import OPTIMIZERS
from ._base import check_gradients

_GRAFTS = ("adam", "adagrad")


def _factor_dims(p: torch.Tensor, max_dim: int) -> list[int]:
    return [i for i, size in enumerate(p.shape) if 1 < size <= max_dim]


def _mode_gram(g: torch.Tensor, dim: int) -> torch.Tensor:
    """G_(dim) G_(dim)^T: contract every dimension but ``dim``."""
    others = [i for i in range(g.dim()) if i != dim]
    return torch.tensordot(g, g, dims=(others, others))


def _inverse_root(factor: torch.Tensor, exponent: float, epsilon: float) -> torch.Tensor:
    """(F + eps Id)^(-exponent) for symmetric PSD F, by eigendecomposition in float64."""
    evals, evecs = torch.linalg.eigh(factor.double())  # batched over leading dimensions
    powers = (evals.clamp_min(0.0) + epsilon).pow(-exponent)
    return ((evecs * powers.unsqueeze(-2)) @ evecs.transpose(-2, -1)).to(factor.dtype)


def _unfold(stack: torch.Tensor, dim: int) -> torch.Tensor:
    """The mode-``dim`` unfoldings of a stack of tensors (n, *shape): (n, shape[dim], -1),
    the other dimensions in order (as ``tensordot`` contracts them)."""
    return torch.movedim(stack, dim + 1, 1).reshape(stack.shape[0], stack.shape[dim + 1], -1)


def _precondition(x: torch.Tensor, roots: dict[int, torch.Tensor]) -> torch.Tensor:
    """Multiply ``x`` along each preconditioned dimension by its (symmetric) root."""
    for dim, root in roots.items():
        x = torch.movedim(torch.tensordot(root, x, dims=([1], [dim])), 0, dim)
    return x


@OPTIMIZERS.register("shampoo")
class Shampoo(torch.optim.Optimizer):
    """Shampoo with Adam/AdaGrad grafting (arXiv 1802.09568, 2309.06497).

    Args:
        lr: learning rate (of the grafted step).
        betas: (beta1, beta2): momentum of the gradient (0 disables it) and the EMA
            factor of the Kronecker factors and of Adam's second moment; beta2 = 1
            makes the factors running sums (AdaGrad graft only).
        eps: the graft's denominator shift.
        epsilon: shift of the factors before their inverse roots.
        weight_decay: decoupled weight decay.
        precondition_frequency: recompute the inverse roots every this many steps.
        start_preconditioning_step: first step that uses (and computes) the roots.
        max_preconditioner_dim: larger dimensions are not preconditioned.
        grafting: "adam" or "adagrad".
        foreach: multi-tensor (None/True) or per-parameter loop (False): with
            foreach, parameters of one shape also share batched matrix products
            and eigendecompositions.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        epsilon: float = 1e-12,
        weight_decay: float = 0.0,
        precondition_frequency: int = 20,
        start_preconditioning_step: int = 20,
        max_preconditioner_dim: int = 1024,
        grafting: str = "adam",
        foreach: bool | None = None,
    ):
        beta1, beta2 = betas
        if not lr >= 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 <= beta1 < 1.0:
            raise ValueError(f"Invalid beta1: {beta1}")
        if grafting not in _GRAFTS:
            raise ValueError(f"Invalid grafting {grafting!r}; expected one of {_GRAFTS}")
        if not (0.0 < beta2 < 1.0 or (beta2 == 1.0 and grafting == "adagrad")):
            raise ValueError(f"Invalid beta2 (in (0, 1), or 1 with AdaGrad grafting): {beta2}")
        if not eps >= 0.0 or not epsilon > 0.0:
            raise ValueError(f"Invalid eps {eps} or epsilon {epsilon} (epsilon must be > 0)")
        if not weight_decay >= 0.0:
            raise ValueError(f"Invalid weight_decay: {weight_decay}")
        for name, value in (("precondition_frequency", precondition_frequency),
                            ("start_preconditioning_step", start_preconditioning_step),
                            ("max_preconditioner_dim", max_preconditioner_dim)):
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"Invalid {name} (a positive int): {value!r}")
        defaults = dict(lr=lr, betas=(beta1, beta2), eps=eps, epsilon=epsilon, weight_decay=weight_decay,
                        precondition_frequency=precondition_frequency,
                        start_preconditioning_step=start_preconditioning_step,
                        max_preconditioner_dim=max_preconditioner_dim, grafting=grafting, foreach=foreach)
        super().__init__(params, defaults)

    def _init_state(self, group: dict[str, Any], p: torch.Tensor) -> dict[str, Any]:
        state = self.state[p]
        if len(state) == 0:
            state["step"] = 0
            if group["betas"][0] > 0:
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["graft_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            for dim in _factor_dims(p, group["max_preconditioner_dim"]):
                state[f"factor_{dim}"] = torch.zeros(p.shape[dim], p.shape[dim], dtype=p.dtype, device=p.device)
        return state

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            check_gradients(self, params, complex_reason=(
                "its Kronecker factors, one per dimension, would need Hermitian Gram matrices; "
                "the real view would add a factor for its trailing dimension of size 2"))
            for p in params:
                self._init_state(group, p)["step"] += 1
            if group["foreach"] is False:
                grafts = [self._graft_one(group, p) for p in params]
                for p, (m_hat, graft, graft_norm) in zip(params, grafts):
                    self._shampoo_one(group, p, m_hat, graft, graft_norm)
                continue
            grafts = self._graft_foreach(group, params)
            # parameters of one shape (and step) take batched matrix products and
            # eigendecompositions: one call per shape, not per parameter
            same: dict[tuple[Any, ...], list[int]] = {}
            for i, p in enumerate(params):
                same.setdefault((p.shape, p.dtype, p.device, self.state[p]["step"]), []).append(i)
            for idx in same.values():
                if len(idx) == 1 or not _factor_dims(params[idx[0]], group["max_preconditioner_dim"]):
                    for i in idx:
                        self._shampoo_one(group, params[i], *grafts[i])
                else:
                    self._shampoo_stacked(group, [params[i] for i in idx], [grafts[i] for i in idx])
        return loss

    # -- the graft (elementwise) ------------------------------------------------
    def _graft_one(self, group, p):
        """Update the moments; return (M_hat, graft direction, its norm)."""
        state = self.state[p]
        (beta1, beta2), t = group["betas"], state["step"]
        g = p.grad
        if beta1 > 0:
            state["exp_avg"].mul_(beta1).add_(g, alpha=1.0 - beta1)
            m_hat = state["exp_avg"].div(1.0 - beta1**t)
        else:
            m_hat = g.clone()
        sq = state["graft_sq"]
        if group["grafting"] == "adam":
            sq.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
            denom = sq.div(1.0 - beta2**t).sqrt_()
        else:
            sq.addcmul_(g, g)
            denom = sq.sqrt()
        denom.add_(group["eps"])
        graft = m_hat.div(denom)
        return m_hat, graft, torch.linalg.vector_norm(graft)

    def _graft_foreach(self, group, params):
        (beta1, beta2) = group["betas"]
        steps = {self.state[p]["step"] for p in params}
        if len(steps) > 1:  # params that skipped steps have their own bias corrections
            return [self._graft_one(group, p) for p in params]
        t = steps.pop()
        grads = [p.grad for p in params]
        if beta1 > 0:
            ms = [self.state[p]["exp_avg"] for p in params]
            torch._foreach_mul_(ms, beta1)
            torch._foreach_add_(ms, grads, alpha=1.0 - beta1)
            m_hats = torch._foreach_div(ms, 1.0 - beta1**t)
        else:
            m_hats = [g.clone() for g in grads]
        sqs = [self.state[p]["graft_sq"] for p in params]
        if group["grafting"] == "adam":
            torch._foreach_mul_(sqs, beta2)
            torch._foreach_addcmul_(sqs, grads, grads, value=1.0 - beta2)
            denoms = torch._foreach_div(sqs, 1.0 - beta2**t)
            torch._foreach_sqrt_(denoms)
        else:
            torch._foreach_addcmul_(sqs, grads, grads)
            denoms = torch._foreach_sqrt(sqs)
        torch._foreach_add_(denoms, group["eps"])
        grafts = torch._foreach_div(m_hats, denoms)
        return list(zip(m_hats, grafts, torch._foreach_norm(grafts)))

    # -- Kronecker factors, roots, grafted step ------------------------------------
    def _shampoo_stacked(self, group, params, grafts) -> None:
        """``_shampoo_one`` for parameters of one shape and step (with factors), on
        their stack (n, *shape): the same products, batched."""
        states = [self.state[p] for p in params]
        beta2, t = group["betas"][1], states[0]["step"]
        dims = _factor_dims(params[0], group["max_preconditioner_dim"])
        grads = torch.stack([p.grad for p in params])
        for dim in dims:
            unfolded = _unfold(grads, dim)
            grams = list(torch.bmm(unfolded, unfolded.transpose(1, 2)).unbind(0))
            factors = [s[f"factor_{dim}"] for s in states]
            if beta2 < 1.0:
                torch._foreach_mul_(factors, beta2)
                torch._foreach_add_(factors, grams, alpha=1.0 - beta2)
            else:
                torch._foreach_add_(factors, grams)
        start = group["start_preconditioning_step"]
        if t >= start and (t - start) % group["precondition_frequency"] == 0:
            exponent = 1.0 / (2 * len(dims))
            for dim in dims:
                roots = _inverse_root(torch.stack([s[f"factor_{dim}"] for s in states]), exponent, group["epsilon"])
                for s, root in zip(states, roots.unbind(0)):
                    s[f"root_{dim}"] = root
        directions = [graft for _, graft, _ in grafts]
        if t >= start:
            x = torch.stack([m_hat for m_hat, _, _ in grafts])
            for dim in dims:
                roots = torch.stack([s[f"root_{dim}"] for s in states])
                x = torch.movedim(torch.bmm(roots, _unfold(x, dim)).view(x.shape[0], x.shape[dim + 1], *[
                    x.shape[i + 1] for i in range(x.dim() - 1) if i != dim]), 1, dim + 1)
            norms = torch.linalg.vector_norm(x.flatten(1), dim=1)
            graft_norms = torch.stack([n for _, _, n in grafts])
            scaled = x * (graft_norms / norms).view(-1, *[1] * (x.dim() - 1))
            directions = [torch.where(n > 0, a, g) for n, a, g in zip(norms, scaled.unbind(0), directions)]
        if group["weight_decay"] != 0:
            torch._foreach_mul_(params, 1.0 - group["lr"] * group["weight_decay"])
        torch._foreach_add_(params, directions, alpha=-group["lr"])

    def _shampoo_one(self, group, p, m_hat, graft, graft_norm) -> None:
        state = self.state[p]
        beta2, t = group["betas"][1], state["step"]
        dims = _factor_dims(p, group["max_preconditioner_dim"])
        for dim in dims:
            factor = state[f"factor_{dim}"]
            gram = _mode_gram(p.grad, dim)
            if beta2 < 1.0:
                factor.mul_(beta2).add_(gram, alpha=1.0 - beta2)
            else:
                factor.add_(gram)
        start = group["start_preconditioning_step"]
        if dims and t >= start and (t - start) % group["precondition_frequency"] == 0:
            exponent = 1.0 / (2 * len(dims))
            for dim in dims:
                state[f"root_{dim}"] = _inverse_root(state[f"factor_{dim}"], exponent, group["epsilon"])
        direction = graft
        if dims and t >= start:
            shampoo = _precondition(m_hat, {dim: state[f"root_{dim}"] for dim in dims})
            shampoo_norm = torch.linalg.vector_norm(shampoo)
            if shampoo_norm > 0:
                direction = shampoo.mul_(graft_norm / shampoo_norm)
        if group["weight_decay"] != 0:
            p.mul_(1.0 - group["lr"] * group["weight_decay"])
        p.add_(direction, alpha=-group["lr"])
