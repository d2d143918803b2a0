"""Hessian spectra: density with bulk and outliers, outlier counts, bulk edge."""

from __future__ import annotations

import numpy as np

from . import FIGURES
from ._tables import one_table
from .style import plain_log_ticks


def _numeric(column):
    import pandas as pd

    values = pd.to_numeric(column)
    return values.astype(int) if (values.dropna() == values.dropna().round()).all() and values.notna().all() else values


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
    """Top row, one panel per number of classes C: the SLQ density of the
    training-loss Hessian (log scale, so the outliers show), one line per width
    (first seed), with that run's Lanczos eigenvalues marked above it (filled
    triangles: outliers, ticks: bulk) and its bulk edge dashed. Bottom: the
    number of outliers vs C (dotted: C - 1 and C), and the bulk edge (largest
    non-outlier eigenvalue) vs width on a log axis, one marker per seed and a
    line through the means. The summary has one row per run."""
    import matplotlib.pyplot as plt
    import pandas as pd
    from matplotlib.colors import to_hex

    data = one_table(tables, table, "hessian_spectrum", required=("run_id", "kind", "seed", "status", classes, width))
    data = data.copy()
    data[classes] = _numeric(data[classes])
    data[width] = _numeric(data[width])
    summary = data[data["kind"] == "summary"].dropna(axis=1, how="all").copy()
    ok = summary[summary["status"] == "ok"].copy()
    if ok.empty:
        raise ValueError("hessian_spectrum: no run finished (status ok); nothing to draw")
    density = data[data["kind"] == "density"]
    eigen = data[data["kind"] == "eigenvalue"]
    cs = sorted(ok[classes].unique())
    widths = sorted(ok[width].unique())
    # widths and class counts are not methods: ordered colours, not style.color_for's
    width_color = dict(zip(widths, map(to_hex, plt.get_cmap("plasma")(np.linspace(0.15, 0.75, len(widths))))))
    class_color = dict(zip(cs, map(to_hex, plt.get_cmap("viridis")(np.linspace(0.1, 0.85, len(cs))))))
    n_cols = max(len(cs), 2)
    fig, axes = plt.subplots(2, n_cols, figsize=(4.4 * n_cols, 7.4), squeeze=False)
    first_seed = ok["seed"].min()
    for ax, c in zip(axes[0], cs):
        for w in widths:
            pick = ok[(ok[classes] == c) & (ok[width] == w) & (ok["seed"] == first_seed)]
            if pick.empty:
                continue
            rid, row = pick["run_id"].iloc[0], pick.iloc[0]
            curve = density[density["run_id"] == rid]
            ax.plot(curve["eigenvalue"], np.maximum(curve["value"], 1e-8), color=width_color[w], lw=1.2,
                    label=f"width {w}: {int(row['outliers'])} outliers")
            lam = np.sort(eigen[eigen["run_id"] == rid]["value"].to_numpy())[::-1]
            n_out = int(row["outliers"])
            y_mark = 3e2 if w == widths[-1] else 1e2
            ax.scatter(lam[:n_out], np.full(n_out, y_mark), marker="v", s=22, color=width_color[w], zorder=3)
            ax.scatter(lam[n_out:], np.full(len(lam) - n_out, y_mark), marker="|", s=40, color=width_color[w], zorder=3)
            ax.axvline(row["bulk_edge"], ls="--", lw=0.8, color=width_color[w])
        ax.set(yscale="log", ylim=(1e-6, 1e3), xlabel="eigenvalue", ylabel=f"density (SLQ, seed {first_seed})",
               title=f"C = {c}: Hessian density, top eigenvalues")
        ax.legend(fontsize=7, loc="center right")
        ax.grid(alpha=0.3)
    for ax in axes[0][len(cs):]:
        ax.axis("off")
    ax_o, ax_b = axes[1][0], axes[1][1]
    markers = dict(zip(widths, "osD^v"))
    for i, w in enumerate(widths):
        part = ok[ok[width] == w]
        # linear C axis: a small sideways shift keeps widths, and seeds within a width, apart
        shift = (i - (len(widths) - 1) / 2) * 0.3 + (part["seed"].rank(method="dense") - 1) * 0.08
        ax_o.scatter(part[classes] + shift, part["outliers"], marker=markers[w], s=22, color=width_color[w],
                     label=f"width {w}", zorder=3)
    ax_o.plot(cs, np.array(cs) - 1, ":", color="gray", label="C - 1")
    ax_o.plot(cs, cs, ":", color="black", label="C")
    ax_o.set(xlabel="number of classes C", ylabel="outlier eigenvalues (above the largest gap)", xticks=cs,
             title="Outliers: one marker per seed")
    ax_o.legend(fontsize=7)
    for c in cs:
        part = ok[ok[classes] == c]
        ax_b.scatter(part[width], part["bulk_edge"], s=18, color=class_color[c], zorder=3)
        means = part.groupby(width)["bulk_edge"].mean()
        ax_b.plot(means.index, means.to_numpy(), "-", color=class_color[c], label=f"C = {c} (mean)")
    ax_b.set(xscale="log", xlabel="width", ylabel="bulk edge (largest non-outlier eigenvalue)",
             title="Bulk edge vs width: one marker per seed")
    ax_b.set_xticks(widths)
    plain_log_ticks(ax_b, "x")
    ax_b.set_xticks(widths)
    ax_b.legend(fontsize=7)
    for ax in (ax_o, ax_b):
        ax.grid(alpha=0.3)
    failed = summary[summary["status"] != "ok"]
    if len(failed):
        ax_o.annotate(f"{len(failed)} runs not ok (diverged/failed), not drawn", (0.02, 0.95), xycoords="axes fraction",
                      color="red", fontsize=8, va="top")
    for ax in axes[1][2:]:
        ax.axis("off")
    n_seeds = ok["seed"].nunique()
    fig.suptitle(title or f"Hessian of the training loss: a bulk near zero and outliers ({n_seeds} seeds)")
    fig.tight_layout()
    summary["outliers_minus_c1"] = summary["outliers"] - (summary[classes] - 1)
    # the outliers are the data's (Sagun et al.): one count per (C, seed) across widths
    counts = summary.groupby([classes, "seed"])["outliers"].transform("nunique")
    summary["outliers_same_across_widths"] = counts == 1
    keep = [col for col in ("run_id", classes, width, "seed", "status", "outliers", "outliers_minus_c1", "outliers_same_across_widths", "bulk_edge",
                            "gap_ratio", "top_eigenvalue", "trace", "density_q99", "train_loss", "num_params")
            if col in summary.columns]
    return fig, data, pd.DataFrame(summary[keep]).reset_index(drop=True)
