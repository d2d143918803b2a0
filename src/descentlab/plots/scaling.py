"""Scaling-law figures: Chinchilla's panels (analyses ``isoflop`` and
``chinchilla_fit``) and loss-to-loss (analysis ``loss_to_loss``).

Model sizes and compute budgets are ordinal, so they are coloured along one
sequential colour map (small: dark, large: light) rather than by name.
"""

from __future__ import annotations

import numpy as np

from . import FIGURES
from ._tables import one_table
from .style import edge_marker, plain_log_ticks

# Besiroglu et al. (2024)'s refit of Hoffmann et al.'s Fig. 4 data: the public fit's reference values.
REPLICATION = {"E": 1.8172, "A": 482.01, "B": 2085.43, "alpha": 0.3478, "beta": 0.3658}
REPLICATION["a"] = REPLICATION["beta"] / (REPLICATION["alpha"] + REPLICATION["beta"])
REPLICATION["b"] = REPLICATION["alpha"] / (REPLICATION["alpha"] + REPLICATION["beta"])


def _ordered_colors(labels):
    import matplotlib

    cmap = matplotlib.colormaps["viridis"]
    labels = list(labels)
    return {lab: cmap(0.9 * i / max(1, len(labels) - 1)) for i, lab in enumerate(labels)}


def _part(table, part: str):
    return table[table["part"] == part]


def _params(table, fit: str = "all") -> dict[str, dict[str, float]]:
    rows = _part(table, "parameter")
    rows = rows[rows["fit"] == fit]
    return {r["parameter"]: r for r in rows.to_dict("records")}


def _by_size(runs, size_axis: str, key: str):
    """Axis labels ordered by the runs' mean ``key`` (N or C)."""
    return list(runs.groupby(size_axis)[key].mean().sort_values().index)


def _fmt_interval(p: dict) -> str:
    if "lower" in p and np.isfinite(p.get("lower", np.nan)):
        return f"{p['estimate']:.3g} [{p['lower']:.3g}, {p['upper']:.3g}]"
    return f"{p['estimate']:.3g}"


def _contours(ax, runs):
    ok = runs[runs["status"] == "ok"]
    x, y, z = np.log10(ok["N"]), np.log10(ok["D"]), ok["loss"]
    cs = ax.tricontourf(x, y, z, levels=12, cmap="magma_r")
    ax.figure.colorbar(cs, ax=ax, label="final val loss")
    ax.scatter(x, y, c="k", s=10)
    bad = runs[runs["status"] != "ok"]
    ax.scatter(np.log10(bad["N"]), np.log10(bad["D"]), marker="x", c="r", s=40, label="diverged")
    ax.set_xlabel("log10 N (parameters)")
    ax.set_ylabel("log10 D (tokens)")
    ax.set_title("Loss over (N, D); dots: runs")


def _isoflop_panel(ax, iso, budget_axis: str):
    runs, vertices = _part(iso, "run"), _part(iso, "vertex")
    ok = runs[runs["status"] == "ok"]
    budgets = list(vertices.sort_values("C")[budget_axis])
    colors = _ordered_colors(budgets)
    for budget in budgets:
        pts = ok[ok[budget_axis].astype(str) == str(budget)].sort_values("N")
        v = vertices[vertices[budget_axis].astype(str) == str(budget)].iloc[0]
        color = colors[budget]
        ax.plot(pts["N"], pts["loss"], "o", color=color, label=f"C = {v['C']:.2g}")
        if np.isfinite(v.get("c2", np.nan)):
            grid = np.linspace(np.log(pts["N"].min()), np.log(pts["N"].max()), 50)
            ax.plot(np.exp(grid), np.polyval([v["c2"], v["c1"], v["c0"]], grid), "-", color=color, lw=1)
        if v["interior"]:
            ax.plot(v["N_opt"], v["loss_opt"], "*", color=color, ms=12, mec="k")
        else:
            i = pts["loss"].idxmin()
            ax.plot(pts.loc[i, "N"], pts.loc[i, "loss"], ms=12, color=color, **edge_marker(True))
    ax.set_xscale("log")
    plain_log_ticks(ax, "x")
    ax.set_xlabel("N (parameters)")
    ax.set_ylabel("final val loss")
    ax.set_title("IsoFLOP profiles (Approach 2): stars = parabola minima")
    ax.legend(fontsize=7)


