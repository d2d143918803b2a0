"""The training loop.

One run = one spec. Data are held as tensors on the device (no DataLoader:
for in-memory data its per-batch overhead dominates small models). Every run
is deterministic in its seed and resumable:

- a resume point (weights, optimizer, data order, RNG states, metrics so far)
  is written atomically to ``<out>/.resume/state.pt`` on a schedule; a run
  started again continues from it and ends with identical metrics;
- the resume area is not a declared workflow output, so it survives the
  workflow deleting a job's outputs; a finished run keeps its final state
  there, and asking for it again rewrites its outputs without training;
- a NaN/inf loss ends the run with status "diverged", metrics kept.

Artifacts in ``<out>``: ``spec.json``, ``metrics.parquet`` (tidy: step,
split, metric, value), ``final.pt`` (model state_dict), ``status.json`` and
``checkpoints/step_<N>.pt`` for the steps the spec lists.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd
import torch
from tqdm.auto import tqdm

from ..data import SplitData
from ..fingerprint import training_code_fingerprint
from ..losses import build_loss
from ..models import build_model
from ..optim import build_optimizer
from ..schedules import build_schedule
from ..spec import run_id as make_run_id
from ..spec import canonical, spec_hash, validate
from .instruments import build_instrument

METRIC_COLUMNS = ["step", "split", "metric", "value"]
STATE_FILE = Path(".resume") / "state.pt"
STATE_CHECKPOINTS = Path(".resume") / "checkpoints"
RESUME_SECONDS = 60.0  # resume-point interval when the spec gives no step interval


@dataclass
class RunResult:
    run_id: str
    status: str  # "ok" | "diverged"
    steps_completed: int
    out_dir: Path
    resumed_from: int  # step the run continued from (0: a fresh start)
    train_seconds: float  # wall time of this process's training steps, eval included


class Interrupted(RuntimeError):
    """Raised by ``stop_at``: stands in for a run killed after a resume point."""


def _atomic_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _atomic_write_text(text: str, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link (cheap, and survives deletion of either name), else copy."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        tmp = dst.with_name(dst.name + ".tmp")
        tmp.write_bytes(src.read_bytes())
        os.replace(tmp, dst)


def checkpoint_path(out_dir: str | os.PathLike, step: int) -> Path:
    return Path(out_dir) / "checkpoints" / f"step_{step:06d}.pt"


def output_files(out_dir: str | os.PathLike, spec: dict[str, Any]) -> list[Path]:
    """Every file a finished run writes (the workflow declares these)."""
    out = Path(out_dir)
    files = [out / "spec.json", out / "metrics.parquet", out / "final.pt", out / "status.json"]
    return files + [checkpoint_path(out, s) for s in canonical(spec)["checkpoints"]]


@torch.no_grad()
def evaluate(model: torch.nn.Module, loss_fn, x: torch.Tensor, y: torch.Tensor, task: str, chunk: int = 4096) -> dict[str, float]:
    """Mean loss (chunks weighted by size) and, for classification, accuracy."""
    was_training = model.training
    model.eval()
    total_loss, correct, n = 0.0, 0, x.shape[0]
    try:
        for start in range(0, n, chunk):
            xc, yc = x[start : start + chunk], y[start : start + chunk]
            out = model(xc)
            total_loss += float(loss_fn(out, yc)) * xc.shape[0]
            if task == "classification":
                correct += int((out.argmax(dim=1) == yc).sum())
    finally:
        model.train(was_training)
    metrics = {"loss": total_loss / n}
    if task == "classification":
        metrics["accuracy"] = correct / n
    return metrics


class _BatchSampler:
    """Epochs of random permutations (last incomplete batch dropped); the whole
    set every step when the batch is at least the training set (full-batch GD)."""

    def __init__(self, n: int, batch_size: int, seed: int, device: torch.device):
        self.n, self.batch_size, self.device = n, min(batch_size, n), device
        self.full_batch = batch_size >= n
        self.generator = torch.Generator().manual_seed(seed)
        self.perm: torch.Tensor | None = None
        self.pos = n  # forces a permutation on the first draw

    def next(self) -> torch.Tensor | None:
        if self.full_batch:
            return None
        if self.pos + self.batch_size > self.n:
            self.perm = torch.randperm(self.n, generator=self.generator).to(self.device)
            self.pos = 0
        idx = self.perm[self.pos : self.pos + self.batch_size]
        self.pos += self.batch_size
        return idx

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "perm": None if self.perm is None else self.perm.cpu(), "pos": self.pos}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.perm = None if state["perm"] is None else state["perm"].to(self.device)
        self.pos = state["pos"]


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


def _call_if_present(obj: Any, method: str) -> None:
    fn = getattr(obj, method, None)
    if callable(fn):
        fn()


def _progress_enabled(progress: bool | None) -> bool:
    return sys.stderr.isatty() if progress is None else progress


def train_run(
    spec: dict[str, Any],
    data: SplitData,
    out_dir: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    threads: int | None = None,
    progress: bool | None = None,
    stop_at: int | None = None,
    extra_instruments: Sequence[Callable[..., dict[str, float]]] = (),
) -> RunResult:
    """Train one run into ``out_dir`` (see the module docstring for the files).

    ``stop_at``: raise ``Interrupted`` after the first resume point at or after
    this step (stands in for a kill, in tests of resuming). ``extra_instruments``: callables used in addition to
    the spec's ``instruments`` (library use; they are not part of the run's hash).
    """
    spec = validate(spec)
    rid = make_run_id(spec)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if threads:
        torch.set_num_threads(threads)
    device = torch.device(device)
    steps, log_every = spec["steps"], spec["log_every"]
    eval_every = spec["eval_every"]
    resume_every = spec["resume_every"]  # 0: every RESUME_SECONDS of training
    checkpoint_steps = set(spec["checkpoints"])
    state_file = out / STATE_FILE
    identity = {"spec_hash": spec_hash(spec, 64), "code": training_code_fingerprint()}

    saved = _load_state(state_file, identity)
    if saved is not None and saved["finished"]:
        _write_outputs(out, spec, rid, saved)
        return RunResult(rid, saved["status"], saved["step"], out, saved["step"], 0.0)

    model = build_run_model(spec, data).to(device)
    loss_fn = build_loss(spec["loss"], model=model)
    optimizer = build_optimizer(model.parameters(), spec["optimizer"])
    multiplier = build_schedule(spec["schedule"], steps)
    instruments = [build_instrument(s) for s in spec["instruments"]] + list(extra_instruments)
    create_graph = bool(getattr(optimizer, "create_graph", False))
    x = {s: data.x[s].to(device) for s in data.x}
    y = {s: data.y[s].to(device) for s in data.y}
    sampler = _BatchSampler(data.size("train"), spec["batch_size"], spec["seed"], device)
    base_lrs = [group["lr"] for group in optimizer.param_groups]

    rows: list[tuple[int, str, str, float]] = []
    step, window_n = 0, 0
    status, diverged_at = "ok", None
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        sampler.load_state_dict(saved["sampler"])
        torch.set_rng_state(saved["torch_rng"])
        for inst, inst_state in zip(instruments, saved["instruments"]):
            if inst_state is not None:
                inst.load_state_dict(inst_state)
        rows = [tuple(r) for r in saved["rows"]]
        step = saved["step"]
        base_lrs = saved["base_lrs"]
    resumed_from = step

    def set_lr(at_step: int) -> float:
        factor = multiplier(at_step)
        for group, base in zip(optimizer.param_groups, base_lrs):
            group["lr"] = base * factor
        return base_lrs[0] * factor

    def run_eval(at_step: int) -> bool:
        """Record val/test metrics; False if a loss is not finite."""
        _call_if_present(optimizer, "eval")
        finite = True
        for split in spec["eval_splits"]:
            for metric, value in evaluate(model, loss_fn, x[split], y[split], data.task).items():
                # On the training split, "full_" tells the whole-set evaluation
                # apart from the running mean of minibatch losses ("loss").
                rows.append((at_step, split, f"full_{metric}" if split == "train" else metric, value))
                finite &= math.isfinite(value)
        _call_if_present(optimizer, "train")
        return finite

    def save_checkpoint(at_step: int) -> None:
        _call_if_present(optimizer, "eval")
        _atomic_save(model.state_dict(), out / STATE_CHECKPOINTS / f"step_{at_step:06d}.pt")
        _call_if_present(optimizer, "train")

    def state(finished: bool) -> dict[str, Any]:
        eval_weights = None
        if finished:  # the weights to publish (Schedule-Free: the averaged x)
            _call_if_present(optimizer, "eval")
            eval_weights = {k: v.clone() for k, v in model.state_dict().items()}
            _call_if_present(optimizer, "train")
        return {
            **identity,
            "finished": finished,
            "status": status,
            "diverged_at": diverged_at,
            "step": step,
            "model": model.state_dict(),
            "final_model": eval_weights,
            "optimizer": optimizer.state_dict(),
            "sampler": sampler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "instruments": [inst.state_dict() if hasattr(inst, "state_dict") else None for inst in instruments],
            "rows": [list(r) for r in rows],
            "base_lrs": base_lrs,
        }

    xb, yb = x["train"], y["train"]

    def closure() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(xb), yb)
        loss.backward(create_graph=create_graph)
        return loss

    started = time.perf_counter()
    last_resume = (step, started)

    def resume_due(at_step: int) -> bool:
        if resume_every:
            return at_step - last_resume[0] >= resume_every
        return time.perf_counter() - last_resume[1] >= RESUME_SECONDS

    if step == 0:
        if eval_every and not run_eval(0):
            status, diverged_at = "diverged", 0
        if 0 in checkpoint_steps:
            save_checkpoint(0)
    model.train()
    bar = tqdm(total=steps, initial=step, desc=rid, disable=not _progress_enabled(progress), mininterval=1.0, leave=False)
    shown = step
    window_loss = torch.zeros((), device=device)
    lr = set_lr(step)
    while step < steps and status == "ok":
        idx = sampler.next()
        if idx is not None:
            xb, yb = x["train"][idx], y["train"][idx]
        loss = optimizer.step(closure)
        window_loss += loss.detach()
        window_n += 1
        step += 1
        for inst in instruments:
            for metric, value in inst(step, model, loss_fn, x["train"], y["train"]).items():
                rows.append((step, "train", metric, float(value)))
        log_now = step % log_every == 0 or step == steps
        if log_now:
            mean_loss = float(window_loss) / window_n
            rows.append((step, "train", "loss", mean_loss))
            rows.append((step, "train", "lr", lr))
            window_loss.zero_()
            window_n = 0
            if not math.isfinite(mean_loss):
                status, diverged_at = "diverged", step
            bar.update(step - shown)
            shown = step
        lr = set_lr(step)
        if status == "ok" and ((eval_every and step % eval_every == 0) or step == steps):
            if not run_eval(step):
                status, diverged_at = "diverged", step
        if step in checkpoint_steps:
            save_checkpoint(step)
        # Resume points only at log steps, where the loss window is empty, so
        # where they fall never changes the numbers.
        if log_now and step < steps and status == "ok" and resume_due(step):
            _atomic_save(state(finished=False), state_file)
            last_resume = (step, time.perf_counter())
            if stop_at is not None and step >= stop_at:
                bar.close()
                raise Interrupted(f"{rid}: stopped at step {step} (stop_at={stop_at})")
    bar.close()
    final = state(finished=True)
    final["train_seconds"] = time.perf_counter() - started
    _atomic_save(final, state_file)
    _write_outputs(out, spec, rid, final)
    return RunResult(rid, status, step, out, resumed_from, final["train_seconds"])


def _load_state(path: Path, identity: dict[str, str]) -> dict[str, Any] | None:
    """The saved state if it was written for this spec by this code, else None."""
    if not path.exists():
        return None
    try:
        saved = torch.load(path, weights_only=True)
    except Exception:  # a torn or foreign file: start afresh rather than crash
        return None
    if any(saved.get(k) != v for k, v in identity.items()):
        return None
    return saved


def _write_outputs(out: Path, spec: dict[str, Any], rid: str, final: dict[str, Any]) -> None:
    """Write the declared artifacts from a finished state; status.json goes last,
    so its presence means the rest is complete."""
    (out / "status.json").unlink(missing_ok=True)
    _atomic_write_text(json.dumps(spec, indent=2, sort_keys=True) + "\n", out / "spec.json")
    metrics = pd.DataFrame(final["rows"], columns=METRIC_COLUMNS).astype({"step": "int64", "value": "float64"})
    tmp = out / "metrics.parquet.tmp"
    metrics.to_parquet(tmp, index=False)
    os.replace(tmp, out / "metrics.parquet")
    _atomic_save(final["final_model"], out / "final.pt")
    for step in spec["checkpoints"]:
        src = out / STATE_CHECKPOINTS / f"step_{step:06d}.pt"
        if src.exists():  # a diverged run stops before its later checkpoints
            _link_or_copy(src, checkpoint_path(out, step))
        else:
            _atomic_save(final["final_model"], checkpoint_path(out, step))
    status = {
        "run_id": rid,
        "status": final["status"],
        "steps_completed": final["step"],
        "diverged_at": final["diverged_at"],
        "train_seconds": final.get("train_seconds"),
    }
    _atomic_write_text(json.dumps(status, indent=2) + "\n", out / "status.json")


def train_runs(
    specs: Sequence[dict[str, Any]],
    data: SplitData,
    out_dirs: Sequence[str | os.PathLike],
    **kwargs: Any,
) -> list[RunResult]:
    """Train several runs on the same data in this process, one after another."""
    if len(specs) != len(out_dirs):
        raise ValueError(f"{len(specs)} specs but {len(out_dirs)} output directories")
    return [train_run(spec, data, out, **kwargs) for spec, out in zip(specs, out_dirs)]
