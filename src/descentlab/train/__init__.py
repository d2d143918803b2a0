"""The training loop: ``train_run`` (one run), ``train_runs`` (several runs in
one process, to pay Python and torch start-up once) and ``train_job`` (a
job's runs, the compatible ones as one batched computation; ``batched``)."""

from .loop import RunResult, train_run, train_runs
from .batched import train_job  # noqa: E402  (after loop: it builds on it)

__all__ = ["RunResult", "train_job", "train_run", "train_runs"]