def _law_panel(ax, fit, size_axis: str):
    runs = _part(fit, "run")
    ok = runs[runs["status"] == "ok"]
    p = _params(fit)
    sizes = _by_size(ok, size_axis, "N")
    colors = _ordered_colors(sizes)
    for size in sizes:
        pts = ok[ok[size_axis] == size].sort_values("D")
        n = pts["N"].iloc[0]
        d = np.geomspace(pts["D"].min() / 1.5, pts["D"].max() * 1.5, 50)
        law = p["E"]["estimate"] + p["A"]["estimate"] / n ** p["alpha"]["estimate"] + p["B"]["estimate"] / d ** p["beta"]["estimate"]
        ax.plot(d, law, "-", color=colors[size], lw=1)
        train, held = pts[~pts["held_out"].astype(bool)], pts[pts["held_out"].astype(bool)]
        ax.plot(train["D"], train["loss"], "o", color=colors[size], label=f"{size} (N={n:.3g})")
        ax.plot(held["D"], held["loss"], "o", mfc="none", color=colors[size], ms=9)
        ax.plot(held["D"], held["predicted"], "x", color="k", ms=7)
    ax.set_xscale("log")
    plain_log_ticks(ax, "x")
    ax.set_xlabel("D (tokens)")
    ax.set_ylabel("final val loss")
    ax.set_title("Fitted L(N, D) (lines, all runs); open: held out,\nx: predicted by the fit without them")
    ax.legend(fontsize=7, ncol=2)


def _frontier_panel(ax, fit, iso):
    p = _params(fit)
    runs = _part(fit, "run")
    c = np.geomspace(runs["C"].min() / 2, runs["C"].max() * 2, 50)
    alpha, beta, A, B = (p[k]["estimate"] for k in ("alpha", "beta", "A", "B"))
    if alpha > 0 and beta > 0:
        g = (alpha * A / (beta * B)) ** (1.0 / (alpha + beta))
        ax.plot(c, g * (c / 6) ** (beta / (alpha + beta)), "-", color="C0",
                label=f"Approach 3: N* ~ C^a, a = {_fmt_interval(p['a'])}")
    vertices = _part(iso, "vertex")
    inner = vertices[vertices["interior"].astype(bool)]
    frontier = _part(iso, "frontier")
    label = "Approach 2 minima"
    if len(frontier):
        f = frontier.iloc[0]
        label += f": a = {f['a']:.3g}"
        ax.plot(c, f["k_N"] * c ** f["a"], "--", color="C1")
    ax.plot(inner["C"], inner["N_opt"], "*", color="C1", ms=12, mec="k", label=label)
    ax.plot(runs["C"], runs["N"], ".", color="0.6", label="runs")
    ax.set_xscale("log")
    ax.set_yscale("log")
    plain_log_ticks(ax)
    ax.set_xlabel("C = 6ND (FLOPs)")
    ax.set_ylabel("compute-optimal N*")
    ax.set_title("Compute-optimal model size")
    ax.legend(fontsize=7)


def _held_out_panel(ax, tables):
    """One strip per source (their compute ranges differ by ten orders of magnitude)."""
    names = []
    for i, (name, marker) in enumerate((("fit", "o"), ("public", "s"))):
        runs = _part(tables[name], "run")
        held = runs[runs["held_out"].astype(bool)]
        err = 100 * held["relative_error"].to_numpy(dtype=float)
        x = i + np.linspace(-0.15, 0.15, len(err)) if len(err) > 1 else np.full(len(err), float(i))
        ax.plot(x, err, marker, mfc="none", color=f"C{i}")
        names.append(f"{'ours' if name == 'fit' else 'public Chinchilla'}\n{len(err)} runs, mean |err| {np.abs(err).mean():.2f}%")
    ax.axhline(0, color="k", lw=0.8)
    for bound in (-2, 2):
        ax.axhline(bound, color="0.5", lw=0.8, ls=":")
    ax.set_xticks([0, 1], names)
    ax.set_xlim(-0.6, 1.6)
    ax.set_ylabel("(predicted - observed) / observed, %")
    ax.set_title("Held-out largest-compute runs,\npredicted by the fit on the smaller")


