"""``BatchedEvaluation``: the evaluations of a step, for every run of a stack
that evaluates then, as one batched forward per split.

``RunProgress.after_step`` calls ``run.evaluate()`` on the run's schedule.
While a stack trains, each run's ``evaluate`` is replaced on the instance
(as ``StackedUpdate`` replaces ``optimizer_state_dict``) by one that records
what ``prepare`` computed for it at this step, the numbers
``descentlab.train.evaluation.evaluate`` gives (its sums of chunk losses
weighted by chunk size, to rounding; on a CPU the chunks are smaller, so
that R runs' activations of a chunk stay in cache: ``chunk_size``); a run
it has nothing for (e.g. a schedule ``prepare`` did not foresee) evaluates
alone, as ``Training.evaluate``. The weights evaluated
are the run's evaluation weights (Schedule-Free: the average, through the
run's own ``eval_weights_in_model``) and BatchNorm uses running statistics.
"""

from __future__ import annotations

import contextlib
import math
from typing import Sequence

import torch

from .stack import ModelStack
from .training import Training

CHUNK = 4096  # evaluate()'s chunk size
# On a CPU, at most this many elements of the widest layer output of R runs at once:
# a chunk of R runs' activations stays in cache. Measured ad hoc (chunk sizes
# interleaved in one process; no committed benchmark), 16 digits-CNN runs on
# train+val: 107 ms with 4,096-example chunks, 80 ms with 32 (2**19 / (16 x 1,024));
# 32 MNIST-1D MLP runs: 18 ms either way down to 128 examples, slower below.
CPU_CHUNK_ELEMENTS = 2**19
MIN_CHUNK = 32

__all__ = ["BatchedEvaluation", "evaluates_at", "largest_output_elements"]


def largest_output_elements(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Elements of the largest output of ``model``'s leaf modules on the input ``x``."""
    sizes = [0]
    record = lambda module, inputs, out: sizes.append(out.numel() if isinstance(out, torch.Tensor) else 0)  # noqa: E731
    hooks = [m.register_forward_hook(record) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for hook in hooks:
            hook.remove()
    return max(sizes)


def evaluates_at(run: Training, step: int) -> bool:
    """Whether ``RunProgress.after_step`` evaluates ``run`` after reaching ``step``
    (divergence found by that step's log line aside: that run then does not)."""
    spec = run.spec
    return run.status == "ok" and (bool(spec["eval_every"]) and step % spec["eval_every"] == 0 or step == spec["steps"])


class BatchedEvaluation:
    """See the module docstring. ``attach``/``detach`` put and take the replacements."""

    def __init__(self, stack: ModelStack, runs: Sequence[Training]):
        self.stack, self.runs = stack, list(runs)
        self.ready: dict[int, tuple[int, dict[str, dict[str, float]]]] = {}
        self._per_example: int | None = None  # the widest layer output of one run on one example

    def chunk_size(self, x: torch.Tensor, runs: int) -> int:
        """Examples per batched forward of ``runs`` runs on inputs like ``x``: evaluate()'s
        on a GPU; on a CPU as many as keep the widest activation within ``CPU_CHUNK_ELEMENTS``."""
        if x.device.type != "cpu":
            return CHUNK
        if self._per_example is None:
            # on the parameter-free (meta) copy of the architecture, in eval mode as evaluated:
            # shapes only, no arithmetic
            template = self.stack.template.eval()
            try:
                self._per_example = max(1, largest_output_elements(template, x[:1].to("meta")))
            finally:
                template.train()
        return max(MIN_CHUNK, min(CHUNK, CPU_CHUNK_ELEMENTS // (runs * self._per_example)))

    def attach(self) -> None:
        for r, run in enumerate(self.runs):
            run.evaluate = (lambda r=r: self._record(r))

    def detach(self) -> None:
        for run in self.runs:
            run.__dict__.pop("evaluate", None)

    @torch.no_grad()
    def prepare(self, due: Sequence[int]) -> None:
        """Compute the metrics of runs ``due`` (rows of the stack) at their current step."""
        self.ready.clear()
        if not due:
            return
        runs = self.runs
        task = runs[due[0]].task
        splits = list(dict.fromkeys(s for r in due for s in runs[r].spec["eval_splits"]))
        metrics: dict[int, dict[str, dict[str, float]]] = {r: {} for r in due}
        with contextlib.ExitStack() as weights:
            for r in due:
                weights.enter_context(runs[r].eval_weights_in_model())
            for split in splits:
                rows = [r for r in due if split in runs[r].spec["eval_splits"]]
                x, y = runs[rows[0]].x[split], runs[rows[0]].y[split]
                for r, values in zip(rows, self._metrics(rows, x, y, task)):
                    metrics[r][split] = values
        for r in due:
            self.ready[r] = (runs[r].step, metrics[r])

    def _metrics(self, rows: list[int], x: torch.Tensor, y: torch.Tensor, task: str) -> list[dict[str, float]]:
        whole = rows == list(range(len(self.runs)))
        n = x.shape[0]
        total, correct, n_targets = [0.0] * len(rows), [0] * len(rows), 0
        chunk = self.chunk_size(x, len(rows))
        for start in range(0, n, chunk):
            xc, yc = x[start:start + chunk], y[start:start + chunk]
            out = self.stack.outputs(xc, batched_x=False, training=False, rows=None if whole else rows)
            losses = self.stack.losses(out, yc, batched_y=False, rows=rows).tolist()
            total = [t + loss * xc.shape[0] for t, loss in zip(total, losses)]
            if task == "classification":
                # one target per example, or one per token (sequences): as evaluate()
                hits = (out.argmax(dim=-1) == yc).flatten(1).sum(dim=1).tolist()
                correct = [c + h for c, h in zip(correct, hits)]
                n_targets += yc.numel()
        results = []
        for k in range(len(rows)):
            values = {"loss": total[k] / n}
            if task == "classification":
                values["accuracy"] = correct[k] / n_targets
            results.append(values)
        return results

    def _record(self, r: int) -> None:
        """What ``Training.evaluate`` records, from ``prepare``'s numbers."""
        run = self.runs[r]
        step, metrics = self.ready.pop(r, (None, None))
        if step != run.step:
            Training.evaluate(run)
            return
        finite = True
        for split in run.spec["eval_splits"]:
            for metric, value in metrics[split].items():
                run.rows.append((run.step, split, f"full_{metric}" if split == "train" else metric, value))
                finite &= math.isfinite(value)
        # the averagers' weights, evaluated on their own modules as Training.evaluate does
        run.rows += [(run.step, *row) for row in run.averagers.evaluate(run._evaluate_module)]
        if not finite:
            run.mark_diverged()

