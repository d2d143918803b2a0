"""Figures: the ``FIGURES`` registry (figure kind -> function).

A figure function is called as ``fn(metrics, runs, **options)`` where
``metrics`` is the tidy table of every run of the study (run_id, step, split,
metric, value) and ``runs`` has one row per run (run_id, its axis labels,
seed, status). It returns ``(figure, plotted, summary)``: the matplotlib
figure, the exact table it was drawn from, and a table of summary values.
Figures read only tables, never checkpoints, so they redraw in seconds.
"""

from __future__ import annotations

import os

os.environ.setdefault("MPLBACKEND", "Agg")

from ..registry import Registry  # noqa: E402

FIGURES = Registry("figure kind")

from . import curves  # noqa: E402,F401  (registers its kinds)
