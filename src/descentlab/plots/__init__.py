"""Figures: the ``FIGURES`` registry (figure kind -> function).

A figure function is called as ``fn(metrics, runs, tables, **options)`` where
``metrics`` is the tidy table of every run of the study (run_id, step, split,
metric, value), ``runs`` has one row per run (run_id, its axis labels, seed,
status) and ``tables`` maps the names of the analyses the figure reads to
their tables. It returns ``(figure, plotted, summary)``: the matplotlib
figure, the exact table it was drawn from, and a table of summary values.
Figures read only tables, never checkpoints, so they redraw in seconds.
"""

from __future__ import annotations

import os

os.environ.setdefault("MPLBACKEND", "Agg")

from ..registry import Registry  # noqa: E402

FIGURES = Registry("figure kind")

import importlib  # noqa: E402
import pkgutil  # noqa: E402

for _module in pkgutil.iter_modules(__path__):  # each module registers its kinds
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")
