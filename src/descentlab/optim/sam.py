"""SAM and ASAM: sharpness-aware two-step wrappers around any registered optimizer.

- SAM (Foret et al., arXiv 2010.01412): eps = rho * g / ||g|| (norm over all
  parameters), g' = grad L(w + eps) on the same batch, restore w, base step with g'.
- ASAM (Kwon et al., arXiv 2102.11600): with T_w = diag(|w| + eta),
  eps = rho * T_w^2 g / ||T_w g||. With eta = 0 on an all-ones parameter it is SAM.

Both take the base optimizer as a config dict (or a registry name), e.g.
``SAM(params, base={"name": "sgd", "lr": 0.1, "momentum": 0.9}, rho=0.05)``;
extra keyword arguments are merged into the base spec. The base optimizer
shares the param groups (and the state) of the wrapper, so group
hyperparameters, LR schedulers and ``state_dict`` cover both. The wrapper keeps
no state of its own between steps: eps and the saved w live only inside
``step``.

``step(closure)`` needs the closure (zero_grad, forward, loss, backward): it is
called at w and again at w + eps; the returned loss is the one at w, and
``p.grad`` is left holding the SAM gradient g' (the base optimizer stepped with it).

Reference differences:
- davda54/sam and pytorch-optimizer divide by ||g|| + 1e-12 (we do the same);
  SamsungLabs/ASAM by ||T g|| + 1e-16 (a relative difference of ~1e-12/||g||).
- SamsungLabs/ASAM applies T_w only to parameters whose *name* contains
  "weight" (biases get T = Id) and undoes the ascent by subtracting eps instead
  of restoring a copy. ``ASAM(..., only_weights=True)`` with
  ``model.named_parameters()`` reproduces the name rule; the default applies
  T_w to every parameter. A group may also set ``adaptive=False``.
- davda54/pytorch-optimizer ``adaptive=True`` is *not* ASAM: it uses |w|
  without eta (it equals ASAM with eta = 0 applied to all parameters).
- pytorch-optimizer computes the gradient norm in float32.
Measured (float64, 3-4-2 tanh MLP, SGD momentum 0.9, 20 steps, max |dw|): SAM vs
davda54 0, vs SamsungLabs SAM 1.3e-13, vs pytorch-optimizer 7.7e-9 (its float32
norm); ASAM(only_weights=True) vs SamsungLabs ASAM 1.1e-12, while applying T_w
to the biases too (our default) moves them 0.61 away: a different method.

``eval()``/``train()`` are passed on to a base that has them (Schedule-Free).
Bases that need ``create_graph`` (AdaHessian) are refused: their Hessian-vector
product would run through the graph built at w + eps after w is restored.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch

from . import OPTIMIZERS
from ._base import as_real, check_gradients

# Guards the division by the gradient norm (davda54/sam, pytorch-optimizer).
_NORM_EPS = 1e-12


def _base_spec(base: str | dict[str, Any], base_hparams: dict[str, Any]) -> dict[str, Any]:
    if isinstance(base, str):
        spec: dict[str, Any] = {"name": base}
    elif isinstance(base, dict) and "name" in base:
        spec = dict(base)
    else:
        raise ValueError(f"base must be a registry name or a dict with a 'name' key, got {base!r}")
    spec.update(base_hparams)
    if spec["name"] in ("sam", "asam"):
        raise ValueError(f"base optimizer cannot itself be {spec['name']!r}")
    return spec


@OPTIMIZERS.register("sam")
class SAM(torch.optim.Optimizer):
    """Sharpness-Aware Minimization (arXiv 2010.01412) around a registered base optimizer.

    Args:
        params: parameters or param groups (groups may set their own ``rho``
            and base hyperparameters).
        base: registry name or ``{"name": ..., **hyperparameters}`` of the base optimizer.
        rho: radius of the perturbation (>= 0).
        foreach: multi-tensor (None/True) or per-parameter (False) computation
            of the perturbation; the base optimizer's own flag decides its step.
        **base_hparams: merged into the base spec (e.g. ``lr=0.1``).
    """

    def __init__(
        self,
        params: Iterable[Any],
        base: str | dict[str, Any] = "sgd",
        rho: float = 0.05,
        foreach: bool | None = None,
        **base_hparams: Any,
    ):
        self._init(params, base, dict(rho=rho), foreach, base_hparams)

    def _init(self, params, base, defaults, foreach, base_hparams) -> None:
        if not defaults["rho"] >= 0.0:
            raise ValueError(f"Invalid rho: {defaults['rho']}")
        spec = _base_spec(base, base_hparams)
        super().__init__(params, defaults)
        self.foreach = foreach
        if getattr(OPTIMIZERS.get(spec["name"]), "create_graph", False):
            # its Hessian-vector product would go through the graph built at w + eps,
            # which restoring w (in place) invalidates
            raise ValueError(f"{type(self).__name__} cannot wrap {spec['name']!r}, which needs create_graph")
        self.base = OPTIMIZERS.build(spec, self.param_groups)
        # the base's hyperparameters (momentum, betas, ...) are defaults of the wrapper
        # too: schedulers that read defaults (OneCycleLR's cycle_momentum) find them
        self.defaults = {**self.base.defaults, **self.defaults}
        self._link()

    def _link(self) -> None:
        self.param_groups = self.base.param_groups
        self.state = self.base.state

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if not hasattr(self, "base"):  # during our own __init__
            return super().add_param_group(param_group)
        for name, default in self.defaults.items():
            param_group.setdefault(name, default)
        self.base.add_param_group(param_group)

    # Schedule-Free bases: the training loop's eval()/train() calls reach the base.
    def eval(self) -> None:
        if callable(getattr(self.base, "eval", None)):
            self.base.eval()

    def train(self) -> None:
        if callable(getattr(self.base, "train", None)):
            self.base.train()

    def state_dict(self) -> dict[str, Any]:
        return self.base.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.base.load_state_dict(state_dict)
        self._link()

    # -- the perturbation -------------------------------------------------
    def _scales(self, group: dict[str, Any], params: list[torch.Tensor],
                weights: list[torch.Tensor]) -> list[torch.Tensor] | None:
        """T_w per parameter (None: identity), from ``weights`` (the parameters' real
        views). SAM: identity."""
        return None

    @torch.no_grad()
    def perturbation(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(param, eps) for every parameter with a gradient, from the current gradients.

        A complex parameter comes as its real view (torch.view_as_real, with a real
        eps): the perturbation treats it as its (real, imaginary) pairs, as
        torch.optim does.
        """
        entries = []  # (group, real views of params and grads, T_w list or None)
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                check_gradients(self, params)
                weights = [as_real(p.detach()) if p.is_complex() else p for p in params]
                grads = [as_real(p.grad) for p in params]
                entries.append((group, weights, grads, self._scales(group, params, weights)))
        if not entries:
            return []
        if self.foreach is False:
            return self._perturbation_loop(entries)
        return self._perturbation_foreach(entries)

    def _perturbation_foreach(self, entries):
        directions, norms = [], []
        for group, params, grads, scales in entries:
            tg = grads if scales is None else torch._foreach_mul(scales, grads)  # T g
            norms.extend(torch._foreach_norm(tg))
            directions.append(tg if scales is None else torch._foreach_mul(tg, scales))  # T^2 g
        total = torch.linalg.vector_norm(torch.stack(norms)) + _NORM_EPS
        out = []
        for (group, params, _, _), direction in zip(entries, directions):
            eps = torch._foreach_mul(direction, group["rho"] / total)
            out.extend(zip(params, eps))
        return out

    def _perturbation_loop(self, entries):
        directions, norms = [], []
        for group, params, grads, scales in entries:
            for i, g in enumerate(grads):
                tg = g if scales is None else scales[i] * g
                norms.append(torch.linalg.vector_norm(tg))
                directions.append(tg if scales is None else tg * scales[i])
        total = torch.linalg.vector_norm(torch.stack(norms)) + _NORM_EPS
        out, k = [], 0
        for group, params, _, _ in entries:
            for p in params:
                out.append((p, directions[k] * (group["rho"] / total)))
                k += 1
        return out

    # -- the two-step update ----------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None):
        if closure is None:
            raise ValueError(f"{type(self).__name__} needs a closure (zero_grad, forward, loss, backward)")
        with torch.enable_grad():
            loss = closure()
        pairs = self.perturbation()
        params = [p for p, _ in pairs]
        saved = [p.detach().clone() for p in params]
        if params:
            if self.foreach is False:
                for p, eps in pairs:
                    p.add_(eps)
            else:
                torch._foreach_add_(params, [eps for _, eps in pairs])
        with torch.enable_grad():
            perturbed_loss = closure()
        if params:  # restore w exactly (not w + eps - eps)
            if self.foreach is False:
                for p, w in zip(params, saved):
                    p.copy_(w)
            else:
                torch._foreach_copy_(params, saved)
        # Loss-based bases (MoMo) read the loss from the closure: give them the
        # perturbed loss that goes with the perturbed gradient, without recomputing.
        self.base.step(lambda: perturbed_loss)
        return loss


