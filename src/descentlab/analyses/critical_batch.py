"""Steps and examples to a target loss against the batch size, and the critical
batch size against the gradient noise scale (McCandlish, Kaplan, Amodei et al.,
"An Empirical Model of Large-Batch Training", arXiv 1812.06162).

For each batch size B the learning rate is tuned on ``tuning_seeds`` (the lr
whose median steps-to-target is smallest) and the steps S and examples
E = B S to the target are reported on disjoint ``reporting_seeds`` at that lr.
The paper's tradeoff (S/S_min - 1)(E/E_min - 1) = 1 is, with E = B S, the
curve S = S_min (1 + B_crit / B), B_crit = E_min / S_min; it is fitted by least
squares on log S. The noise scale B_simple (an in-training instrument,
``noise_scale``) is read where the runs of ``noise_batch`` reach the target
(its measurements within a factor 1.25 of that step, averaged as tr(Sigma) and |G|^2).

Steps-to-target come from the training loss the loop logs: the mean of the
minibatch losses of the ``log_every`` steps before a log step s, each taken
at the weights before its update, i.e. an unbiased estimate of the training
loss after s - (log_every + 1) / 2 updates on average; the first crossing is
interpolated linearly between two such points.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from . import ANALYSES

if TYPE_CHECKING:
    import pandas as pd


def crossing_step(positions: np.ndarray, losses: np.ndarray, target: float) -> float:
    """First position where ``losses`` fall to ``target`` or below, linearly interpolated
    from the point before; NaN if never (or not finite before it: a diverging run)."""
    positions, losses = np.asarray(positions, dtype=float), np.asarray(losses, dtype=float)
    for i, loss in enumerate(losses):
        if not np.isfinite(loss):
            return float("nan")
        if loss <= target:
            if i == 0:
                return float(positions[0])
            p0, l0 = positions[i - 1], losses[i - 1]
            return float(p0 + (l0 - target) / (l0 - loss) * (positions[i] - p0))
    return float("nan")


def noise_scale_near(steps: np.ndarray, trace_sigma: np.ndarray, grad_sq_norm: np.ndarray, at: float,
                     window: float = 1.25) -> tuple[float, int]:
    """B_simple near step ``at``: mean tr(Sigma) over mean |G|^2 of the measurements with step in
    [at / window, at * window] (the numerator and denominator are averaged before the ratio, as
    McCandlish et al. advise, since single estimates of |G|^2 are noisy). Returns (B, count); NaN, 0
    when ``at`` is not finite or no measurement falls in the window."""
    steps = np.asarray(steps, dtype=float)
    if not np.isfinite(at):
        return float("nan"), 0
    near = (steps >= at / window) & (steps <= at * window)
    if not near.any():
        return float("nan"), 0
    g2 = float(np.mean(np.asarray(grad_sq_norm, dtype=float)[near]))
    if not g2 > 0:
        return float("nan"), int(near.sum())
    return float(np.mean(np.asarray(trace_sigma, dtype=float)[near])) / g2, int(near.sum())


def fit_tradeoff(batch: Sequence[float], steps: Sequence[float]) -> dict[str, float]:
    """S = S_min (1 + B_crit / B) by least squares on log S (S_min in closed form for each
    B_crit, B_crit by a bounded 1-d search after a log grid). Returns S_min, B_crit,
    E_min = S_min B_crit, the rms log residual, and whether B_crit is inside [min B, max B]."""
    from scipy.optimize import minimize_scalar

    b, s = np.asarray(batch, dtype=float), np.asarray(steps, dtype=float)
    if len(b) < 3 or len(b) != len(s):
        raise ValueError(f"fit_tradeoff: need at least 3 (batch, steps) pairs of equal length, got {len(b)} and {len(s)}")
    if (b <= 0).any() or (s <= 0).any() or not (np.isfinite(b).all() and np.isfinite(s).all()):
        raise ValueError(f"fit_tradeoff: batch sizes and steps must be positive and finite, got {b}, {s}")
    log_s = np.log(s)

    def sse(log_bcrit: float) -> float:
        r = log_s - np.log1p(np.exp(log_bcrit) / b)
        return float(((r - r.mean()) ** 2).sum())

    lo, hi = np.log(b.min()) - 7.0, np.log(b.max()) + 7.0
    grid = np.linspace(lo, hi, 400)
    k = int(np.argmin([sse(g) for g in grid]))
    bounds = (grid[max(k - 1, 0)], grid[min(k + 1, len(grid) - 1)])
    best = minimize_scalar(sse, bounds=bounds, method="bounded", options={"xatol": 1e-10})
    log_bcrit = float(best.x)
    b_crit = float(np.exp(log_bcrit))
    r = log_s - np.log1p(b_crit / b)
    s_min = float(np.exp(r.mean()))
    return {"S_min": s_min, "B_crit": b_crit, "E_min": s_min * b_crit, "rms_log_residual": float(np.sqrt(((r - r.mean()) ** 2).mean())),
            "B_crit_inside_grid": bool(b.min() <= b_crit <= b.max())}


def tune(per_run: pd.DataFrame, tuning_seeds: Sequence[int]) -> pd.DataFrame:
    """Per batch: the lr with the smallest median steps-to-target over the tuning seeds (a run that
    never reached the target counts as infinitely slow), and whether it is on the lr grid's edge."""
    import pandas as pd

    rows = []
    tuning = per_run[per_run.seed.isin(list(tuning_seeds))]
    for batch, group in tuning.groupby("batch_size"):
        lrs = np.sort(group.lr.unique())
        med = group.assign(s=group.steps_to_target.fillna(np.inf)).groupby("lr").s.median().reindex(lrs)
        if not np.isfinite(med.to_numpy()).any():
            rows.append({"batch_size": batch, "tuned_lr": np.nan, "lr_on_edge": True, "tuning_steps": np.inf})
            continue
        best = float(med.idxmin())
        rows.append({"batch_size": batch, "tuned_lr": best, "lr_on_edge": bool(best in (lrs[0], lrs[-1])),
                     "tuning_steps": float(med.min())})
    return pd.DataFrame(rows)


