"""Helpers shared by figure functions."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:  # pandas is imported where it is used, so the registry imports fast
    import pandas as pd


def one_table(tables: dict[str, pd.DataFrame], name: str | None, figure: str, required: Sequence[str] = ()) -> pd.DataFrame:
    """The analysis table a figure draws: ``name``, or the only one it reads."""
    if not tables:
        raise ValueError(f"{figure}: the figure reads no analysis; list one under the figure's `analyses`")
    if name is None:
        if len(tables) != 1:
            raise ValueError(f"{figure}: reads several analyses {sorted(tables)}; say which with options.table")
        name = next(iter(tables))
    if name not in tables:
        raise ValueError(f"{figure}: no analysis table {name!r}; it reads {sorted(tables)}")
    data = tables[name]
    missing = [c for c in required if c not in data.columns]
    if missing:
        raise ValueError(f"{figure}: table {name!r} lacks columns {missing}; it has {list(data.columns)}")
    return data


def label_columns(runs: pd.DataFrame) -> list[str]:
    """The study's axis names: the runs table's columns other than id, seed, status."""
    return [c for c in runs.columns if c not in ("run_id", "seed", "status")]
