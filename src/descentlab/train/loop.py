"""The training loop.

One run = one spec. Data are held as tensors on the device (no DataLoader:
for in-memory data its per-batch overhead dominates small models). Every run
is deterministic in its seed and resumable:

- a resume point (weights, optimizer, data order, RNG states, metrics so far)
  is written atomically to ``<out>/.resume/state.pt`` on a schedule; a run
  started again continues from it and ends with identical metrics;
- the resume area is not a declared workflow output, so it survives the
  workflow deleting a job's outputs; a finished run keeps a small finished
  record there (no optimizer state) and the files its outputs link to, and
  asking for it again rewrites its outputs without training;
- a NaN/inf loss ends the run with status "diverged", metrics kept; its
  ``final.pt`` holds the weights at the step the divergence was seen, and the
  checkpoints after that step are marker files (``descentlab.checkpoints``)
  whose reading raises ``DivergedCheckpoint``;
- a spec with ``init`` starts from another run's checkpoint
  (``descentlab.train.from_run``).

Artifacts in ``<out>``: ``spec.json``, ``metrics.parquet`` (tidy: step,
split, metric, value), ``final.pt`` (model state_dict), ``status.json`` (with
the byte size of every other artifact) and ``checkpoints/step_<N>.pt``
(evaluation weights) and ``checkpoints/state_<N>.pt`` (training state) for the
steps the spec lists (``outputs``).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from tqdm.auto import tqdm

from ..checkpoints import diverged_marker, save_atomic
from ..data import SplitData
from ..fingerprint import training_code_fingerprint
from ..spec import run_id as make_run_id
from ..spec import spec_hash, validate
from . import outputs, resume
from .evaluation import evaluate
from .from_run import ParentDiverged, resolve_run_references, start_from_parent
from .outputs import METRIC_COLUMNS, STATE_FILE, checkpoint_path, output_files
from .training import Training, build_run_model

__all__ = [
    "METRIC_COLUMNS", "STATE_FILE", "Interrupted", "RunResult", "build_run_model", "checkpoint_path",
    "OpenRun", "RunProgress", "evaluate", "open_run", "output_files", "train_run", "train_runs",
]

RESUME_SECONDS = 60.0  # resume-point interval when the spec gives no step interval


@dataclass
class RunResult:
    run_id: str
    status: str  # "ok" | "diverged"
    steps_completed: int
    out_dir: Path
    resumed_from: int  # step the run continued from (0: a fresh start; a child's start step)
    train_seconds: float  # wall time of this process's training steps, eval included


class Interrupted(RuntimeError):
    """Raised by ``stop_at``: stands in for a run killed after a resume point."""


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
    runs_dir: str | os.PathLike | None = None,
) -> RunResult:
    """Train one run into ``out_dir`` (see the module docstring for the files).

    ``stop_at``: raise ``Interrupted`` after the first resume point at or after
    this step (stands in for a kill, in tests of resuming). ``extra_instruments``:
    callables used in addition to the spec's ``instruments`` (library use; they
    are not part of the run's hash). ``runs_dir``: where the runs that ``init``
    and run references name live (default: ``out_dir``'s parent).
    """
    if threads:
        torch.set_num_threads(threads)
    opened = open_run(spec, data, out_dir, device=device, extra_instruments=extra_instruments, runs_dir=runs_dir)
    if isinstance(opened, RunResult):
        return opened
    started = time.perf_counter()
    _train(opened, progress, stop_at)
    return opened.finish(opened.start_seconds + time.perf_counter() - started)


@dataclass
class OpenRun:
    """A run ready to train: its live ``Training`` at its first step to take
    (fresh, resumed or started from a parent), where it writes, and its identity."""

    run: Training
    out: Path
    rid: str
    identity: dict[str, str]
    resumed_from: int
    start_seconds: float  # wall time of the first step's evaluation and checkpoint

    def finish(self, train_seconds: float) -> RunResult:
        _finish(self.out, self.run.spec, self.rid, self.identity, self.run, train_seconds)
        return RunResult(self.rid, self.run.status, self.run.step, self.out, self.resumed_from, train_seconds)


def open_run(
    spec: dict[str, Any],
    data: SplitData,
    out_dir: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    extra_instruments: Sequence[Callable[..., dict[str, float]]] = (),
    runs_dir: str | os.PathLike | None = None,
) -> OpenRun | RunResult:
    """Everything ``train_run`` does before its first step: a finished run's
    outputs rewritten (a ``RunResult``), or the run built, resumed or started
    from its parent, and its first step's evaluation and checkpoint done."""
    spec = validate(spec)
    rid = make_run_id(spec)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs_dir = out.parent if runs_dir is None else Path(runs_dir)
    identity = {"spec_hash": spec_hash(spec, 64), "code": training_code_fingerprint()}

    saved = resume.read_resume_state(out / STATE_FILE, identity)
    if saved is not None and saved["finished"]:
        if outputs.finished_sources_intact(out, spec, saved.get("sizes")):
            outputs.write_outputs(out, spec, rid, saved)
            return RunResult(rid, saved["status"], saved["step"], out, saved["step"], 0.0)
        resume.log.warning("%s: finished record without its files in .resume/ (missing or damaged); training again", out / STATE_FILE)
        saved = None
    if saved is None:
        outputs.clear_resume_checkpoints(out)

    run = Training(resolve_run_references(spec, runs_dir), data, torch.device(device), extra_instruments)
    if saved is not None:
        run.load_state_dict(saved)
        run.rows = [tuple(r) for r in saved["rows"]]
    elif spec["init"] is not None:
        try:
            start_from_parent(run, spec["init"], runs_dir, spec["optimizer"]["name"])
        except ParentDiverged as err:
            start = 0 if spec["init"]["restore"] == "weights" else spec["init"]["step"]
            return _finish_untrained(out, spec, rid, identity, start, str(err))
    started = time.perf_counter()
    if saved is None:
        _start(run, out, rid)
    return OpenRun(run, out, rid, identity, run.step, time.perf_counter() - started)


def _save_checkpoint(run: Training, out: Path, rid: str, eval_weights: bool = True, state: bool = True) -> None:
    weights = run.eval_weights() if eval_weights else None
    training_state = {**run.state_dict(), "run_id": rid, "spec": run.spec} if state else None
    outputs.save_checkpoint(out, run.step, weights, training_state)


def _start(run: Training, out: Path, rid: str) -> None:
    """What a run does at its first step (0, or a child's start step): evaluate
    and checkpoint, leaving the training weights exactly as they were."""
    spec = run.spec
    run.averagers.observe(run.step, run.model, epoch_end=False)  # they start from the start step's weights
    with run.training_weights_kept():
        if spec["eval_every"]:
            run.evaluate()
        if run.step in spec["checkpoints"]:
            _save_checkpoint(run, out, rid, state=False)
    if run.step in spec["checkpoints"]:
        _save_checkpoint(run, out, rid, eval_weights=False)


class RunProgress:
    """What a run does around its steps, on its spec's schedules: log lines,
    learning rates, evaluations, checkpoints and resume points. ``after_step``
    follows every ``take_step`` (one run here, or many at once in ``batched``)."""

    def __init__(self, opened: OpenRun, progress: bool | None, stop_at: int | None):
        self.opened, self.stop_at = opened, stop_at
        run = opened.run
        self.checkpoint_steps = set(run.spec["checkpoints"])
        self.last_resume = (run.step, time.perf_counter())
        run.model.train()
        self.bar = tqdm(total=run.spec["steps"], initial=run.step, desc=opened.rid,
                        disable=not _progress_enabled(progress), mininterval=1.0, leave=False)
        self.shown = run.step
        run.set_lr(run.step)

    @property
    def active(self) -> bool:
        run = self.opened.run
        return run.step < run.spec["steps"] and run.status == "ok"

    def _resume_due(self) -> bool:  # resume_every 0: every RESUME_SECONDS of training
        every = self.opened.run.spec["resume_every"]
        if every:
            return self.opened.run.step - self.last_resume[0] >= every
        return time.perf_counter() - self.last_resume[1] >= RESUME_SECONDS

    def after_step(self) -> None:
        run, out, rid = self.opened.run, self.opened.out, self.opened.rid
        spec = run.spec
        steps, log_every, eval_every = spec["steps"], spec["log_every"], spec["eval_every"]
        log_now = run.step % log_every == 0 or run.step == steps
        if log_now:
            run.log_window()
            self.bar.update(run.step - self.shown)
            self.shown = run.step
        run.set_lr(run.step)
        if run.status == "ok" and ((eval_every and run.step % eval_every == 0) or run.step == steps):
            run.evaluate()
        if run.step in self.checkpoint_steps:
            _save_checkpoint(run, out, rid)
        # Resume points only at log steps, where the loss window is empty, so
        # where they fall never changes the numbers.
        if log_now and run.step < steps and run.status == "ok" and self._resume_due():
            resume.save(resume.resume_point(self.opened.identity, run), out / STATE_FILE)
            self.last_resume = (run.step, time.perf_counter())
            if self.stop_at is not None and run.step >= self.stop_at:
                self.bar.close()
                raise Interrupted(f"{rid}: stopped at step {run.step} (stop_at={self.stop_at})")

    def close(self) -> None:
        self.bar.close()


def _train(opened: OpenRun, progress: bool | None, stop_at: int | None) -> None:
    """Steps until the last one or a divergence, with logs, evaluations,
    checkpoints and resume points on their schedules."""
    tracker = RunProgress(opened, progress, stop_at)
    while tracker.active:
        opened.run.take_step()
        tracker.after_step()
    tracker.close()


def _finish(out: Path, spec: dict[str, Any], rid: str, identity: dict[str, str], run: Training, train_seconds: float) -> None:
    """Final weights and markers into .resume/, the small finished record over the
    resume point (the optimizer state goes), then the declared outputs."""
    save_atomic(run.eval_weights(), out / outputs.RESUME_FINAL)
    for name, final in run.averagers.finals().items():  # final.<name>.pt; a marker if it never averaged
        message = f"run {rid}: averager {name} took no weights before the run ended at step {run.step}"
        save_atomic(diverged_marker(message) if final is None else final, out / outputs.RESUME_DIR / name)
    unreached = [s for s in spec["checkpoints"] if s > run.step]
    outputs.write_markers(out, unreached, lambda k: f"run {rid} diverged at step {run.diverged_at}; no weights at step {k}")
    record = resume.finished_record(identity, run.status, run.step, run.diverged_at, run.reason, run.rows, train_seconds)
    record["sizes"] = outputs.source_sizes(out, spec)
    resume.save(record, out / STATE_FILE)
    outputs.write_outputs(out, spec, rid, record)


def _finish_untrained(out: Path, spec: dict[str, Any], rid: str, identity: dict[str, str], start: int, reason: str) -> RunResult:
    """A child whose parent diverged before its start: recorded as diverged, no metrics, marker files."""
    message = f"run {rid} did not train ({reason}); it has no weights"
    save_atomic(diverged_marker(message), out / outputs.RESUME_FINAL)
    for name in outputs.averager_finals(spec):
        save_atomic(diverged_marker(message), out / outputs.RESUME_DIR / name)
    outputs.write_markers(out, list(spec["checkpoints"]), lambda k: f"run {rid} did not train ({reason}); no weights at step {k}")
    record = resume.finished_record(identity, "diverged", start, start, reason, [], 0.0)
    record["sizes"] = outputs.source_sizes(out, spec)
    resume.save(record, out / STATE_FILE)
    outputs.write_outputs(out, spec, rid, record)
    return RunResult(rid, "diverged", start, out, start, 0.0)


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
