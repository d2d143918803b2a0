"""``Training``: one run's live objects and counters, and the operations the loop
is made of (a step, a log line, an evaluation, the learning rate), plus the
training state that resume points and ``checkpoints/state_<k>.pt`` files hold."""

from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Iterator, Sequence

import torch

from .averagers import Averagers
from ..checkpoints import STATE_FORMAT
from ..data import SplitData
from ..losses import build_loss
from ..losses.sequence import PerTokenLoss
from ..models import build_model
from ..optim import build_optimizer
from ..schedules import build_schedule
from .evaluation import evaluate
from .instruments import build_instrument
from .sampler import BatchSampler

Row = tuple[int, str, str, float]


def build_run_model(spec: dict[str, Any], data: SplitData) -> torch.nn.Module:
    """The run's model at initialisation: seeded by the run's seed, wrapped in
    a random subspace when the spec asks for one. Analyses rebuild it this way
    before loading weights, so the subspace's fixed theta_0 and P (not saved:
    they are D x d) come back identical."""
    torch.manual_seed(spec["seed"])
    model = build_model(spec["model"], data.input_shape, data.num_outputs)
    if spec.get("subspace"):
        from ..landscape.subspace import RandomSubspace

        model = RandomSubspace(model, **spec["subspace"], persistent=False)
    return model


def build_run_loss(spec: dict[str, Any], data: SplitData, model: torch.nn.Module) -> torch.nn.Module:
    """The run's loss; on token data (``info["targets"] == "tokens"``, e.g.
    ``charlm``) applied over every token. Analyses that recompute a run's loss
    should build it here too."""
    loss = build_loss(spec["loss"], model=model)
    return PerTokenLoss(loss) if data.info.get("targets") == "tokens" else loss


def _call_if_present(obj: Any, method: str) -> None:
    fn = getattr(obj, method, None)
    if callable(fn):
        fn()


