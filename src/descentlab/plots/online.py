"""Online-learning counterexamples: iterate and average regret vs step."""

from __future__ import annotations


from . import FIGURES
from ._tables import one_table


@FIGURES.register("online_regret")
def online_regret(metrics, runs, tables, table: str | None = None, title: str | None = None):
    """Average regret R_t / t (log-log) and the iterate x_t vs step, one line per method."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    data = one_table(tables, table, "online_regret", required=("method", "step", "x", "average_regret"))
    fig, (ax_r, ax_x) = plt.subplots(1, 2, figsize=(9, 3.4))
    sns.lineplot(data=data, x="step", y="average_regret", hue="method", ax=ax_r)
    ax_r.set(xscale="log", yscale="log", ylabel="average regret $R_t/t$")
    sns.lineplot(data=data, x="step", y="x", hue="method", ax=ax_x, legend=False)
    ax_x.set(xscale="log", ylabel="iterate $x_t$", ylim=(-1.05, 1.05))
    ax_x.axhline(-1.0, color="gray", ls=":", lw=1)
    for ax in (ax_r, ax_x):
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    summary = data.sort_values("step").groupby("method", as_index=False).last()
    return fig, data, summary
