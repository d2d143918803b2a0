"""``HessianUpdate``: AdaHessian runs with a batched closure.

``AdaHessian.step(closure)`` needs the gradient with its graph and a
Hessian-vector product H z with a Rademacher probe z from the run's own probe
generator. Here the loop's batched pass keeps the stacked gradient G (R, D)
with its graph (``ModelStack.loss_and_grads(create_graph=True)``); each
stepping run draws its probes from its own generator, in its own order
(``AdaHessian.draw_probes``), into its row of a stacked probe V; and one
double backward d(sum_r G_r . V_r)/d flat gives every run its own H_r V_r,
since rows are independent. Each run's own optimizer then takes the step from
its products (``AdaHessian.step_with_products``: kernel averaging and the
update per run, as alone). Stacks with AdaHessian runs hold only AdaHessian
runs (``batch_key``), so no other run pays for the graph.
"""

from __future__ import annotations

import torch

from ..optim.adahessian import AdaHessian
from .stack import ModelStack


def needs_hessian(run) -> bool:
    return isinstance(run.optimizer, AdaHessian)


class HessianUpdate:
    """The AdaHessian runs ``rows`` of ``stack``; see the module docstring."""

    def __init__(self, rows: list[int], runs: list, stack: ModelStack):
        self.rows, self.runs, self.stack = rows, runs, stack
        for r in rows:
            if not needs_hessian(runs[r]):
                raise TypeError(f"HessianUpdate: run {r}'s optimizer is {type(runs[r].optimizer).__name__}, not AdaHessian")
        # where each parameter object of a run lives in the stack
        self.names = [{id(p): n for n, p in run.model.named_parameters()} for run in runs]

    def attach(self) -> None:
        pass

    def detach(self) -> None:
        self.stack.graph_grad = None

    @torch.no_grad()
    def step(self, active: list[int], losses: torch.Tensor, rngs: list[torch.Tensor], second_pass=None) -> None:
        stack = self.stack
        graph_grad, stack.graph_grad = stack.graph_grad, None  # the graph is freed after this step
        if graph_grad is None:
            raise RuntimeError("HessianUpdate: the batched pass kept no gradient graph (create_graph=True)")
        wanted = set(active)
        stepping = [r for r in self.rows if r in wanted]
        if not stepping:
            return
        probes = torch.zeros_like(stack.flat)  # rows of runs not stepping stay 0
        params = {}
        for r in stepping:
            optimizer = self.runs[r].optimizer
            params[r] = optimizer.params_with_grad()
            for p, z in zip(params[r], optimizer.draw_probes(params[r])):
                stack.row(probes, r, self.names[r][id(p)]).copy_(z)
        if graph_grad.requires_grad:
            with torch.enable_grad():
                products = stack.flat_grad(graph_grad, grad_outputs=probes)
        else:  # no gradient depends on a parameter: H z = 0, as alone
            products = torch.zeros_like(stack.flat)
        for r in stepping:
            hvs = [stack.row(products, r, self.names[r][id(p)]) for p in params[r]]
            self.runs[r].optimizer.step_with_products(params[r], hvs)
