"""Muon for the hidden weight matrices, AdamW for everything else, as one optimizer.

``torch.optim.Muon`` (Keller Jordan's Muon: momentum, then Newton-Schulz
orthogonalisation of the 2-D update) accepts only 2-D parameters. Muon is meant
for hidden-layer matrices; biases, norm gains, embeddings/first layers and the
output layer are trained with AdamW (KellerJordan/Muon README). This class
routes each parameter and steps both torch optimizers, so a run needs one
config dict::

    {"name": "muon", "lr": 0.02, "momentum": 0.95,            # torch.optim.Muon
     "adamw": {"lr": 3e-4, "betas": [0.9, 0.95]},             # torch.optim.AdamW
     "adamw_first_last": True}

AdamW runs with ``fused=True`` unless ``adamw`` sets ``foreach`` or ``fused``
(and its parameters are floating point on CPU or CUDA): torch's default on CPU
is a per-tensor loop, 6x slower on 200 small tensors; the two may differ by an
ulp (measured on an AVX-512 CPU).

Routing: a parameter goes to Muon iff it is 2-D and, with ``adamw_first_last``
(default), it is neither the first nor the last 2-D parameter in the order given
(``model.parameters()`` order: the input layer and the output layer). Conv
kernels (4-D) go to AdamW, since torch's Muon does not reshape them.

Param groups: every user group is split into a Muon part and an AdamW part
(``group["use_muon"]`` tells which; empty parts are dropped), so
``param_groups`` may hold more groups than were passed. Group-level keys (e.g.
``lr``) apply to both parts; a group's ``adamw`` dict overrides them for its
AdamW part. Top-level keyword arguments are Muon's; omitted ones take torch's
defaults, except that AdamW takes the top-level ``lr`` when ``adamw`` has none.
Both torch optimizers share this object's ``param_groups`` and ``state``, so
``state_dict``, LR schedulers and ``zero_grad`` cover both.

Momentum: every group has a ``momentum`` key (``defaults["momentum"]`` is
Muon's), so schedulers that cycle momentum (``OneCycleLR(cycle_momentum=True)``)
reach both parts. In a Muon group it is Muon's momentum; in an AdamW group it
is AdamW's beta1 (set from ``betas[0]`` at construction; each step writes
``momentum`` into ``betas[0]``, so set ``momentum``, not ``betas``, to change it).

Complex parameters are AdamW's: torch.optim updates a complex tensor as its
real view, which has one more dimension (a complex matrix is a 3-D real
tensor), and Muon's orthogonalisation is defined for real matrices.

Speed: torch's Muon steps one matrix at a time (about 25 small kernels each, a
Python loop), which dominates on many small matrices. ``step`` does torch's
Muon update itself, with the same ops batched: momentum with foreach ops,
Newton-Schulz on a stack of the matrices of each shape (``torch.bmm`` /
``baddbmm``, in bfloat16 as torch does). It matches torch's Muon to bfloat16
rounding (bmm and mm may round a product differently; bit for bit otherwise),
and to 1e-12 with the iterations in float64 (``ns_dtype``). One difference:
with bfloat16 parameters and ``nesterov=False`` torch's Muon (2.13) rescales
its momentum buffer in place (its Newton-Schulz divides the buffer itself, as
``bfloat16()`` of a bfloat16 tensor is no copy); here the buffer stays the
momentum.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Iterable

import torch
from torch import Tensor
from torch.optim._muon import _adjust_lr

from . import OPTIMIZERS
from ._base import check_gradients

_MUON_MOMENTUM = inspect.signature(torch.optim.Muon.__init__).parameters["momentum"].default


def newton_schulz_batched(
    x: Tensor, coefficients: tuple[float, float, float], steps: int, eps: float,
    dtype: torch.dtype = torch.bfloat16,
) -> Tensor:
    """torch's Muon orthogonalisation (quintic Newton-Schulz) of each matrix of
    the stack ``x`` (k, rows, cols) at once, computed and returned in ``dtype``.

    Per matrix the same steps as ``torch.optim.Muon``: cast, transpose a tall
    matrix, divide by its Frobenius norm (at least eps), then ``steps`` times
    X <- a X + (b A + c A^2) X with A = X X^T.
    """
    if steps >= 100:
        raise ValueError(f"ns_steps must be below 100 (got {steps})")
    if len(coefficients) != 3:
        raise ValueError(f"ns_coefficients must be 3 numbers (got {coefficients!r})")
    if x.dim() != 3:
        raise ValueError(f"expected a stack of matrices (k, rows, cols), got shape {tuple(x.shape)}")
    a, b, c = coefficients
    tall = x.size(1) > x.size(2)
    x = x.to(dtype)
    if tall:  # contiguous: bmm on transposed views measured several times slower
        x = x.mT.contiguous()
    x = x / x.norm(dim=(1, 2), keepdim=True).clamp(min=eps)
    for _ in range(steps):
        gram = torch.bmm(x, x.mT)
        gram_update = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)
        x = torch.baddbmm(x, gram_update, x, beta=a)
    return x.mT if tall else x


def muon_update(
    params: list[Tensor], grads: list[Tensor], momentum_buffers: list[Tensor], group: dict[str, Any],
    ns_dtype: torch.dtype = torch.bfloat16,
) -> None:
    """torch.optim.Muon's update of one param group, batched: foreach momentum and
    weight decay, one Newton-Schulz per shape (``newton_schulz_batched``)."""
    lr = float(group["lr"])  # torch allows a 1-element tensor
    momentum, weight_decay = group["momentum"], group["weight_decay"]
    for g in grads:
        if g.dim() != 2:
            raise ValueError(f"Muon needs 2-D gradients, got shape {tuple(g.shape)}")
    torch._foreach_lerp_(momentum_buffers, grads, 1 - momentum)
    updates = torch._foreach_lerp(grads, momentum_buffers, momentum) if group["nesterov"] else momentum_buffers
    decay = 1 - lr * weight_decay
    if decay != 1:
        # torch._foreach_mul_ rounds the scalar to a bfloat16/float16 tensor's dtype
        # first (measured), Tensor.mul_ (torch's Muon) does not
        wide = [p for p in params if p.dtype in (torch.float32, torch.float64)]
        if wide:
            torch._foreach_mul_(wide, decay)
        for p in params:
            if p.dtype not in (torch.float32, torch.float64):
                p.mul_(decay)
    by_shape: dict[tuple[Any, ...], list[int]] = {}
    for i, p in enumerate(params):
        by_shape.setdefault((p.shape, p.device, updates[i].dtype), []).append(i)
    for (shape, _, _), idx in by_shape.items():
        stack = torch.stack([updates[i] for i in idx])
        ortho = newton_schulz_batched(stack, group["ns_coefficients"], group["ns_steps"], group["eps"], ns_dtype)
        # in the parameters' dtype at once (exact: bfloat16 -> float32/64): a foreach
        # add of mixed dtypes goes tensor by tensor
        ortho = ortho.to(params[idx[0]].dtype) if params[idx[0]].dtype in (torch.float32, torch.float64) else ortho
        torch._foreach_add_([params[i] for i in idx], list(ortho.unbind(0)),
                            alpha=-_adjust_lr(lr, group["adjust_lr_fn"], shape))


def _as_groups(params: Iterable[Any]) -> list[dict[str, Any]]:
    params = list(params)
    if not params:
        raise ValueError("optimizer got an empty parameter list")
    if isinstance(params[0], dict):
        return [dict(g, params=list(g["params"])) for g in params]
    return [{"params": params}]


@OPTIMIZERS.register("muon")
class MuonAdamW(torch.optim.Optimizer):
    """torch.optim.Muon on hidden 2-D weights + torch.optim.AdamW on the rest.

    Args:
        params: parameters or param groups (order matters for ``adamw_first_last``).
        adamw: AdamW hyperparameters (torch's defaults where omitted; ``lr``
            defaults to the top-level ``lr`` when that is given).
        adamw_first_last: give the first and last 2-D parameters to AdamW.
        **muon_hparams: torch.optim.Muon hyperparameters (lr, weight_decay,
            momentum, nesterov, ns_coefficients, eps, ns_steps, adjust_lr_fn).
    """

    # torch's Muon orthogonalises in bfloat16 whatever the parameters' dtype (a
    # class attribute so that tests can check the batched algorithm in float64)
    ns_dtype: torch.dtype = torch.bfloat16

    def __init__(
        self,
        params: Iterable[Any],
        adamw: dict[str, Any] | None = None,
        adamw_first_last: bool = True,
        **muon_hparams: Any,
    ):
        if adamw is not None and not isinstance(adamw, dict):
            raise ValueError(f"adamw must be a dict of AdamW hyperparameters, got {adamw!r}")
        user_groups = _as_groups(params)

        def is_matrix(p: torch.Tensor) -> bool:  # a complex matrix's real view is 3-D
            return p.dim() == 2 and not p.is_complex()

        matrices = [p for g in user_groups for p in g["params"] if is_matrix(p)]
        excluded = {id(matrices[0]), id(matrices[-1])} if adamw_first_last and matrices else set()

        def to_muon(p: torch.Tensor) -> bool:
            return is_matrix(p) and id(p) not in excluded

        groups = []
        for g in user_groups:
            shared = {k: v for k, v in g.items() if k not in ("params", "adamw")}
            muon_params = [p for p in g["params"] if to_muon(p)]
            adamw_params = [p for p in g["params"] if not to_muon(p)]
            if muon_params:
                groups.append({**shared, "params": muon_params, "use_muon": True})
            if adamw_params:
                groups.append({**shared, **g.get("adamw", {}), "params": adamw_params, "use_muon": False})
        super().__init__(groups, {"momentum": muon_hparams.get("momentum", _MUON_MOMENTUM)})
        self.adamw_first_last = adamw_first_last
        muon_groups = [g for g in self.param_groups if g["use_muon"]]
        adamw_groups = [g for g in self.param_groups if not g["use_muon"]]
        self.muon = torch.optim.Muon(muon_groups, **muon_hparams) if muon_groups else None
        adamw = dict(adamw or {})
        if "lr" in muon_hparams:  # one lr in a config moves both parts unless AdamW has its own
            adamw.setdefault("lr", muon_hparams["lr"])
        if "foreach" not in adamw and "fused" not in adamw and all(
                p.device.type in ("cpu", "cuda") and p.is_floating_point()
                for g in adamw_groups for p in g["params"]):
            # torch's default on CPU is its per-tensor loop (foreach is CUDA's
            # default): the fused kernel measured 6x faster on 200 small tensors
            adamw["fused"] = True
        self.adamw = torch.optim.AdamW(adamw_groups, **adamw) if adamw_groups else None
        for group in adamw_groups:  # an AdamW group's momentum is its beta1 (see the module docstring)
            group["momentum"] = group["betas"][0]
        self._link()

    def _link(self) -> None:
        """Point both torch optimizers at our (possibly reloaded) groups and state."""
        for sub, flag in ((self.muon, True), (self.adamw, False)):
            if sub is not None:
                sub.param_groups = [g for g in self.param_groups if g["use_muon"] is flag]
                sub.state = self.state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._link()

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        check_gradients(self, (p for g in self.param_groups for p in g["params"]))
        for group in self.param_groups:
            # setdefault: groups saved before they had a momentum key still load
            if not group["use_muon"] and group.setdefault("momentum", group["betas"][0]) != group["betas"][0]:
                group["betas"] = (group["momentum"], *group["betas"][1:])
        if self.muon is not None:
            for group in self.muon.param_groups:
                params: list[Tensor] = []
                grads: list[Tensor] = []
                buffers: list[Tensor] = []
                self.muon._init_group(group, params, grads, buffers)  # torch's checks and state
                if params:
                    muon_update(params, grads, buffers, group, self.ns_dtype)
        if self.adamw is not None:
            self.adamw.step()
        return loss