def _table_panel(ax, fit, public):
    ours, pub = _params(fit), _params(public)
    lines = [f"{'':6s}{'ours (char-LM)':>26s}{'public refit':>26s}{'replication':>12s}"]
    for name in ("E", "A", "B", "alpha", "beta", "a", "b"):
        lines.append(f"{name:6s}{_fmt_interval(ours[name]):>26s}{_fmt_interval(pub[name]):>26s}{REPLICATION[name]:>12.4g}")
    ax.text(0.0, 0.95, "\n".join(lines), family="monospace", fontsize=7.5, va="top", transform=ax.transAxes)
    ax.set_axis_off()
    ax.set_title("L(N, D) = E + A/N^alpha + B/D^beta, 95% bootstrap intervals")


def _summary(fit, public, iso):
    import pandas as pd

    rows = []
    for source, table in (("ours", fit), ("public", public)):
        for name, p in _params(table).items():
            rows.append({"source": source, "quantity": name, "estimate": p["estimate"], "lower": p.get("lower", np.nan),
                         "upper": p.get("upper", np.nan), "reference": REPLICATION.get(name, np.nan) if source == "public" else np.nan})
        runs = _part(table, "run")
        held = runs[runs["held_out"].astype(bool)]
        rows.append({"source": source, "quantity": "held-out max |relative error|",
                     "estimate": float(np.abs(held["relative_error"]).max()), "n_held_out": len(held)})
        rows.append({"source": source, "quantity": "held-out mean |relative error|",
                     "estimate": float(np.abs(held["relative_error"]).mean()), "n_held_out": len(held)})
    frontier = _part(iso, "frontier")
    ours_a = _params(fit)["a"]
    rows.append({"source": "ours", "quantity": "a (Approach 2)",
                 "estimate": float(frontier["a"].iloc[0]) if len(frontier) else np.nan,
                 "lower": ours_a["lower"], "upper": ours_a["upper"]})
    vertices = _part(iso, "vertex")
    rows.append({"source": "ours", "quantity": "isoFLOP budgets with an interior minimum",
                 "estimate": float(vertices["interior"].astype(bool).sum()), "n_budgets": len(vertices)})
    return pd.DataFrame(rows)


@FIGURES.register("chinchilla_panels")
def chinchilla_panels(metrics, runs, tables, isoflop: str = "isoflop", fit: str = "fit", public: str = "public",
                      budget_axis: str = "budget", size_axis: str = "model", title: str | None = None):
    """Six panels: loss contours over (N, D); isoFLOP profiles with parabola minima
    (open marker: the budget's lowest run when the parabola has no interior minimum);
    the fitted L(N, D) per model size with held-out runs and their predictions; the
    compute-optimal N*(C) of Approaches 3 and 2; the held-out relative errors of ours
    and of the public data; the fitted constants of both with 95% bootstrap intervals.
    Summary: per source the parameters (estimate, interval, the replication's value
    for the public fit), the held-out errors, Approach 2's a beside Approach 3's
    interval, and how many budgets have an interior isoFLOP minimum."""
    import matplotlib.pyplot as plt

    iso = one_table(tables, isoflop, "chinchilla_panels", ["part"])
    fit_t = one_table(tables, fit, "chinchilla_panels", ["part"])
    pub = one_table(tables, public, "chinchilla_panels", ["part"])
    fig, axes = plt.subplots(2, 3, figsize=(17, 10))
    _contours(axes[0, 0], _part(fit_t, "run"))
    _isoflop_panel(axes[0, 1], iso, budget_axis)
    _law_panel(axes[0, 2], fit_t, size_axis)
    _frontier_panel(axes[1, 0], fit_t, iso)
    _held_out_panel(axes[1, 1], {"fit": fit_t, "public": pub})
    _table_panel(axes[1, 2], fit_t, pub)
    fig.suptitle(title or "Chinchilla scaling of a character-level GPT (1.7k-28k parameters) and the refit of the public Chinchilla data")
    fig.tight_layout()
    plotted = _part(fit_t, "run")
    return fig, plotted, _summary(fit_t, pub, iso)


