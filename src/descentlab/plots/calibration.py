"""Accuracy, expected calibration error and reliability diagrams of classifiers
trained with different losses (analysis ``calibration``)."""

from __future__ import annotations

import numpy as np

from . import FIGURES
from ._tables import one_table
from .style import color_for


def _color(label) -> str:
    # study labels ("cross-entropy", "label smoothing") share the loss registry names' colours
    return color_for(str(label).replace("-", "_").replace(" ", "_"))


def _with_reference(runs, x: str, hue: str, reference: str | None):
    """Per run, accuracy and ECE minus the ``reference`` setting's on the same
    ``x`` and seed (the paired differences the claims read)."""
    runs = runs.copy()
    if reference is None:
        return runs
    ref = runs[runs[hue].astype(str) == str(reference)]
    if ref.empty:
        raise ValueError(f"calibration: no run has {hue} = {reference!r}; {hue} values: {sorted(runs[hue].astype(str).unique())}")
    ref = ref.set_index([x, "seed"])
    for column in ("accuracy", "ece"):
        runs[f"{column}_minus_reference"] = [
            row[column] - ref[column].get((row[x], row["seed"]), np.nan) for _, row in runs.iterrows()
        ]
    return runs


@FIGURES.register("calibration")
def calibration(
    metrics,
    runs,
    tables,
    table: str | None = None,
    x: str = "dataset",
    hue: str = "loss",
    reference: str | None = None,
    chance_factor: float = 1.5,
    best_of: str | None = None,
    title: str | None = None,
):
    """Top: test accuracy and ECE per ``x`` (one marker per seed, a bar at the
    mean); the ECE of a square loss's own probabilities (outputs clipped and
    renormalised) filled, the max-softmax ECE of those outputs open. Bottom:
    one reliability diagram per ``x``, bins pooled over seeds, one line per
    ``hue``. Runs that diverged are counted in the panel, runs at chance
    (accuracy below ``chance_factor`` / C) drawn as crosses. The summary has one
    row per run, with accuracy and ECE minus the ``reference`` setting's (same
    ``x``, same seed).

    ``best_of`` (an axis, e.g. ``lr_factor``): the runs are reruns of each
    cell's best value of that axis (analysis ``calibration`` with a selection
    and ``edge_axis``); the value is written over each accuracy bar, and a value
    on the edge of its grid (``on_edge``) is drawn with open accuracy markers
    and kept in the summary."""
    import matplotlib.pyplot as plt
    import pandas as pd

    required = ("run_id", "kind", "seed", "status", x, hue) + ((best_of, "on_edge") if best_of else ())
    data = one_table(tables, table, "calibration", required=required)
    per_run = data[data["kind"] == "run"].dropna(axis=1, how="all").copy()
    bins = data[data["kind"] == "bin"]
    ok = per_run[per_run["status"] == "ok"].copy()
    if ok.empty:
        raise ValueError("calibration: no run finished (status ok); nothing to draw")
    ok["at_chance"] = ok["accuracy"] < chance_factor / ok["num_classes"]
    xs = list(dict.fromkeys(per_run[x]))
    hues = list(dict.fromkeys(per_run[hue]))
    fig, axes = plt.subplots(2, max(2, len(xs)), figsize=(4.6 * max(2, len(xs)), 7.6), squeeze=False)
    width = 0.8 / len(hues)
    for ax, column, label in ((axes[0][0], "accuracy", "test accuracy"), (axes[0][1], "ece", "expected calibration error (15 bins)")):
        for i, x_value in enumerate(xs):
            for j, h in enumerate(hues):
                pos = i - 0.4 + width * (j + 0.5)
                part = ok[(ok[x] == x_value) & (ok[hue] == h)]
                color = _color(h)
                if len(part):
                    good, chance = part[~part["at_chance"]], part[part["at_chance"]]
                    edge = good["on_edge"].astype(bool) if best_of and column == "accuracy" else np.zeros(len(good), bool)
                    ax.scatter(np.full(int((~edge).sum()), pos), good[column][~edge], s=18, color=color, zorder=3,
                               label=str(h) if i == 0 else None)
                    ax.scatter(np.full(int(edge.sum()), pos), good[column][edge], s=18, facecolor="none",
                               edgecolor=color, zorder=3)
                    if best_of and column == "accuracy":
                        tuned = ", ".join(sorted(map(str, part[best_of].unique())))
                        on_edge = bool(part["on_edge"].astype(bool).any())
                        ax.annotate(f"{tuned}{' (edge)' if on_edge else ''}", (pos, 0.98), xycoords=("data", "axes fraction"),
                                    rotation=90, fontsize=7, ha="center", va="top", color="red" if on_edge else "black")
                    ax.scatter(np.full(len(chance), pos), chance[column], s=30, color=color, marker="x", zorder=3)
                    ax.hlines(part[column].mean(), pos - width * 0.4, pos + width * 0.4, color=color, lw=2)
                    if column == "ece" and (part["probabilities"] == "outputs").any():
                        ax.scatter(np.full(len(part), pos), part["ece_softmax"], s=22, facecolor="none",
                                   edgecolor=color, zorder=3, label="max softmax of MSE outputs" if i == 0 else None)
                failed = per_run[(per_run[x] == x_value) & (per_run[hue] == h) & (per_run["status"] != "ok")]
                if len(failed):
                    ax.annotate(f"{len(failed)} diverged", (pos, 0.02), xycoords=("data", "axes fraction"),
                                rotation=90, fontsize=7, color="red", ha="center")
        ax.set_xticks(range(len(xs)), [str(v) for v in xs])
        ax.set(ylabel=label, xlim=(-0.6, len(xs) - 0.4))
        if best_of and column == "accuracy":  # headroom for the tuned values written at the top
            low, high = ax.get_ylim()
            ax.set_ylim(low, high + 0.3 * (high - low))
        ax.grid(alpha=0.3, axis="y")
    # one legend for both panels, under them, so no marker hides behind it
    handles, labels = axes[0][1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(labels), fontsize=8, bbox_to_anchor=(0.5, 0.955), frameon=False)
    for ax in axes[0][2:]:
        ax.axis("off")
    for ax, x_value in zip(axes[1], xs):
        ax.plot([0, 1], [0, 1], ":", color="gray", lw=1)
        for h in hues:
            part = bins[(bins[x] == x_value) & (bins[hue] == h)]
            if part.empty:
                continue
            pooled = part.groupby("bin").apply(
                lambda b: pd.Series({"confidence": np.average(b["bin_confidence"], weights=b["count"]),
                                     "accuracy": np.average(b["bin_accuracy"], weights=b["count"]),
                                     "count": b["count"].sum()}), include_groups=False)
            seeds = part["seed"].nunique()
            ax.plot(pooled["confidence"], pooled["accuracy"], "-o", ms=3, color=_color(h), label=f"{h} (n = {seeds})")
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (bin mean)", ylabel="accuracy in bin (pooled over seeds)",
               title=f"{x_value}: reliability diagram")
        ax.legend(fontsize=7, loc="upper left")
        ax.grid(alpha=0.3)
    for ax in axes[1][len(xs):]:
        ax.axis("off")
    n_seeds = ok["seed"].nunique()
    fig.suptitle(title or "Test accuracy and calibration per loss")
    tuned_note = f"\nabove: tuned {best_of} (open: on its grid's edge)" if best_of else ""
    axes[0][0].set_title(f"{n_seeds} seeds: markers, bar: mean; x: run at chance{tuned_note}", fontsize=9)
    axes[0][1].set_title("filled: the loss's own probabilities", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    summary = _with_reference(ok, x, hue, reference)
    summary = pd.concat([summary, per_run[per_run["status"] != "ok"]], ignore_index=True)
    keep = [c for c in ("run_id", x, hue, "seed", "status", best_of, "on_edge", "edge", "grid_low", "grid_high",
                        "probabilities", "num_classes", "accuracy", "ece",
                        "confidence", "ece_softmax", "confidence_softmax", "at_chance",
                        "accuracy_minus_reference", "ece_minus_reference") if c in summary.columns]
    return fig, data, summary[keep]
