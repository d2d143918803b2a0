"""The training loop: ``train_run`` (one run) and ``train_runs`` (several runs in
one process, to pay Python and torch start-up once)."""

from .loop import RunResult, train_run, train_runs

__all__ = ["RunResult", "train_run", "train_runs"]