class Training:
    """A run being trained. Built from a validated spec whose run references are
    resolved; the construction order fixes the torch RNG stream, do not reorder."""

    def __init__(
        self,
        spec: dict[str, Any],
        data: SplitData,
        device: torch.device,
        extra_instruments: Sequence[Callable[..., dict[str, float]]] = (),
    ):
        self.spec, self.task = spec, data.task
        self.model = build_run_model(spec, data).to(device)
        self.loss_fn = build_run_loss(spec, data, self.model)
        self.optimizer = build_optimizer(self.model.parameters(), spec["optimizer"])
        self.multiplier = build_schedule(spec["schedule"], spec["steps"])
        self.instruments = [build_instrument(s) for s in spec["instruments"]] + list(extra_instruments)
        self.create_graph = bool(getattr(self.optimizer, "create_graph", False))
        missing = [s for s in spec["eval_splits"] if s not in data.x]
        if missing:
            raise ValueError(f"eval_splits names {missing}, which this dataset does not have (it has {list(data.x)}); "
                             "test_shifted comes with a dataset shift, e.g. mnist1d's shift: {...}")
        self.x = {s: data.x[s].to(device) for s in data.x}
        self.y = {s: data.y[s].to(device) for s in data.y}
        self.sampler = BatchSampler(data.size("train"), spec["batch_size"], spec["seed"], device)
        self.base_lrs = [group["lr"] for group in self.optimizer.param_groups]
        self.device = device
        self.step = 0
        self.rows: list[Row] = []
        self.window_loss = torch.zeros((), device=device)  # sum of minibatch losses since the last log
        self.window_n = 0
        self.lr = 0.0  # the first group's learning rate for the next step
        self.status, self.diverged_at, self.reason = "ok", None, None
        self._xb, self._yb = self.x["train"], self.y["train"]
        self.averagers = Averagers(spec.get("averaging", []), self.model, self.optimizer, self.sampler.batch_size, self.x["train"])

    # -- one step ----------------------------------------------------------------------

    def set_lr(self, at_step: int) -> None:
        factor = self.multiplier(at_step)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * factor
        self.lr = self.base_lrs[0] * factor
        if self.averagers.set_lr(at_step):  # SWA's learning rate from its start on
            self.lr = self.optimizer.param_groups[0]["lr"]

    def _closure(self) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.model(self._xb), self._yb)
        loss.backward(create_graph=self.create_graph)
        return loss

    def take_step(self) -> None:
        """One optimizer step on the next minibatch, then the instruments."""
        self.next_batch()
        self.record_step(self.optimizer.step(self._closure))

    def next_batch(self) -> torch.Tensor | None:
        """Draw the next minibatch (indices into the training set; None: the whole set)."""
        idx = self.sampler.next()
        if idx is not None:
            self._xb, self._yb = self.x["train"][idx], self.y["train"][idx]
        return idx

    def record_step(self, loss: torch.Tensor) -> None:
        """Count the step just taken (its minibatch loss into the window), then the instruments."""
        self.window_loss += loss.detach()
        self.window_n += 1
        self.step += 1
        for inst in self.instruments:
            for metric, value in inst(self.step, self.model, self.loss_fn, self.x["train"], self.y["train"]).items():
                self.rows.append((self.step, "train", metric, float(value)))
        self.averagers.observe(self.step, self.model, epoch_end=self.sampler.epoch_ended())

    def log_window(self) -> None:
        """Record the mean minibatch loss since the last log and the step's lr."""
        mean_loss = float(self.window_loss) / self.window_n
        self.rows.append((self.step, "train", "loss", mean_loss))
        self.rows.append((self.step, "train", "lr", self.lr))
        self.window_loss.zero_()
        self.window_n = 0
        if not math.isfinite(mean_loss):
            self.mark_diverged()

    def mark_diverged(self, reason: str | None = None) -> None:
        self.status, self.diverged_at, self.reason = "diverged", self.step, reason

    # -- evaluation and weights ------------------------------------------------------------

    @contextlib.contextmanager
    def eval_weights_in_model(self) -> Iterator[None]:
        """The model holds the weights to evaluate/publish (Schedule-Free: the average)."""
        _call_if_present(self.optimizer, "eval")
        try:
            yield
        finally:
            _call_if_present(self.optimizer, "train")

    @contextlib.contextmanager
    def training_weights_kept(self) -> Iterator[None]:
        """Put the training weights back bit for bit afterwards: Schedule-Free's
        eval()/train() round trip is exact only up to rounding. Used at a run's
        start, so a continued run matches its parent to the bit."""
        kept = [p.detach().clone() for p in self.model.parameters()]
        try:
            yield
        finally:
            with torch.no_grad():
                for p, value in zip(self.model.parameters(), kept):
                    p.copy_(value)

    def evaluate(self) -> None:
        """Record val/test (and whole-train) metrics at this step; a non-finite loss diverges."""
        with self.eval_weights_in_model():
            rows = self._evaluate_module(self.model)
        # The averagers' weights are evaluated alongside; their values never diverge the run.
        self.rows += [(self.step, *row) for row in rows + self.averagers.evaluate(self._evaluate_module)]
        if not all(math.isfinite(value) for _, _, value in rows):
            self.mark_diverged()

    def _evaluate_module(self, module: torch.nn.Module) -> list[tuple[str, str, float]]:
        """``(split, metric, value)`` of ``module`` on the spec's evaluation splits."""
        loss_fn = self.loss_fn
        if module is not self.model and any(hasattr(m, "bind_model") for m in loss_fn.modules()):
            loss_fn = build_loss(self.spec["loss"], model=module)  # norm_loss: the penalty of the weights evaluated
        rows = []
        for split in self.spec["eval_splits"]:
            for metric, value in evaluate(module, loss_fn, self.x[split], self.y[split], self.task).items():
                # On the training split, "full_" tells the whole-set evaluation
                # apart from the running mean of minibatch losses ("loss").
                rows.append((split, f"full_{metric}" if split == "train" else metric, value))
        return rows

    def eval_weights(self) -> dict[str, torch.Tensor]:
        with self.eval_weights_in_model():
            return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    # -- training state ----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly from this step (training-mode weights)."""
        return {
            "format": STATE_FORMAT,
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer_state_dict(),
            "sampler": self.sampler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "instruments": [inst.state_dict() if hasattr(inst, "state_dict") else None for inst in self.instruments],
            "base_lrs": list(self.base_lrs),
            "window_loss": self.window_loss.detach().cpu().clone(),
            "window_n": self.window_n,
            "averagers": self.averagers.state_dict(),
        }

    def optimizer_state_dict(self) -> dict[str, Any]:
        """The optimizer's state (batched training replaces this on the instance: the
        state of a stacked update lives in the stack until read)."""
        return self.optimizer.state_dict()

    def load_sampler_rng_instruments(self, state: dict[str, Any]) -> None:
        """The stochastic parts of a state: data position, torch RNG, instruments, loss window."""
        self.sampler.load_state_dict(state["sampler"])
        torch.set_rng_state(state["torch_rng"])
        for inst, inst_state in zip(self.instruments, state["instruments"]):
            if inst_state is not None:
                inst.load_state_dict(inst_state)
        self.window_loss = state["window_loss"].to(device=self.device, dtype=self.window_loss.dtype).clone()
        self.window_n = state["window_n"]

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a state this run (same spec, same code) wrote: the resume point."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.load_sampler_rng_instruments(state)
        self.base_lrs = list(state["base_lrs"])
        self.step = state["step"]
        self.averagers.load_state_dict(state["averagers"])
