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
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Iterable

import torch

from . import OPTIMIZERS
from ._base import check_gradients

_MUON_MOMENTUM = inspect.signature(torch.optim.Muon.__init__).parameters["momentum"].default


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
        for sub in (self.muon, self.adamw):
            if sub is not None:
                sub.step()
        return loss
