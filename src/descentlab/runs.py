"""The run record: one shape for one run, from the plan to training, analyses
and figures.

A ``Run`` is what the planner makes of one entry of a study (its canonical
spec, the id the spec hashes to, the axis labels it was made from) plus where
its artifacts live. It travels to Snakemake jobs as a plain dict
(``to_dict`` / ``from_dict``) and is read back there as the same record.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# What a run is to its study: a point of the sweep, a parent that other runs
# start from, or a rerun emitted by a selection (the best setting of a sweep,
# trained again with more seeds), or a merged model (descentlab.merges; not trained, read alike).
ROLES = ("sweep", "parent", "selected", "rerun", "merge")


@dataclass
class Run:
    run_id: str
    spec: dict[str, Any]
    labels: dict[str, Any] = field(default_factory=dict)  # axis -> label, plus "seed"
    study: str = ""
    role: str = "sweep"
    dir: Path | None = None  # <results>/runs/<run_id>
    data: Path | None = None  # the prepared dataset file
    _status: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"run {self.run_id}: role must be one of {ROLES}, got {self.role!r}")
        self.dir = None if self.dir is None else Path(self.dir)
        self.data = None if self.data is None else Path(self.data)

    # -- travelling to jobs ---------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "spec": self.spec,
            "labels": dict(self.labels),
            "study": self.study,
            "role": self.role,
            "dir": None if self.dir is None else str(self.dir),
            "data": None if self.data is None else str(self.data),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Run":
        return cls(d["run_id"], dict(d["spec"]), dict(d.get("labels", {})), d.get("study", ""), d.get("role", "sweep"), d.get("dir"), d.get("data"))

    def at(self, results: str | Path, data_file: str | Path) -> "Run":
        """This record with its artifact paths under ``results``."""
        return Run(self.run_id, self.spec, self.labels, self.study, self.role, Path(results) / "runs" / self.run_id, data_file)

    # -- reading a finished run -----------------------------------------------------------

    def _require_dir(self) -> Path:
        if self.dir is None:
            raise ValueError(f"run {self.run_id} has no directory (the planner sets it)")
        return self.dir

    @property
    def status_record(self) -> dict[str, Any]:
        """``status.json`` of the finished run (read once)."""
        if self._status is None:
            path = self._require_dir() / "status.json"
            try:
                self._status = json.loads(path.read_text())
            except (OSError, ValueError) as err:
                raise RuntimeError(f"{path}: cannot read the run's status ({err}); rerun its training job") from None
        return self._status

    @property
    def status(self) -> str:
        """``ok`` or ``diverged``."""
        return self.status_record["status"]

    def metrics(self):
        """The run's tidy metrics (step, split, metric, value)."""
        import pandas as pd

        path = self._require_dir() / "metrics.parquet"
        try:
            return pd.read_parquet(path)
        except Exception as err:  # a torn file: name it
            raise RuntimeError(f"{path}: cannot read the run's metrics ({err}); rerun its training job") from None

    def load(self, weights: str = "final.pt", device: str = "cpu"):
        """(model with the run's weights, in eval mode, on ``device``; its SplitData).

        A missing or unreadable weights file raises ``checkpoints.CorruptArtifact``,
        a diverged run's marker ``checkpoints.DivergedCheckpoint``."""
        from .checkpoints import load_weights
        from .data import SplitData
        from .train.loop import build_run_model

        if self.data is None:
            raise ValueError(f"run {self.run_id} has no data file (the planner sets it)")
        data = SplitData.load(self.data)
        model = build_run_model(self.spec, data)
        model.load_state_dict(load_weights(self._require_dir() / weights, map_location="cpu"))
        return model.to(device).eval(), data
