"""Resume points: ``.resume/state.pt``, written atomically at log steps during
training (the full training state, the metric rows so far) and replaced at the
end by a small finished record (status and rows; see ``outputs``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..checkpoints import CorruptArtifact, read_torch_file, save_atomic

log = logging.getLogger("descentlab")


def read_resume_state(path: Path, identity: dict[str, str]) -> dict[str, Any] | None:
    """The saved state if it was written for this spec by this code, else None.

    An unreadable file (a torn write, a foreign file) is discarded with a
    warning: the run starts afresh rather than crash.
    """
    if not path.exists():
        return None
    try:
        saved = read_torch_file(path)
    except CorruptArtifact as err:
        log.warning("discarding the resume state and starting afresh: %s", err)
        return None
    if not isinstance(saved, dict) or any(saved.get(k) != v for k, v in identity.items()):
        log.info("%s: resume state of another spec or code version; starting afresh", path)
        return None
    return saved


def resume_point(identity: dict[str, str], training) -> dict[str, Any]:
    """A mid-run resume point: the training state, status and rows."""
    return {
        **identity,
        **training.state_dict(),
        "finished": False,
        "status": training.status,
        "diverged_at": training.diverged_at,
        "reason": training.reason,
        "rows": [list(r) for r in training.rows],
    }


def finished_record(identity: dict[str, str], status: str, step: int, diverged_at: int | None,
                    reason: str | None, rows: list, train_seconds: float) -> dict[str, Any]:
    """What a finished run keeps to rewrite its outputs: no weights, no optimizer state."""
    return {
        **identity,
        "finished": True,
        "status": status,
        "step": step,
        "diverged_at": diverged_at,
        "reason": reason,
        "rows": [list(r) for r in rows],
        "train_seconds": train_seconds,
    }


def save(record: dict[str, Any], path: Path) -> None:
    save_atomic(record, path)
