"""A run directory's files: the declared outputs and the ``.resume/`` area.

Declared outputs (the workflow lists them, and deletes them before rerunning a
job): ``spec.json``, ``metrics.parquet``, ``final.pt``, ``status.json`` and, for
each step ``k`` in the spec's ``checkpoints``, ``checkpoints/step_<k>.pt``
(evaluation weights) and ``checkpoints/state_<k>.pt`` (training state).

``.resume/`` is not declared, so it survives that deletion. During training it
holds the resume point ``state.pt`` and the checkpoint files as they are
written (``.resume/checkpoints/``); at the end it holds ``final.pt`` and a small
finished record in ``state.pt`` (status, metric rows; no optimizer state).
The declared checkpoint files and ``final.pt`` are hard links to these, so they
cost no extra space, and a finished run asked for again rewrites its outputs
from them without training.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .averagers.config import final_files as averager_finals
from ..checkpoints import diverged_marker, save_atomic, state_path, weights_path
from ..spec import canonical

METRIC_COLUMNS = ["step", "split", "metric", "value"]
RESUME_DIR = Path(".resume")
STATE_FILE = RESUME_DIR / "state.pt"
RESUME_FINAL = RESUME_DIR / "final.pt"


def checkpoint_path(out_dir: str | os.PathLike, step: int) -> Path:
    """The evaluation weights at ``step`` (``checkpoints/step_<k:06d>.pt``)."""
    return weights_path(out_dir, step)


def output_files(out_dir: str | os.PathLike, spec: dict[str, Any]) -> list[Path]:
    """Every file a finished run writes (the workflow declares these)."""
    out = Path(out_dir)
    files = [out / "spec.json", out / "metrics.parquet", out / "final.pt", out / "status.json"]
    files += [out / name for name in averager_finals(canonical(spec))]
    for step in canonical(spec)["checkpoints"]:
        files += [weights_path(out, step), state_path(out, step)]
    return files


def checkpoint_files(spec: dict[str, Any]) -> list[Path]:
    """The checkpoint files of a run, relative to its directory."""
    return [p for step in spec["checkpoints"] for p in (weights_path("", step), state_path("", step))]


def resume_copy(out: Path, relative: Path) -> Path:
    """Where ``.resume/`` keeps the file that becomes the output ``relative``."""
    return out / RESUME_DIR / relative


def atomic_write_text(text: str, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link (cheap, and survives deletion of either name), else copy."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        tmp = dst.with_name(dst.name + ".tmp")
        tmp.write_bytes(src.read_bytes())
        os.replace(tmp, dst)


def clear_resume_checkpoints(out: Path) -> None:
    """Before a fresh start: no checkpoint of an earlier, different run may survive."""
    for relative in ("checkpoints", "final.pt", *(p.name for p in (out / RESUME_DIR).glob("final.*.pt"))):
        path = out / RESUME_DIR / relative
        if path.is_dir():
            for file in path.iterdir():
                file.unlink()
        else:
            path.unlink(missing_ok=True)


def save_checkpoint(out: Path, step: int, eval_weights: dict[str, Any] | None, state: dict[str, Any] | None) -> None:
    """Write the step's evaluation weights and/or training state into ``.resume/``."""
    if eval_weights is not None:
        save_atomic(eval_weights, resume_copy(out, weights_path("", step)))
    if state is not None:
        save_atomic(state, resume_copy(out, state_path("", step)))


def write_markers(out: Path, steps: list[int], message_for: Any) -> None:
    """Marker files (see ``descentlab.checkpoints``) for checkpoints never reached."""
    for step in steps:
        marker = diverged_marker(message_for(step), step=step)
        for relative in (weights_path("", step), state_path("", step)):
            save_atomic(marker, resume_copy(out, relative))


def _sources(out: Path, spec: dict[str, Any]) -> list[Path]:
    finals = [RESUME_FINAL] + [RESUME_DIR / name for name in averager_finals(spec)]
    return [out / p for p in finals] + [resume_copy(out, p) for p in checkpoint_files(spec)]


def source_sizes(out: Path, spec: dict[str, Any]) -> dict[str, int]:
    """Byte sizes of the files a finished record republishes, kept in the record."""
    return {p.relative_to(out).as_posix(): p.stat().st_size for p in _sources(out, spec)}


def finished_sources_intact(out: Path, spec: dict[str, Any], sizes: dict[str, int] | None) -> bool:
    """Whether the files a finished record republishes are there, at the sizes
    it recorded: the published files are hard links to them, so a file damaged
    in place is damaged in both places, and must be trained again, not copied."""
    for path in _sources(out, spec):
        if not path.is_file():
            return False
        want = (sizes or {}).get(path.relative_to(out).as_posix())
        if want is not None and path.stat().st_size != want:
            return False
    return True


def write_outputs(out: Path, spec: dict[str, Any], rid: str, record: dict[str, Any]) -> None:
    """Write the declared outputs from a finished record and the files in ``.resume/``;
    status.json goes last, so its presence means the rest is complete."""
    (out / "status.json").unlink(missing_ok=True)
    atomic_write_text(json.dumps(spec, indent=2, sort_keys=True) + "\n", out / "spec.json")
    import pandas as pd  # here, not at the top: the planner imports this module for output_files

    metrics = pd.DataFrame(record["rows"], columns=METRIC_COLUMNS).astype({"step": "int64", "value": "float64"})
    tmp = out / "metrics.parquet.tmp"
    metrics.to_parquet(tmp, index=False)
    os.replace(tmp, out / "metrics.parquet")
    link_or_copy(out / RESUME_FINAL, out / "final.pt")
    for name in averager_finals(spec):
        link_or_copy(out / RESUME_DIR / name, out / name)
    for relative in checkpoint_files(spec):
        link_or_copy(resume_copy(out, relative), out / relative)
    written = [Path("spec.json"), Path("metrics.parquet"), Path("final.pt"), *map(Path, averager_finals(spec)), *checkpoint_files(spec)]
    status = {
        "run_id": rid,
        "status": record["status"],
        "steps_completed": record["step"],
        "diverged_at": record["diverged_at"],
        "reason": record.get("reason"),
        "train_seconds": record.get("train_seconds"),
        # byte sizes, so a truncated artifact shows without reading it
        "files": {p.as_posix(): (out / p).stat().st_size for p in written},
    }
    atomic_write_text(json.dumps(status, indent=2) + "\n", out / "status.json")
