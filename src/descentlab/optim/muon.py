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
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch

from . import OPTIMIZERS


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
        matrices = [p for g in user_groups for p in g["params"] if p.dim() == 2]
        excluded = {id(matrices[0]), id(matrices[-1])} if adamw_first_last and matrices else set()

        def to_muon(p: torch.Tensor) -> bool:
            return p.dim() == 2 and id(p) not in excluded

        groups = []
        for g in user_groups:
            shared = {k: v for k, v in g.items() if k not in ("params", "adamw")}
            muon_params = [p for p in g["params"] if to_muon(p)]
            adamw_params = [p for p in g["params"] if not to_muon(p)]
            if muon_params:
                groups.append({**shared, "params": muon_params, "use_muon": True})
            if adamw_params:
                groups.append({**shared, **g.get("adamw", {}), "params": adamw_params, "use_muon": False})
        super().__init__(groups, {})
        self.adamw_first_last = adamw_first_last
        muon_groups = [g for g in self.param_groups if g["use_muon"]]
        adamw_groups = [g for g in self.param_groups if not g["use_muon"]]
        self.muon = torch.optim.Muon(muon_groups, **muon_hparams) if muon_groups else None
        adamw = dict(adamw or {})
        if "lr" in muon_hparams:  # one lr in a config moves both parts unless AdamW has its own
            adamw.setdefault("lr", muon_hparams["lr"])
        self.adamw = torch.optim.AdamW(adamw_groups, **adamw) if adamw_groups else None
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
        for sub in (self.muon, self.adamw):
            if sub is not None:
                sub.step()
        return loss
