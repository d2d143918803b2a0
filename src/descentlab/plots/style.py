"""One look across every figure: a fixed colour per optimizer and method, plain
tick labels on log axes, and open markers for points that are not what they
seem (an optimum on the edge of its grid, a diverged or censored run).

Colours are looked up by name, never by position in a plot's legend, so
"Adam" is the same colour in every figure of the project.
"""

from __future__ import annotations

import hashlib

# The optimizers and methods of the studies, each with its own colour
# (matplotlib's tab20 and Dark2, spread so that families differ).
_TAB20 = [
    "#1f77b4", "#aec7e8", "#ff7f0e", "#ffbb78", "#2ca02c", "#98df8a", "#d62728", "#ff9896", "#9467bd", "#c5b0d5",
    "#8c564b", "#c49c94", "#e377c2", "#f7b6d2", "#7f7f7f", "#c7c7c7", "#bcbd22", "#dbdb8d", "#17becf", "#9edae5",
]
_EXTRA = ["#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666"]
PALETTE = _TAB20 + _EXTRA

KNOWN = {
    # optimizers (the labels the studies use, and registry names)
    "SGD": "#7f7f7f", "SGD-M": "#000000", "Adam": "#1f77b4", "AdamW": "#ff7f0e", "Adam+L2": "#1f77b4",
    "AMSGrad": "#aec7e8", "NAdam": "#9edae5", "RAdam": "#17becf", "Adagrad": "#8c564b", "Adafactor": "#c49c94",
    "AdaGrad-Norm": "#a6761d", "AdamP": "#ffbb78", "SGDP": "#c7c7c7", "diffGrad": "#d95f02", "Grams": "#e6ab02",
    "EXAdam": "#bcbd22", "MARS": "#dbdb8d", "AdEMAMix": "#66a61e", "Lion": "#2ca02c", "AdaHessian": "#98df8a",
    "SAM": "#d62728", "ASAM": "#ff9896", "MoMo": "#9467bd", "MoMo-Adam": "#c5b0d5", "NAG-GS": "#7570b3",
    "SF-AdamW": "#e377c2", "SF-SGD": "#f7b6d2", "Shampoo": "#1b9e77", "Muon": "#e7298a",
    # losses and averaging/merging methods
    "cross_entropy": "#1f77b4", "squentropy": "#2ca02c", "label_smoothing": "#ff7f0e", "mse": "#d62728",
    "uniform soup": "#2ca02c", "greedy soup": "#1b9e77", "SWA": "#d62728", "EMA": "#9467bd", "LAWA": "#8c564b",
    "last iterate": "#333333", "continued SGD": "#7f7f7f", "Switch EMA": "#7570b3", "post-hoc EMA": "#e377c2",
    "post-hoc EMA profile sigma_rel 0.10": "#e377c2",
    "no alignment": "#7f7f7f", "weight matching": "#1b9e77", "error barrier": "#d62728", "loss barrier": "#1f77b4",
    # the merges of model-soups (their declaration names)
    "uniform-soup": "#2ca02c", "greedy-soup": "#1b9e77", "fisher": "#e377c2", "model-stock": "#bcbd22",
    "diwa": "#98df8a", "ties": "#9467bd", "dare": "#c5b0d5", "gradient-matching": "#8c564b",
    # learning-rate schedules (wsd-vs-cosine, decay-to-zero)
    "cosine": "#1f77b4", "cosine 10x": "#1f77b4", "WSD": "#d62728", "WSD 1-sqrt": "#d62728", "WSD linear": "#ff9896",
    "constant": "#7f7f7f", "D2Z": "#2ca02c",
    # the settings of small-scale-proxies (Wortsman et al.)
    "qk-layernorm + z-loss": "#1f77b4", "no qk-layernorm": "#d62728", "no z-loss": "#ff7f0e",
}
_LOWER = {k.lower(): v for k, v in KNOWN.items()}


def color_for(name: object) -> str:
    """The colour of ``name`` in every figure: its fixed colour if it has one,
    else one chosen by a hash of the name (stable across runs and figures)."""
    key = str(name)
    if key in KNOWN:
        return KNOWN[key]
    if key.lower() in _LOWER:
        return _LOWER[key.lower()]
    digest = int(hashlib.sha256(key.encode()).hexdigest(), 16)
    return PALETTE[digest % len(PALETTE)]


def colors_for(names) -> dict[object, str]:
    return {n: color_for(n) for n in names}


def plain_log_ticks(ax, axis: str = "both") -> None:
    """Log axes with plain numbers (0.01, 3, 200), not "2×10⁰"."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    def plain(value, _pos=None):
        return f"{value:g}"

    for name in ("x", "y") if axis == "both" else (axis,):
        target = ax.xaxis if name == "x" else ax.yaxis
        if target.get_scale() != "log":
            continue
        target.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0), numticks=12))
        target.set_major_formatter(FuncFormatter(plain))
        target.set_minor_formatter(NullFormatter())


def edge_marker(on_edge: bool) -> dict:
    """Marker style of a best-over-a-grid point: filled when interior, open on
    the grid's edge (the true optimum may lie outside the grid)."""
    return {"marker": "o", "markerfacecolor": "none" if on_edge else None}
