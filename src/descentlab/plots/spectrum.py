"""Hessian spectra: density with bulk and outliers, outlier counts, bulk edge."""

from __future__ import annotations

import numpy as np

from . import FIGURES
from ._tables import one_table


@FIGURES.register("hessian_spectrum")
def hessian_spectrum(
    metrics,
    runs,
    tables,
    table: str | None = None,
    classes: str = "classes",
    width: str = "width",
    title: str | None = None,
):
    """Three panels (Sagun et al. 2017): the SLQ density of the widest runs, one
    line per number of classes (log scale, so the outliers show); the number of
    outlier eigenvalues vs the number of classes (dotted: C - 1 and C); the
    bulk edge (0.99 quantile of the spectrum) vs width."""
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    data = one_table(tables, table, "hessian_spectrum", required=("run_id", "kind", classes, width))
    data = data.copy()
    data[classes] = pd.to_numeric(data[classes])
    data[width] = pd.to_numeric(data[width])
    summary = data[data["kind"] == "summary"].dropna(axis=1, how="all")
    density = data[data["kind"] == "density"]
    fig, (ax_d, ax_o, ax_b) = plt.subplots(1, 3, figsize=(13.5, 3.8))
    widest = density[density[width] == density[width].max()]
    first_seed = widest[widest["seed"] == widest["seed"].min()]
    palette = dict(zip(sorted(first_seed[classes].unique()), sns.color_palette("viridis", first_seed[classes].nunique())))
    for c, part in first_seed.groupby(classes):
        ax_d.plot(part["eigenvalue"], np.maximum(part["value"], 1e-8), color=palette[c], label=f"C = {c:g}")
    ax_d.set(yscale="log", xlabel="eigenvalue", ylabel="density (SLQ)", title=f"width {widest[width].max():g}")
    ax_d.legend(fontsize=8)
    dodge = lambda hue: 0.3 if summary[hue].nunique() > 1 else False  # noqa: E731  (seaborn divides by levels - 1)
    sns.pointplot(data=summary, x=classes, y="outliers", hue=width, errorbar="sd", dodge=dodge(width), ax=ax_o, native_scale=True)
    cs = np.array(sorted(summary[classes].unique()))
    ax_o.plot(cs, cs - 1, ":", color="gray", label="C - 1")
    ax_o.plot(cs, cs, ":", color="black", label="C")
    ax_o.set(xlabel="number of classes C", ylabel="outlier eigenvalues")
    ax_o.legend(fontsize=7)
    sns.pointplot(data=summary, x=width, y="bulk_edge", hue=classes, errorbar="sd", dodge=dodge(classes), ax=ax_b, native_scale=True)
    ax_b.set(xscale="log", xlabel="width", ylabel="bulk edge (0.99 quantile)")
    for ax in (ax_d, ax_o, ax_b):
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig, data, summary
