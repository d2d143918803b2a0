"""``ModelStack``: the models of R runs as one batched computation.

The parameters of the runs' models (one architecture) are stacked into one
(R, D) leaf tensor, a run's parameters one row, and its buffers likewise along
a leading run dimension; each run's own model keeps its ``nn.Parameter``
objects (its optimizer holds them) but their storage becomes its part of its
row (``p.data = flat[r, a:b].view(shape)``), and its ``p.grad`` the same
part of the stacked gradient. The batched pass differentiates one leaf per
tensor, (R, *shape), sharing the flat storage and gradient. So the forward and backward
of all runs are one ``torch.vmap`` of ``torch.func.functional_call``, while
everything else about a run (its optimizer, evaluation, checkpoints, state)
still goes through its own objects and sees exactly its own numbers.

BatchNorm's running statistics are buffers, stacked like the parameters: each
run keeps its own. Each run draws its own minibatch, so inputs are (R, B, ...).

For an ``nn.Sequential`` of the registry's layers the batched forward is
written out directly (``direct_forward``: batched matmuls, convolutions with
the runs folded into the channels), and for the registry's GPT too
(``direct_gpt``: vmap has no rule for its attention); both are faster than
``vmap``, which other models (and ``direct=False``) take. Cross-entropy and
the log-partition penalty over it, per example or per token, are one call for
all runs (``batched_losses``); other shared losses are vmapped.
"""

from __future__ import annotations

import copy
import warnings
from typing import Callable, Sequence

import torch
from torch.func import functional_call, vmap

from ..models.gpt import GPT
from .batched_losses import stacked_losses
from .direct_forward import DirectForward, unsupported_reason
from .direct_gpt import DirectGPT
from .training import Training


def direct_forward_of(template: torch.nn.Module):
    """The written-out batched forward of ``template``'s architecture, or None (vmap)."""
    if type(template) is GPT:
        return DirectGPT(template)
    return DirectForward(template) if unsupported_reason(template) is None else None