def _run_rows(runs, target: float, batch_axis: str, lr_axis: str) -> pd.DataFrame:
    import pandas as pd

    rows = []
    for run in runs:
        m = run.metrics()
        loss = m[(m.split == "train") & (m.metric == "loss")].sort_values("step")
        k = int(run.spec["log_every"])
        positions = loss.step.to_numpy(dtype=float) - (k + 1) / 2.0
        diverged = run.status != "ok"
        steps = float("nan") if diverged else crossing_step(positions, loss.value.to_numpy(), target)
        noise = m[(m.split == "train") & m.metric.isin(["trace_sigma", "grad_sq_norm"])]
        noise = noise.pivot_table(index="step", columns="metric", values="value").sort_index()
        b_simple, n_near = (noise_scale_near(noise.index.to_numpy(), noise.trace_sigma.to_numpy(), noise.grad_sq_norm.to_numpy(), steps)
                            if len(noise) else (float("nan"), 0))
        batch = int(run.spec["batch_size"])
        rows.append({"record": "run", "run_id": run.run_id, "batch": run.labels.get(batch_axis), "batch_size": batch,
                     "lr_label": run.labels.get(lr_axis), "lr": float(run.spec["optimizer"]["lr"]), "seed": int(run.spec["seed"]),
                     "status": run.status, "diverged": diverged, "steps_to_target": steps, "examples_to_target": steps * batch,
                     "reached": bool(np.isfinite(steps)), "final_train_loss": float(loss.value.iloc[-1]) if len(loss) else np.nan,
                     "b_simple_at_target": b_simple, "noise_measurements_used": n_near, "has_noise_scale": bool(len(noise))})
    return pd.DataFrame(rows)


