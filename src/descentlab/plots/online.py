"""Online-learning counterexamples: iterate and average regret vs step."""

from __future__ import annotations


from . import FIGURES
from ._tables import one_table


@FIGURES.register("online_regret")
def online_regret(metrics, runs, tables, table: str | None = None, title: str | None = None, tail: float = 0.1):
    """Average regret R_t / t (log-log) and the iterate x_t vs step, one line per method.

    With a ``regret_floor`` column (the average regret of sitting at the worst
    point), it is drawn as a dashed line. The summary has one row per method:
    its last record, the iterate's range over the last ``tail`` of the steps
    (``x_min_tail``, ``x_max_tail``) and the average regret a hundredth of the
    way in (``average_regret_at_1pct``, the last record at or before T / 100)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    from .style import colors_for

    data = one_table(tables, table, "online_regret", required=("method", "step", "x", "average_regret"))
    if not 0 < tail <= 1:
        raise ValueError(f"online_regret: tail must be in (0, 1], got {tail!r}")
    palette = colors_for(dict.fromkeys(data["method"]))
    fig, (ax_r, ax_x) = plt.subplots(1, 2, figsize=(9, 3.6))
    sns.lineplot(data=data, x="step", y="average_regret", hue="method", ax=ax_r, palette=palette)
    ax_r.set(xscale="log", yscale="log", ylabel="average regret $R_t/t$", title="average regret")
    if "regret_floor" in data.columns:
        floor = float(data["regret_floor"].iloc[0])
        ax_r.axhline(floor, color="gray", ls="--", lw=1, label=f"iterate at the worst point ({floor:.3f})")
        ax_r.legend(fontsize=7)
    sns.lineplot(data=data, x="step", y="x", hue="method", ax=ax_x, legend=False, palette=palette)
    ax_x.set(xscale="log", ylabel="iterate $x_t$", ylim=(-1.05, 1.05), title="iterate (optimum $x^* = -1$, dotted)")
    ax_x.axhline(-1.0, color="gray", ls=":", lw=1)
    for ax in (ax_r, ax_x):
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    data = data.sort_values("step")
    summary = data.groupby("method", as_index=False).last()
    extra = []
    for method, part in data.groupby("method"):
        end = part["step"].max()
        late = part[part["step"] >= (1 - tail) * end]
        early = part[part["step"] <= end / 100]
        extra.append({"method": method, "x_min_tail": late["x"].min(), "x_max_tail": late["x"].max(),
                      "average_regret_at_1pct": early["average_regret"].iloc[-1] if len(early) else float("nan")})
    import pandas as pd

    summary = summary.merge(pd.DataFrame(extra), on="method")
    return fig, data, summary
