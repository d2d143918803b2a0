"""AdaHessian (Yao et al., "ADAHESSIAN: An Adaptive Second Order Optimizer for Machine
Learning", AAAI 2021, arXiv 2006.00719); official code amirgholami/adahessian
(``image_classification/optim_adahessian.py``).

Adam with the squared gradient replaced by a squared Hutchinson estimate of the
Hessian diagonal: for a Rademacher probe z, D = |z * Hz| = |Hz| (|z| = 1),
averaged over the spatial dimensions of convolution kernels (one value per
(out, in) filter pair, the paper's spatial averaging), then
    m <- EMA_beta1(g),  v <- EMA_beta2(D^2),
    denom = (sqrt(v) / sqrt(1 - beta2^t))^k + eps   (k = hessian_power),
    p <- p - lr * (m / (1 - beta1^t) / denom + weight_decay * p).
Hz needs the gradient graph: the class attribute ``create_graph = True`` tells
the training loop to call ``loss.backward(create_graph=True)`` in the closure.

Probes come from this optimizer's own ``torch.Generator`` seeded by ``seed``, so a
run is deterministic and independent of the global RNG; the generator state is
part of ``state_dict()``. (The official code draws from the global RNG; with
``torch.manual_seed(seed)`` right before the first step its draws coincide with
ours, since both call ``randint(0, 2)`` per parameter in order.)

Differences from the official code: kernels of any ndim >= 3 are averaged over
dims 2.. (the official code handles only 4-D kernels and breaks on 3-D ones);
parameters whose gradient does not depend on any parameter get Hz = 0 instead
of an error. Measured against the official class (global RNG seeded like our
generator; conv net, float64, 20 steps): max |dw| 3.3e-16. After the
Hessian-vector product, ``p.grad`` is detached in place (values unchanged),
as in the official code: this frees the double-backward
graph and breaks the param -> grad -> graph -> param reference cycle.

``step`` is ``params_with_grad``, ``draw_probes``, the Hessian-vector products,
then ``step_with_products``: batched training (``train.hessian_update``) calls
the parts itself, with the products of all its runs from one double backward.

Complex parameters are refused: the Rademacher probes, the Hessian-vector
product through complex autograd and the averaging over kernel dimensions are
defined here for real parameters only (a real view would change which
dimensions are averaged).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import torch

from . import OPTIMIZERS
from ._base import check_gradients

_GENERATOR_KEY = "probe_generator_state"


def rademacher_like(params: Sequence[torch.Tensor], generator: torch.Generator) -> list[torch.Tensor]:
    """One +-1 probe per parameter, drawn from ``generator`` in order.

    Parameters of one dtype and device get a single draw split into views (a
    draw per parameter costs a few Python calls each, the bulk of a step on
    many small tensors); on CPU the numbers are the same as drawing one
    parameter after another.
    """
    if not params:
        return []
    if len({(p.dtype, p.device) for p in params}) > 1:
        return [rademacher_like([p], generator)[0] for p in params]
    sizes = [p.numel() for p in params]
    flat = torch.randint(0, 2, (sum(sizes),), generator=generator, dtype=params[0].dtype,
                         device=generator.device)
    flat = flat.mul_(2).sub_(1).to(params[0].device)
    return [z.view_as(p) for z, p in zip(flat.split(sizes), params)]


def hessian_vector_products(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    probes: Sequence[torch.Tensor],
    retain_graph: bool = False,
) -> list[torch.Tensor]:
    """H z for the block-stacked probe z, from gradients that carry their graph."""
    with_graph = [i for i, g in enumerate(grads) if g.requires_grad]
    if not with_graph:
        raise RuntimeError(
            "AdaHessian needs gradients with a graph: call loss.backward(create_graph=True) "
            "in the closure (the optimizer's create_graph attribute is True)"
        )
    hvs = torch.autograd.grad(
        [grads[i] for i in with_graph], list(params),
        grad_outputs=[probes[i] for i in with_graph], allow_unused=True,
        retain_graph=retain_graph,
    )
    return [torch.zeros_like(p) if h is None else h for p, h in zip(params, hvs)]


def hessian_diagonal_estimates(hvs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """|z * Hz| = |Hz| per parameter, averaged over kernel spatial dims (2, 3, ...) for ndim >= 3."""
    out = list(torch._foreach_abs(list(hvs)))
    for i, d in enumerate(out):
        if d.dim() >= 3:
            out[i] = d.mean(dim=tuple(range(2, d.dim())), keepdim=True).expand_as(d)
    return out


@OPTIMIZERS.register("adahessian")
class AdaHessian(torch.optim.Optimizer):
    """AdaHessian (arXiv 2006.00719); defaults from the official code.

    Args:
        lr, betas, eps, weight_decay: as in the paper's Algorithm 1 (weight decay
            is added to the update outside the preconditioner, i.e. decoupled).
        hessian_power: k in (0, 1]; the denominator is (sqrt(v_hat))^k + eps.
        seed: seed of the optimizer's own probe generator.
        foreach: multi-tensor (None/True) or per-parameter loop (False) update.
    """

    create_graph = True

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 0.15,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-4,
        weight_decay: float = 0.0,
        hessian_power: float = 1.0,
        seed: int = 0,
        foreach: bool | None = None,
    ):
        if not lr >= 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not eps >= 0.0:
            raise ValueError(f"Invalid eps: {eps}")
        for i, beta in enumerate(betas):
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"Invalid beta at index {i}: {beta}")
        if not weight_decay >= 0.0:
            raise ValueError(f"Invalid weight_decay: {weight_decay}")
        if not 0.0 < hessian_power <= 1.0:
            raise ValueError(f"Invalid hessian_power (in (0, 1]): {hessian_power}")
        if not isinstance(seed, int):
            raise ValueError(f"Invalid seed (an int): {seed!r}")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        hessian_power=hessian_power, foreach=foreach)
        super().__init__(params, defaults)
        self.seed = seed
        self._generator: torch.Generator | None = None
        self._pending_generator_state: torch.Tensor | None = None

    # -- the probe generator, saved with the state ---------------------------
    def _probe_generator(self, device: torch.device) -> torch.Generator:
        if self._generator is None:
            self._generator = torch.Generator(device=device)
            self._generator.manual_seed(self.seed)
            if self._pending_generator_state is not None:
                self._generator.set_state(self._pending_generator_state)
                self._pending_generator_state = None
        return self._generator

    def state_dict(self) -> dict[str, Any]:
        out = super().state_dict()
        if self._generator is not None:
            out[_GENERATOR_KEY] = self._generator.get_state()
        elif self._pending_generator_state is not None:
            out[_GENERATOR_KEY] = self._pending_generator_state.clone()
        out["seed"] = self.seed
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        generator_state = state_dict.pop(_GENERATOR_KEY, None)
        self.seed = state_dict.pop("seed", self.seed)
        super().load_state_dict(state_dict)
        self._generator = None
        self._pending_generator_state = None if generator_state is None else generator_state.clone()

    # -- the update -----------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        params = self.params_with_grad()
        if not params:
            return loss
        grads = [p.grad for p in params]
        probes = self.draw_probes(params)
        with torch.enable_grad():
            hvs = hessian_vector_products(params, grads, probes)
        for g in grads:
            g.detach_()  # values unchanged; frees the graph (see module docstring)
        self.step_with_products(params, hvs)
        return loss

    # The step in parts, so a batched closure (``train.hessian_update``) can compute
    # the Hessian-vector products of many runs at once and hand each run its own.
    def params_with_grad(self) -> list[torch.Tensor]:
        """The parameters this step updates, in the order the probes are drawn."""
        params = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
        if params:
            check_gradients(self, params, complex_reason=(
                "Rademacher probes, the Hessian-vector product and the kernel averaging are "
                "defined for real parameters"))
        return params

    def draw_probes(self, params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """This step's Rademacher probes for ``params`` (advances the probe generator)."""
        return rademacher_like(params, self._probe_generator(params[0].device))

    @torch.no_grad()
    def step_with_products(self, params: Sequence[torch.Tensor], hvs: Sequence[torch.Tensor]) -> None:
        """The update, given H z (z: this step's probes) for ``params`` = ``params_with_grad()``."""
        diag = dict(zip(map(id, params), hessian_diagonal_estimates(hvs)))
        wanted = set(diag)
        active = []
        for group in self.param_groups:
            ps = [p for p in group["params"] if id(p) in wanted]
            if ps:
                active.append((group, ps))
        for group, ps in active:
            for p in ps:
                state = self.state[p]
                if len(state) == 0:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_hessian_diag_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
            # params of a group share their step count unless some skipped steps
            steps = {self.state[p]["step"] for p in ps}
            d = [diag[id(p)] for p in ps]
            if group["foreach"] is False or len(steps) > 1:
                for p, dp in zip(ps, d):
                    self._update_one(group, p, dp)
            else:
                self._update_foreach(group, ps, d, steps.pop())

    @staticmethod
    def _corrections(group, step):
        beta1, beta2 = group["betas"]
        return 1.0 - beta1**step, (1.0 - beta2**step) ** 0.5

    def _update_one(self, group, p, d):
        state = self.state[p]
        beta1, beta2 = group["betas"]
        bc1, sqrt_bc2 = self._corrections(group, state["step"])
        m, v = state["exp_avg"], state["exp_hessian_diag_sq"]
        m.mul_(beta1).add_(p.grad, alpha=1.0 - beta1)
        v.mul_(beta2).addcmul_(d, d, value=1.0 - beta2)
        denom = v.sqrt().div_(sqrt_bc2)
        if group["hessian_power"] != 1.0:
            denom.pow_(group["hessian_power"])
        denom.add_(group["eps"])
        if group["weight_decay"] != 0:
            p.mul_(1.0 - group["lr"] * group["weight_decay"])
        p.addcdiv_(m, denom, value=-group["lr"] / bc1)

    def _update_foreach(self, group, ps, d, step):
        beta1, beta2 = group["betas"]
        bc1, sqrt_bc2 = self._corrections(group, step)
        ms = [self.state[p]["exp_avg"] for p in ps]
        vs = [self.state[p]["exp_hessian_diag_sq"] for p in ps]
        torch._foreach_mul_(ms, beta1)
        torch._foreach_add_(ms, [p.grad for p in ps], alpha=1.0 - beta1)
        torch._foreach_mul_(vs, beta2)
        torch._foreach_addcmul_(vs, d, d, value=1.0 - beta2)
        denom = torch._foreach_sqrt(vs)
        torch._foreach_div_(denom, sqrt_bc2)
        if group["hessian_power"] != 1.0:
            torch._foreach_pow_(denom, group["hessian_power"])
        torch._foreach_add_(denom, group["eps"])
        if group["weight_decay"] != 0:
            torch._foreach_mul_(ps, 1.0 - group["lr"] * group["weight_decay"])
        torch._foreach_addcdiv_(ps, ms, denom, value=-group["lr"] / bc1)
