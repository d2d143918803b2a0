"""Intrinsic dimension: accuracy vs subspace dimension d, with d_int90 marked."""

from __future__ import annotations


from . import FIGURES
from .grids import final_values


@FIGURES.register("intrinsic_dimension")
def intrinsic_dimension_plot(
    metrics,
    runs,
    tables=None,
    dim: str = "dim",
    hue: str = "width",
    full_label: str = "full",
    split: str = "test",
    metric: str = "accuracy",
    fraction: float = 0.9,
    title: str | None = None,
):
    """Final ``metric`` vs d (log scale) per ``hue``; the full model's value
    (the ``dim`` label ``full_label``) dashed, ``fraction`` of it dotted, and
    d_int90 (Li et al. 2018) = the smallest d reaching it, marked."""
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    from ..landscape.subspace import intrinsic_dimension

    table = final_values(metrics, runs, split, metric)
    full = table[table[dim].astype(str) == full_label]
    sub = table[table[dim].astype(str) != full_label].copy()
    if full.empty:
        raise ValueError(f"intrinsic_dimension: no run with {dim} = {full_label!r} (the full-model baseline)")
    sub[dim] = pd.to_numeric(sub[dim])
    means = sub.groupby([hue, dim], as_index=False)["value"].mean()
    fig, ax = plt.subplots(figsize=(6, 4))
    groups = sorted(means[hue].unique(), key=str)
    palette = dict(zip(groups, sns.color_palette("deep", len(groups))))
    rows = []
    for g in groups:
        part = means[means[hue] == g].sort_values(dim)
        baseline = float(full[full[hue] == g]["value"].mean())
        d90 = intrinsic_dimension(part[dim].tolist(), part["value"].tolist(), baseline, fraction)
        ax.plot(part[dim], part["value"], "o-", color=palette[g], label=f"{hue} {g}: d_int{int(fraction * 100)} = {d90}")
        ax.axhline(baseline, color=palette[g], ls="--", lw=1)
        ax.axhline(fraction * baseline, color=palette[g], ls=":", lw=1)
        if d90 is not None:
            ax.axvline(d90, color=palette[g], ls="-.", lw=0.8)
        rows.append({hue: g, "baseline": baseline, "threshold": fraction * baseline, "d_int": d90})
    ax.set(xscale="log", xlabel="subspace dimension d", ylabel=f"{split} {metric}")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig, table, pd.DataFrame(rows)
