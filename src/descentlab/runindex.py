"""The run index: one row per run, its id and the fields that tell runs apart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import pandas as pd


def _flatten(prefix: str, value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, inner in value.items():
            out.update(_flatten(f"{prefix}.{key}" if prefix else key, inner))
        return out
    if isinstance(value, list):
        return {prefix: json.dumps(value)}
    return {prefix: value}


def index_table(runs: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """Flatten nested fields (``optimizer.lr``) into columns, one row per run,
    sorted by ``run_id``; no runs (studies without training) give an empty
    table that still has the ``run_id`` column."""
    rows = [_flatten("", r) for r in runs]
    missing = [i for i, row in enumerate(rows) if "run_id" not in row]
    if missing:
        raise ValueError(f"run index: entries {missing} have no run_id")
    if not rows:
        return pd.DataFrame(columns=["run_id"])
    return pd.DataFrame(rows).sort_values("run_id").reset_index(drop=True)


def write_index(runs: Sequence[dict[str, Any]], path: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    index_table(runs).to_csv(path, index=False)
