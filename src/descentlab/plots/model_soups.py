"""Model soups (Wortsman et al. 2022, Fig. 1): accuracy in distribution vs
under a distribution shift, fine-tuned models as points and each merge as its
own marker and colour."""

from __future__ import annotations

import pandas as pd

from . import FIGURES
from .style import color_for

MARKERS = ("*", "D", "s", "^", "v", "P", "X", "p", "h", "<", ">")
BEST_SINGLE = "best-single"


def final_accuracies(metrics: pd.DataFrame, runs: pd.DataFrame, splits: list[str]) -> pd.DataFrame:
    """One row per run or merged model: its labels, status and final accuracy on each of ``splits``."""
    acc = metrics[(metrics["metric"] == "accuracy") & metrics["split"].isin(splits)]
    last = acc.sort_values("step").groupby(["run_id", "split"], as_index=False).last()
    wide = last.pivot(index="run_id", columns="split", values="value").reindex(columns=splits)
    wide.columns = [f"{s}_accuracy" for s in splits]
    return runs.merge(wide, left_on="run_id", right_index=True, how="left")


def soup_summary(table: pd.DataFrame, individual: str, x_split: str, y_split: str, select_split: str) -> pd.DataFrame:
    """Per seed: the best single fine-tuned model (highest ``select_split`` accuracy among those
    that did not diverge; the first of equals) and every merge, with their accuracies."""
    xs, ys, sel = f"{x_split}_accuracy", f"{y_split}_accuracy", f"{select_split}_accuracy"
    merged = table["merge"].notna() if "merge" in table.columns else pd.Series(False, index=table.index)
    singles, merges = table[~merged], table[merged]
    rows = []
    for seed, group in singles.groupby("seed", sort=True):
        valid = group[(group["status"] == "ok") & group[sel].notna()]
        best_val = float("nan")
        if len(valid):
            best = valid.loc[valid[sel].idxmax()]
            best_val = float(best[sel])
            rows.append({"model": BEST_SINGLE, "seed": seed, "member": best[individual], "status": "ok",
                         "val_accuracy": best[sel], "test_accuracy": best[xs], "shifted_accuracy": best[ys]})
        for _, m in merges[merges["seed"] == seed].iterrows():
            rows.append({"model": m["merge"], "seed": seed, "member": m["rule"], "status": m["status"],
                         "val_accuracy": m[sel], "test_accuracy": m[xs], "shifted_accuracy": m[ys]})
        for row in rows:
            if row["seed"] == seed:
                row["best_single_val_accuracy"] = best_val
                row["n_singles"] = len(group)
                row["n_singles_diverged"] = int((group["status"] != "ok").sum())
    columns = ["model", "seed", "member", "status", "val_accuracy", "test_accuracy", "shifted_accuracy",
               "best_single_val_accuracy", "n_singles", "n_singles_diverged"]
    return pd.DataFrame(rows, columns=columns)


@FIGURES.register("soup_scatter")
def soup_scatter(metrics, runs, tables, individual: str = "ft", x_split: str = "test", y_split: str = "test_shifted",
                 select_split: str = "val", title: str | None = None):
    """Scatter of accuracy on ``x_split`` (in distribution) vs ``y_split`` (shifted): every
    fine-tuned model (grey; diverged ones as red x at the axes' lower left), the best single
    model per seed (chosen on ``select_split``; black open circle) and every merge per seed
    (its colour and marker). Summary: ``soup_summary``."""
    import matplotlib.pyplot as plt

    splits = list(dict.fromkeys([select_split, x_split, y_split]))
    table = final_accuracies(metrics, runs, splits)
    if individual not in table.columns:
        raise ValueError(f"soup_scatter: the runs have no label {individual!r}; labels: {list(runs.columns)}")
    summary = soup_summary(table, individual, x_split, y_split, select_split)
    xs, ys = f"{x_split}_accuracy", f"{y_split}_accuracy"
    merged = table["merge"].notna() if "merge" in table.columns else pd.Series(False, index=table.index)
    singles = table[~merged]
    fig, ax = plt.subplots(figsize=(7.4, 5.2))
    ok = singles[singles["status"] == "ok"]
    ax.scatter(ok[xs], ok[ys], s=18, color="0.6", label=f"fine-tuned models ({len(ok)})", zorder=2)
    bad = singles[singles["status"] != "ok"]
    best = summary[summary["model"] == BEST_SINGLE]
    ax.scatter(best["test_accuracy"], best["shifted_accuracy"], s=130, facecolors="none", edgecolors="black",
               linewidths=1.2, label="best single (on val), per seed", zorder=5)  # on top: a merge equal to it shows inside
    names = [m for m in summary["model"].unique() if m != BEST_SINGLE]
    for i, name in enumerate(names):
        rows = summary[(summary["model"] == name) & (summary["status"] == "ok")]
        marker = MARKERS[i % len(MARKERS)]
        ax.scatter(rows["test_accuracy"], rows["shifted_accuracy"], s=150 if marker == "*" else 55, marker=marker,
                   color=color_for(name), edgecolors="black", linewidths=0.4, label=name, zorder=4)
        failed = summary[(summary["model"] == name) & (summary["status"] != "ok")]
        if len(failed):
            ax.annotate(f"{name}: {len(failed)} diverged", xy=(0.02, 0.02 + 0.04 * i), xycoords="axes fraction",
                        fontsize=7, color="red")
    if len(bad):
        ax.annotate(f"{len(bad)} fine-tuned model(s) diverged (not drawn)", xy=(0.02, 0.95), xycoords="axes fraction",
                    fontsize=8, color="red")
    ax.set_xlabel(f"accuracy, in-distribution {x_split} set")
    ax.set_ylabel(f"accuracy, {y_split.replace('_', ' ')} set")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    n = summary["seed"].nunique()
    fig.suptitle(f"{title + chr(10) if title else ''}(each merge: one point per experiment seed, n = {n} seeds)", fontsize=9)
    fig.tight_layout()
    return fig, table, summary