@OPTIMIZERS.register("asam")
class ASAM(SAM):
    """Adaptive SAM (Kwon et al., arXiv 2102.11600): T_w = |w| + eta.

    Args:
        rho: radius (the paper uses larger radii than SAM, e.g. 0.5 with SGD on CIFAR).
        eta: shift of the normalization operator (>= 0).
        only_weights: apply T_w only to parameters whose name contains "weight"
            (the official SamsungLabs/ASAM rule); needs named parameters
            (``model.named_parameters()``). A group may also set ``adaptive=False``.
    """

    def __init__(
        self,
        params: Iterable[Any],
        base: str | dict[str, Any] = "sgd",
        rho: float = 0.5,
        eta: float = 0.01,
        only_weights: bool = False,
        foreach: bool | None = None,
        **base_hparams: Any,
    ):
        if not eta >= 0.0:
            raise ValueError(f"Invalid eta: {eta}")
        self.only_weights = only_weights
        self._init(params, base, dict(rho=rho, eta=eta, adaptive=True), foreach, base_hparams)
        if only_weights and any("param_names" not in g for g in self.param_groups):
            raise ValueError("only_weights=True needs named parameters (pass model.named_parameters())")

    def _scales(self, group, params, weights):
        if not group["adaptive"]:
            return None
        eta = group["eta"]
        if self.only_weights:
            names = dict(zip(map(id, group["params"]), group["param_names"]))
            return [w.abs().add_(eta) if "weight" in names[id(p)] else torch.ones_like(w)
                    for p, w in zip(params, weights)]
        if self.foreach is False:
            return [w.abs().add_(eta) for w in weights]
        scales = torch._foreach_abs(weights)
        torch._foreach_add_(scales, eta)
        return scales
