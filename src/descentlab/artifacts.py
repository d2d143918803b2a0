"""Reading run artifacts into tables, and writing figure artifacts."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import pandas as pd

from .runs import Run


def collect_runs(runs: Sequence[Run]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Tidy metrics of the given runs, and the runs as a table (id, axis
    labels, seed, status): the two views a figure draws from."""
    frames, table = [], []
    for run in runs:
        metrics = run.metrics()
        metrics.insert(0, "run_id", run.run_id)
        frames.append(metrics)
        table.append({"run_id": run.run_id, **run.labels, "status": run.status})
    metrics = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["run_id", "step", "split", "metric", "value"])
    return metrics, pd.DataFrame(table, columns=None if table else ["run_id", "seed", "status"])


def write_table(table: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write a parquet table atomically (a killed job leaves no half file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    table.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def save_figure(fig, plotted: pd.DataFrame, summary: pd.DataFrame, pdf: str, png: str, csv: str, summary_csv: str,
                caption: str = "") -> None:
    """Write the figure as PDF and PNG, with the table it was drawn from and its
    summary; ``caption`` (the claims' verdicts) is set below the axes."""
    import matplotlib.pyplot as plt

    for path in (pdf, png, csv, summary_csv):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    extra = {}
    if caption:
        fig.text(0.01, 0.0, caption, ha="left", va="top", fontsize=8, family="monospace")
        extra = {"bbox_inches": "tight", "pad_inches": 0.15}  # grow the page to hold the caption
    fig.savefig(pdf, **extra)
    fig.savefig(png, dpi=150, **extra)
    plt.close(fig)
    plotted.to_csv(csv, index=False)
    summary.to_csv(summary_csv, index=False)
