"""Step time of every optimizer in ``OPTIMIZERS`` against torch's foreach AdamW
and against pytorch-optimizer's implementation of the same method.

Two parameter sets: (a) an MLP of ~1M parameters (few large tensors) and (b)
many small tensors (400 tensors, ~55k parameters), float32, one CPU thread.
Every contender gets the same fixed gradients; what is timed is
``optimizer.step(closure)`` where the closure only re-assigns those gradients
(so the optimizer's own work is measured, not a forward/backward pass).
Optimizers that need a differentiable graph (``create_graph = True``, e.g.
AdaHessian) get a closure that runs a real forward/backward with
``create_graph=True`` instead; the table marks them, and their time includes
that pass.

Memory: bytes per parameter the optimizer holds between steps (its state plus
any work buffers and caches, measured after the timed steps with
``descentlab.optim._base.held_bytes``; parameters and gradients excluded).

Repeats are interleaved (every contender once per round, rounds repeated) so
that machine load hits all alike; the table reports the median per-step time
and the median over rounds of its ratio to torch's ``AdamW(foreach=True)`` and
to pytorch-optimizer's class (run with its own defaults) in the same round,
which cancels most of the drift of a shared machine's load.

Targets (issue 3): every Adam-like method of ours within 1.3x of torch's
foreach AdamW, and faster than pytorch-optimizer's version of the same method.
Contenders are timed from their first steps; methods in ``LATE_PHASE`` get a
second row timed after a warm-up (EXAdam's extra term vanishes after ~160
steps in float32). ``muon`` gets a second row stepped by torch.optim.Muon
itself (one matrix at a time), the path the registry's batched step replaces;
pytorch-optimizer's Muon gets the same routing (hidden matrices to Muon, the
rest to its AdamW).

    python benchmarks/optimizers.py [--repeats 5] [--steps 10] [--only adam,lion]

Writes benchmarks/results/optimizers.md.
"""

from __future__ import annotations

import argparse
import importlib
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from descentlab.optim import OPTIMIZERS
from descentlab.optim._base import held_bytes
from descentlab.optim.muon import MuonAdamW

OUT = Path(__file__).resolve().parent / "results" / "optimizers.md"

# Hyperparameters so every method builds with a sensible lr (defaults otherwise).
HPARAMS: dict[str, dict[str, Any]] = {
    "sgd": {"lr": 1e-2, "momentum": 0.9},
    "sgdp": {"lr": 1e-2, "momentum": 0.9},
    "lion": {"lr": 1e-4},
    "mars": {"lr": 1e-3, "lr_1d": 1e-3},
    "sam": {"lr": 1e-2, "momentum": 0.9},
    "asam": {"lr": 1e-2, "momentum": 0.9},
}

# Methods whose step gets cheaper later in training: timed again after that
# many warm-up steps (EXAdam's d2 term rounds to 1 in float32 after ~160 steps).
LATE_PHASE: dict[str, tuple[str, int]] = {"exadam": ("from step 200", 200)}

# ours -> pytorch-optimizer class name (same method).
PO_EQUIVALENT: dict[str, str] = {
    "adamp": "AdamP", "sgdp": "SGDP", "diffgrad": "DiffGrad", "grams": "Grams",
    "exadam": "EXAdam", "mars": "MARS", "ademamix": "AdEMAMix", "lion": "Lion",
    "adahessian": "AdaHessian", "sfadamw": "ScheduleFreeAdamW", "sfsgd": "ScheduleFreeSGD",
    "shampoo": "Shampoo", "muon": "Muon",
}

# Adam-like methods of ours held to the 1.3x-of-foreach-AdamW target (AdaHessian
# is timed with its forward/backward pass, so its ratio says nothing about the step).
ADAM_LIKE = {"adamp", "diffgrad", "grams", "exadam", "mars", "ademamix", "adagrad_norm", "lion",
             "momo_adam", "sfadamw"}