@FIGURES.register("loss_to_loss")
def loss_to_loss_figure(metrics, runs, tables, table: str | None = None, size_axis: str = "model",
                        first: str = "Shakespeare (val)", second: str = "second text", title: str | None = None):
    """Left: loss on the ``second`` text against loss on the training distribution,
    one point per run (colour: model size), the shifted power law fitted on every run
    (solid) and on all but the held-out largest (dashed), held-out runs open with
    their predictions (x). Right: the held-out runs' relative prediction errors.
    Summary: one row per run (loss0, loss1, predicted, relative_error, held_out)."""
    import matplotlib.pyplot as plt

    data = one_table(tables, table, "loss_to_loss", ["part"])
    pts = _part(data, "run")
    ok = pts[pts["status"] == "ok"]
    sizes = _by_size(ok, size_axis, "N")
    colors = _ordered_colors(sizes)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 5), gridspec_kw={"width_ratios": [1.6, 1]})
    for size in sizes:
        s = ok[ok[size_axis] == size]
        train, held = s[~s["held_out"].astype(bool)], s[s["held_out"].astype(bool)]
        ax.plot(train["loss0"], train["loss1"], "o", color=colors[size], label=f"{size} (N={s['N'].iloc[0]:.3g})")
        ax.plot(held["loss0"], held["loss1"], "o", mfc="none", ms=9, color=colors[size])
        ax.plot(held["loss0"], held["predicted"], "x", color="k")
    for fit_name, style in (("all", "-"), ("without held-out", "--")):
        p = _params(data, fit_name)
        if p:
            grid = np.linspace(max(ok["loss0"].min() * 0.97, p["E0"]["estimate"] * 1.001), ok["loss0"].max() * 1.02, 100)
            ax.plot(grid, p["K"]["estimate"] * (grid - p["E0"]["estimate"]) ** p["kappa"]["estimate"] + p["E1"]["estimate"],
                    style, color="k", lw=1, label=f"fit ({fit_name}): kappa = {p['kappa']['estimate']:.3g}, E0 = {p['E0']['estimate']:.3g}")
    bad = pts[pts["status"] != "ok"]
    if len(bad):
        ax.text(0.02, 0.02, f"{len(bad)} diverged run(s) not drawn", transform=ax.transAxes, color="r")
    ax.set_xlabel(f"final loss on {first} (training distribution)")
    ax.set_ylabel(f"final loss on {second}")
    ax.set_title("Loss-to-loss: L1 = K (L0 - E0)^kappa + E1")
    ax.legend(fontsize=7)
    held = ok[ok["held_out"].astype(bool)]
    ax2.plot(held["C"], 100 * held["relative_error"], "o", mfc="none")
    ax2.axhline(0, color="k", lw=0.8)
    for bound in (-2, 2):
        ax2.axhline(bound, color="0.5", ls=":", lw=0.8)
    ax2.set_xscale("log")
    plain_log_ticks(ax2, "x")
    ax2.set_xlabel("C = 6ND of the held-out run (FLOPs)")
    ax2.set_ylabel("(predicted - observed) / observed, %")
    sizes_held = ", ".join(str(v) for v in held[size_axis].unique())
    ax2.set_title(f"Held-out runs (largest model: {sizes_held}),\npredicted by the fit on the smaller models")
    fig.suptitle(title or f"Loss on {second} predicted from the loss on {first} (one point per model and budget)")
    fig.tight_layout()
    summary = pts[["run_id", size_axis, "N", "D", "C", "loss0", "loss1", "predicted", "predicted_all", "relative_error",
                   "held_out", "status"] + [c for c in pts.columns if c in ("budget", "seed")]]
    return fig, pts, summary
