"""What the workflow's scripts share: logging to the job's log file, threads,
device choice. Kept here so the scripts stay a few lines each."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def job_log(log_path: str | None) -> Iterator[logging.Logger]:
    """Send stdout, stderr and the ``descentlab`` logger to the job's log file;
    an exception is logged with its traceback before it propagates."""
    logger = logging.getLogger("descentlab")
    if not log_path:
        yield logger
        return
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w", buffering=1) as fh:
        handler = logging.StreamHandler(fh)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        try:
            with contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
                yield logger
        except BaseException:
            logger.exception("job failed")
            raise
        finally:
            logger.removeHandler(handler)


def resolve_device(device: str) -> str:
    """``auto`` means cuda when available, else cpu; anything else is checked."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but CUDA is not available on {_host()}")
    return device


def _host() -> str:
    import socket

    return socket.gethostname()


def write_manifest(path: str, job: str, results) -> None:
    """A training job's manifest (written last): its runs and their status."""
    import json
    import os

    record = {"job": job, "runs": [{"run_id": r.run_id, "status": r.status, "steps_completed": r.steps_completed} for r in results]}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(path).with_name(Path(path).name + ".tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(tmp, path)
