"""Analyses: the ``ANALYSES`` registry (analysis kind -> function).

An analysis turns a study's runs (or nothing, for a standalone experiment such
as an online-learning counterexample) into one tidy table that figures read.
It is called as ``fn(runs, device=..., **options)`` (plus ``threads=`` when its
signature takes it) where ``runs`` is a list of ``RunRef`` (id, axis labels,
directory, spec, prepared-data path) and returns a ``pandas.DataFrame``. Analyses read checkpoints; figures read only the tables.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..registry import Registry

ANALYSES = Registry("analysis kind")


@dataclass
class RunRef:
    run_id: str
    labels: dict[str, Any]
    dir: Path
    spec: dict[str, Any]
    data: Path
    status: str = field(default="ok")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunRef":
        import json

        status = json.loads((Path(d["dir"]) / "status.json").read_text())["status"]
        return cls(d["run_id"], dict(d["labels"]), Path(d["dir"]), d["spec"], Path(d["data"]), status)

    def load(self, weights: str = "final.pt", device: str = "cpu"):
        """(model with the run's weights, in eval mode, on ``device``; its SplitData).

        A missing or unreadable weights file raises ``checkpoints.CorruptArtifact``,
        a diverged run's marker ``checkpoints.DivergedCheckpoint``."""
        from ..checkpoints import load_weights
        from ..data import SplitData
        from ..train.loop import build_run_model

        data = SplitData.load(self.data)
        model = build_run_model(self.spec, data)
        model.load_state_dict(load_weights(self.dir / weights, map_location="cpu"))
        return model.to(device).eval(), data


for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")