@ANALYSES.register("critical_batch")
def critical_batch(
    runs,
    device: str = "cpu",
    target: float = 1.0,
    batch: str = "batch",
    lr: str = "lr",
    tuning_seeds: Sequence[int] = (0, 1),
    reporting_seeds: Sequence[int] = (2, 3, 4),
    noise_batch: int | None = None,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Rows ``record``: ``run`` (steps/examples to ``target`` training loss, B_simple there),
    ``batch`` (tuned lr, on-edge flag, geometric-mean steps and examples over the reporting seeds
    at that lr, the fitted S and E), ``fit`` (S_min, E_min, B_crit with bootstrap intervals over
    reporting seeds, B_noise = geometric mean of B_simple at the target over the reporting runs of
    ``noise_batch`` at its tuned lr (each run's from its measurements within a factor 1.25 of its
    steps-to-target, :func:`noise_scale_near`), and B_crit / B_noise)."""
    import pandas as pd

    del device
    overlap = set(tuning_seeds) & set(reporting_seeds)
    if overlap:
        raise ValueError(f"critical_batch: tuning and reporting seeds must be disjoint, both have {sorted(overlap)}")
    per_run = _run_rows(runs, float(target), batch, lr)
    missing = set(tuning_seeds) - set(per_run.seed) or set(reporting_seeds) - set(per_run.seed)
    if missing:
        raise ValueError(f"critical_batch: no runs with seed(s) {sorted(missing)}; the study has seeds {sorted(set(per_run.seed))}")
    per_run["role"] = np.where(per_run.seed.isin(list(tuning_seeds)), "tuning",
                               np.where(per_run.seed.isin(list(reporting_seeds)), "reporting", "unused"))
    tuned = tune(per_run, tuning_seeds)
    report = per_run[per_run.seed.isin(list(reporting_seeds))].merge(tuned[["batch_size", "tuned_lr"]], on="batch_size")
    report = report[np.isclose(report.lr, report.tuned_lr)]
    batches = []
    for _, t in tuned.iterrows():
        r = report[report.batch_size == t.batch_size]
        all_reached = bool(len(r) and r.reached.all())
        steps = float(np.exp(np.log(r.steps_to_target).mean())) if all_reached else np.nan
        batches.append({"record": "batch", "batch_size": int(t.batch_size), "tuned_lr": t.tuned_lr, "lr_on_edge": bool(t.lr_on_edge),
                        "tuning_steps": t.tuning_steps, "n_seeds": int(len(r)), "all_reached": all_reached, "steps": steps,
                        "examples": steps * t.batch_size, "steps_min": float(r.steps_to_target.min()) if len(r) else np.nan,
                        "steps_max": float(r.steps_to_target.max()) if len(r) else np.nan})
    batches = pd.DataFrame(batches)
    usable = batches[batches.all_reached]
    if len(usable) < 3:
        raise ValueError(f"critical_batch: only {len(usable)} batch sizes reached the target {target} in every reporting seed; "
                         "need 3 to fit the tradeoff (raise steps or the target)")
    fit = fit_tradeoff(usable.batch_size, usable.steps)
    batches["fitted_steps"] = fit["S_min"] * (1 + fit["B_crit"] / batches.batch_size)
    batches["fitted_examples"] = batches.fitted_steps * batches.batch_size
    batches["relative_error"] = batches.steps / batches.fitted_steps - 1
    ordered = batches.sort_values("batch_size")
    monotone = {"steps_never_rise": bool((np.diff(ordered.steps.to_numpy()) <= 0).all()),  # NaN (censored) fails
                "examples_never_fall": bool((np.diff(ordered.examples.to_numpy()) >= 0).all())}

    rng = np.random.default_rng(seed)
    samples = []
    logs = {b: np.log(report[report.batch_size == b].steps_to_target.to_numpy()) for b in usable.batch_size}
    for _ in range(int(n_resamples)):
        s = [np.exp(rng.choice(v, size=len(v), replace=True).mean()) for v in logs.values()]
        samples.append(fit_tradeoff(list(logs), s))
    samples = pd.DataFrame(samples)
    tail = 50.0 * (1.0 - confidence)

    noise = report[report.has_noise_scale & (report.batch_size == (noise_batch if noise_batch is not None else -1))]
    b_noise = float(np.exp(np.log(noise.b_simple_at_target).mean())) if len(noise) and noise.b_simple_at_target.notna().all() else np.nan
    row = {"record": "fit", **fit, **monotone, "n_batches": int(len(usable)), "n_reporting_seeds": len(reporting_seeds), "target": float(target),
           "B_noise": b_noise, "noise_batch": noise_batch, "n_noise_runs": int(len(noise)),
           "B_noise_min": float(noise.b_simple_at_target.min()) if len(noise) else np.nan,
           "B_noise_max": float(noise.b_simple_at_target.max()) if len(noise) else np.nan,
           "ratio_crit_to_noise": fit["B_crit"] / b_noise if np.isfinite(b_noise) else np.nan,
           "confidence": confidence, "n_resamples": int(n_resamples)}
    for name in ("B_crit", "S_min", "E_min"):
        row[f"{name}_lower"], row[f"{name}_upper"] = (float(v) for v in np.percentile(samples[name], [tail, 100 - tail]))
    return pd.concat([per_run, batches, pd.DataFrame([row])], ignore_index=True)