class TorchStepMuon(MuonAdamW):
    """The registry's Muon + AdamW, stepped by torch.optim.Muon's own per-matrix loop."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for sub in (self.muon, self.adamw):
            if sub is not None:
                sub.step()
        return loss


def po_muon_groups(params: list[nn.Parameter]) -> list[dict[str, Any]]:
    """pytorch-optimizer's Muon needs groups flagged use_muon: the registry's routing."""
    matrices = [p for p in params if p.dim() == 2]
    hidden = {id(p) for p in matrices[1:-1]}
    groups = [{"params": [p for p in params if id(p) in hidden], "use_muon": True},
              {"params": [p for p in params if id(p) not in hidden], "use_muon": False}]
    return [g for g in groups if g["params"]]


def mlp_1m() -> nn.Module:
    return nn.Sequential(nn.Linear(512, 1024), nn.ReLU(), nn.Linear(1024, 512))  # 1,050,112


def many_small() -> nn.Module:
    return nn.Sequential(*[nn.Sequential(nn.Linear(11, 11), nn.Tanh()) for _ in range(200)])


MODELS: dict[str, Callable[[], nn.Module]] = {
    "MLP ~1M params (4 tensors)": mlp_1m,
    "many small tensors (400 tensors)": many_small,
}


class Contender:
    """One optimizer on its own copy of the model, stepped with a closure."""

    def __init__(self, label: str, factory: Callable[[list[nn.Parameter]], torch.optim.Optimizer],
                 make_model: Callable[[], nn.Module], grads: list[torch.Tensor], input_dim: int,
                 create_graph: bool = False):
        torch.manual_seed(0)
        self.label = label
        self.model = make_model()
        self.params = list(self.model.parameters())
        self.grads = grads
        self.optimizer = factory(self.params)
        self.create_graph = create_graph or bool(getattr(self.optimizer, "create_graph", False))
        self.x = torch.randn(8, input_dim)
        self.times: list[float] = []

    def closure(self) -> torch.Tensor:
        if self.create_graph:
            self.optimizer.zero_grad()
            loss = self.model(self.x).square().mean()
            loss.backward(create_graph=True)
            return loss
        for p, g in zip(self.params, self.grads):
            p.grad = g.clone() if p.grad is None else p.grad.copy_(g)
        return torch.tensor(1.0)

    def run(self, steps: int) -> None:
        start = time.perf_counter()
        for _ in range(steps):
            self.optimizer.step(self.closure)
        self.times.append((time.perf_counter() - start) / steps)

    def held_per_param(self) -> tuple[float, float]:
        """(state, other held) bytes per parameter between steps."""
        state, other = held_bytes(self.optimizer)
        numel = sum(p.numel() for p in self.params)
        return state / numel, other / numel

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    def ratio_to(self, other: "Contender") -> float:
        """Median over rounds of this round's time / the other's in the same round."""
        return statistics.median(a / b for a, b in zip(self.times, other.times))


def contenders_for(names: list[str], make_model, grads, input_dim) -> tuple[list[Contender], list[str]]:
    po = None
    try:
        po = importlib.import_module("pytorch_optimizer")
    except ImportError:
        pass
    out, errors = [], []

    def add(label, factory, create_graph=False, warm_steps=1):
        try:
            contender = Contender(label, factory, make_model, grads, input_dim, create_graph)
            contender.run(warm_steps)  # warm-up (and a check that it steps at all)
            contender.times.clear()
            out.append(contender)
        except Exception as exc:  # noqa: BLE001 - report, don't stop the benchmark
            errors.append(f"{label}: {type(exc).__name__}: {str(exc)[:120]}")

    add("torch AdamW foreach", lambda p: torch.optim.AdamW(p, lr=1e-3, foreach=True))
    for name in names:
        ours = lambda p, n=name: OPTIMIZERS.build({"name": n, **HPARAMS.get(n, {})}, p)  # noqa: E731
        add(name, ours)
        if name in LATE_PHASE:
            suffix, warm_steps = LATE_PHASE[name]
            add(f"{name} {suffix}", ours, warm_steps=warm_steps)
        if name == "muon":
            add("muon, torch.optim.Muon's step", lambda p: TorchStepMuon(p))
        if po is not None and name in PO_EQUIVALENT:
            cls = getattr(po, PO_EQUIVALENT[name], None)
            if cls is None:
                continue
            if name == "sam":
                factory = lambda p, cls=cls: cls(p, base_optimizer=torch.optim.SGD, lr=1e-2)  # noqa: E731
            elif name == "muon":
                factory = lambda p, cls=cls: cls(po_muon_groups(p))  # noqa: E731
            else:
                hp = {k: v for k, v in HPARAMS.get(name, {}).items() if k not in ("lr_1d",)}
                factory = lambda p, cls=cls, hp=hp: cls(p, **hp)  # noqa: E731
            add(f"po.{PO_EQUIVALENT[name]}", factory, create_graph=name == "adahessian")
    return out, errors


def measure(model_name: str, names: list[str], repeats: int, steps: int, budget_s: float):
    make_model = MODELS[model_name]
    torch.manual_seed(1)
    reference = make_model()
    grads = [torch.randn_like(p) * 1e-2 for p in reference.parameters()]
    input_dim = next(reference.parameters()).shape[1]
    contenders, errors = contenders_for(names, make_model, grads, input_dim)
    # Slow methods (e.g. Shampoo's eigendecompositions) get fewer steps per round.
    steps_for = {}
    for c in contenders:
        c.run(1)
        steps_for[c.label] = max(1, min(steps, int(budget_s / max(c.times[0], 1e-6))))
        c.times.clear()
    for _ in range(repeats):
        for c in contenders:  # interleaved: one timing of each per round
            c.run(steps_for[c.label])
    return contenders, errors


def table(model_name: str, contenders: list[Contender], errors: list[str]) -> list[str]:
    by_label = {c.label: c for c in contenders}
    baseline = by_label["torch AdamW foreach"]
    lines = [f"### {model_name}", "",
             "| optimizer | ms / step | × torch AdamW foreach | po ms / step | ours ÷ po "
             "| held B / param (state + other) | po held B / param | note |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    lines.append(f"| torch AdamW foreach | {1e3 * baseline.median:.3f} | 1.00 | | | "
                 f"{held_cell(baseline)} | | baseline |")
    for c in contenders:
        if c.label == "torch AdamW foreach" or c.label.startswith("po."):
            continue
        po_label = f"po.{PO_EQUIVALENT[c.label]}" if c.label in PO_EQUIVALENT else None
        po = by_label.get(po_label) if po_label else None
        ratio = c.ratio_to(baseline)
        notes = []
        if c.create_graph:
            notes.append("incl. fwd/bwd with create_graph")
        if c.label.split(" ")[0] in ADAM_LIKE:  # "exadam from step 200" too
            notes.append("≤ 1.3× AdamW" + (" ✓" if ratio <= 1.3 else " ✗"))
        po_cells, po_held = " | ", ""
        if po:
            po_ratio = c.ratio_to(po)
            po_cells = f"{1e3 * po.median:.3f} | {po_ratio:.2f}"
            po_held = held_cell(po)
            notes.append("faster than po" + (" ✓" if po_ratio < 1 else " ✗"))
        lines.append(f"| {c.label} | {1e3 * c.median:.3f} | {ratio:.2f} | {po_cells} | {held_cell(c)} | "
                     f"{po_held} | {'; '.join(notes)} |")
    if errors:
        lines += ["", "Could not be timed:", ""] + [f"- {e}" for e in errors]
    return lines + [""]


def held_cell(c: Contender) -> str:
    state, other = c.held_per_param()
    return f"{state + other:.2f} ({state:.2f} + {other:.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10, help="steps per timing (fewer for slow ones)")
    parser.add_argument("--budget", type=float, default=0.3, help="seconds per timing, at most about")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", default="", help="comma-separated registry names")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = [n for n in args.only.split(",") if n] or OPTIMIZERS.names()
    start = time.perf_counter()
    lines = ["# Optimizer step time", "",
             f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
             f"{args.threads} thread(s), float32; median of {args.repeats} interleaved rounds "
             f"(≤ {args.steps} steps each); ratios are medians of per-round ratios. "
             "`po` = pytorch-optimizer with its defaults (foreach where it has it). "
             "A shared machine: expect about ±10% noise on ratios.", "",
             "Command: `python benchmarks/optimizers.py "
             f"--repeats {args.repeats} --steps {args.steps}`", ""]
    for model_name in MODELS:
        contenders, errors = measure(model_name, names, args.repeats, args.steps, args.budget)
        lines += table(model_name, contenders, errors)
        print("\n".join(table(model_name, contenders, errors)), flush=True)
    lines.append(f"Total benchmark time: {time.perf_counter() - start:.0f} s.")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
