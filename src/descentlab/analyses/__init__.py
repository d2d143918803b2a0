"""Analyses: the ``ANALYSES`` registry (analysis kind -> function).

An analysis turns a study's runs (or nothing, for a standalone experiment such
as an online-learning counterexample) into one tidy table that figures read.
It is called as ``fn(runs, device=..., **options)`` (plus ``threads=`` when its
signature takes it) where ``runs`` is a list of ``descentlab.runs.Run`` (id, axis labels,
directory, spec, prepared-data path) and returns a ``pandas.DataFrame``. Analyses read checkpoints; figures read only the tables.
"""

from __future__ import annotations

import importlib
import pkgutil

from ..registry import Registry

ANALYSES = Registry("analysis kind")


for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")
