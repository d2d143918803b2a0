"""Reading run artifacts into tables, and writing figure artifacts."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import pandas as pd


def read_status(run_dir: str | os.PathLike) -> dict[str, Any]:
    with open(Path(run_dir) / "status.json") as fh:
        return json.load(fh)


def collect_runs(run_rows: Sequence[dict[str, Any]], runs_dir: str | os.PathLike) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Tidy metrics of the given runs and a runs table (labels + status).

    ``run_rows``: one dict per run with ``run_id``, its axis labels and ``seed``.
    """
    runs_dir = Path(runs_dir)
    frames, table = [], []
    for row in run_rows:
        rdir = runs_dir / row["run_id"]
        metrics = pd.read_parquet(rdir / "metrics.parquet")
        metrics.insert(0, "run_id", row["run_id"])
        frames.append(metrics)
        table.append({**row, "status": read_status(rdir)["status"]})
    metrics = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["run_id", "step", "split", "metric", "value"])
    return metrics, pd.DataFrame(table, columns=None if table else ["run_id", "seed", "status"])


def write_table(table: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write a parquet table atomically (a killed job leaves no half file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    table.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def save_figure(fig, plotted: pd.DataFrame, summary: pd.DataFrame, pdf: str, png: str, csv: str, summary_csv: str) -> None:
    """Write the figure as PDF and PNG, with the table it was drawn from and its summary."""
    import matplotlib.pyplot as plt

    for path in (pdf, png, csv, summary_csv):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(pdf)
    fig.savefig(png, dpi=150)
    plt.close(fig)
    plotted.to_csv(csv, index=False)
    summary.to_csv(summary_csv, index=False)