class ModelStack:
    """The parameters and buffers of ``runs``' models, stacked; see the module docstring.

    ``shared_loss``: the loss module when all runs use the same loss spec (it
    is then batched too); None computes each run's loss from its own slice of
    the batched outputs (same numbers, one call per run). ``direct``: use
    ``DirectForward`` where the architecture allows (False: always vmap).
    """

    def __init__(self, runs: Sequence[Training], shared_loss: Callable | None, direct: bool = True):
        if len(runs) < 1:
            raise ValueError("ModelStack needs at least one run")
        self.runs = list(runs)
        # A parameter-free copy of the architecture to call functionally.
        self.template = copy.deepcopy(runs[0].model).to("meta").train()
        self.shared_loss = shared_loss
        self.direct = direct_forward_of(self.template) if direct else None
        models = [run.model for run in runs]
        per_run = [dict(m.named_parameters()) for m in models]
        self._check_same([{n: t for n, t in d.items()} for d in per_run])
        # All parameters of a run are one row of a (R, D) leaf tensor, so an
        # elementwise update of every run is one tensor operation.
        self.shapes = {n: t.shape for n, t in per_run[0].items()}
        self.offsets, total = {}, 0
        for n, shape in self.shapes.items():
            self.offsets[n] = (total, total + shape.numel())
            total += shape.numel()
        self.flat = torch.cat([torch.stack([d[n].detach().reshape(-1) for d in per_run]) for n in self.shapes], dim=1)
        self.flat = self.flat.contiguous().requires_grad_(True)
        self.flat.grad = torch.zeros_like(self.flat)
        # What the batched pass differentiates: one leaf per tensor, (R, *shape), a view
        # of the flat storage, whose .grad is its view of the flat gradient (accumulated
        # into in place). Not slices of the flat leaf in the graph: each slice's backward
        # writes a zero-filled (R, D) tensor; measured (fwd+bwd of a 3-layer MLP, in one
        # process, interleaved) 1.6x slower at 5 runs of width 256, 1.25x at 32 of width 64.
        R = self.flat.shape[0]
        self.leaves = {}
        for n, (a, b) in self.offsets.items():
            leaf = self.flat.detach()[:, a:b].view(R, *self.shapes[n]).requires_grad_(True)
            leaf.grad = self.flat.grad[:, a:b].view(R, *self.shapes[n])
            self.leaves[n] = leaf
        self.graph_grad: torch.Tensor | None = None
        per_run_buffers = [dict(m.named_buffers()) for m in models]
        self._check_same(per_run_buffers)
        self.buffers = {n: torch.stack([d[n].detach() for d in per_run_buffers]).contiguous() for n in per_run_buffers[0]}
        for r, model in enumerate(models):
            for name, p in model.named_parameters():
                p.data = self.row(self.flat.detach(), r, name)
                # its row of the stacked gradient, set once: the stacked .grad is
                # zeroed and accumulated into in place every step
                p.grad = self.row(self.flat.grad, r, name)
            for name, b in model.named_buffers():
                b.data = self.buffers[name][r]

    def row(self, flat: torch.Tensor, r: int, name: str) -> torch.Tensor:
        """Run ``r``'s tensor ``name`` inside a (R, D) tensor laid out like the parameters."""
        start, end = self.offsets[name]
        return flat[r, start:end].view(self.shapes[name])

    def params(self) -> dict[str, torch.Tensor]:
        """The stacked parameters, (R, *shape) leaves sharing the flat storage."""
        return self.leaves

    def flat_grad(self, outputs: torch.Tensor, grad_outputs: torch.Tensor | None = None,
                  create_graph: bool = False) -> torch.Tensor:
        """d outputs / d parameters (weighted by ``grad_outputs``), laid out like ``flat``:
        one (R, D) tensor, zeros where nothing depends on a parameter."""
        leaves = list(self.leaves.values())
        grads = torch.autograd.grad(outputs, leaves, grad_outputs=grad_outputs, create_graph=create_graph, allow_unused=True)
        R = self.flat.shape[0]
        return torch.cat([torch.zeros_like(leaf).reshape(R, -1) if g is None else g.reshape(R, -1)
                          for g, leaf in zip(grads, leaves)], dim=1)

    @staticmethod
    def _check_same(per_run: list[dict[str, torch.Tensor]]) -> None:
        names = list(per_run[0])
        for d in per_run[1:]:
            if list(d) != names or any(d[n].shape != per_run[0][n].shape for n in names):
                raise ValueError("ModelStack: the runs' models differ in their tensors; only one architecture can be stacked")

    def __len__(self) -> int:
        return len(self.runs)

    def outputs(self, xb: torch.Tensor, batched_x: bool, training: bool = True, rows: Sequence[int] | None = None) -> torch.Tensor:
        """The runs' outputs (R, B, ...) (only ``rows``' when given, then without
        gradient); ``training``: the models' train/eval mode (BatchNorm statistics)."""
        params, buffers = self.params(), self.buffers
        if rows is not None:
            index = torch.tensor(list(rows), device=self.flat.device)
            params = {n: v.detach().index_select(0, index) for n, v in params.items()}
            buffers = {n: v.index_select(0, index) for n, v in buffers.items()}
            if batched_x:
                xb = xb.index_select(0, index)
        if self.direct is not None:
            return self.direct(params, buffers, xb, batched_x, training)

        def forward(params, buffers, x):
            return functional_call(self.template, (params, buffers), (x,))

        self.template.train(training)
        try:
            return vmap(forward, in_dims=(0, 0, 0 if batched_x else None))(params, buffers, xb)
        finally:
            self.template.train()

    def losses(self, outs: torch.Tensor, yb: torch.Tensor, batched_y: bool, rows: Sequence[int] | None = None) -> torch.Tensor:
        """Each run's loss (R,) of its outputs ``outs`` (R, B, ...) against its targets."""
        rows = range(len(self.runs)) if rows is None else rows
        if self.shared_loss is None:
            return torch.stack([self.runs[r].loss_fn(outs[i], yb[i] if batched_y else yb) for i, r in enumerate(rows)])
        losses = stacked_losses(self.shared_loss, outs, yb, batched_y)
        if losses is not None:
            return losses
        return vmap(self.shared_loss, in_dims=(0, 0 if batched_y else None))(outs, yb)

    def loss_and_grads(self, xb: torch.Tensor, yb: torch.Tensor, batched_x: bool, inactive: Sequence[int] = (),
                       create_graph: bool = False) -> torch.Tensor:
        """Per-run minibatch losses, shape (R,), detached; the stacked ``.grad`` holds
        each run's gradient of its own loss. ``xb``/``yb`` are (R, B, ...) when
        ``batched_x``, else one batch for all runs (full-batch training).
        Runs in ``inactive`` (finished or diverged) keep their buffers unchanged.
        ``create_graph``: the stacked gradient with its graph is also kept in
        ``graph_grad`` (for Hessian-vector products; ``hessian_update``)."""
        kept = {n: b[list(inactive)].clone() for n, b in self.buffers.items()} if inactive else {}
        self.flat.grad.zero_()
        losses = self.losses(self.outputs(xb, batched_x), yb, batched_x)
        # Rows are independent, so d(sum)/d(row r) is run r's own gradient.
        if create_graph:
            self.graph_grad = self.flat_grad(losses.sum(), create_graph=True)
            self.flat.grad.copy_(self.graph_grad.detach())  # the runs' p.grad are views of it
        else:
            with warnings.catch_warnings():
                # the leaves' .grad are strided views of the flat gradient (in place, as
                # measured above: faster than contiguous gradients copied in)
                warnings.filterwarnings("ignore", message="grad and param do not obey the gradient layout contract")
                losses.sum().backward()
        if kept:
            with torch.no_grad():
                for n, b in self.buffers.items():
                    b[list(inactive)] = kept[n]
        return losses.detach()
