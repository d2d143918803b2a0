"""Final losses of learning-rate-schedule runs, and power laws fitted to them.

For the studies ``wsd-vs-cosine`` (Hägele et al. 2024) and ``decay-to-zero``
(Bergsma et al. 2025). ``schedule_finals`` describes each run by its schedule
as trained (read from its spec, not from axis labels): the schedule's family
(cosine, wsd, linear, constant), the decay's end as a fraction of the peak,
WSD's cooldown shape and fraction and the step it branched from its parent,
the tokens it saw and its tokens per parameter, and its final validation
loss. ``schedule_power_laws`` fits L(D) = E + A D^-alpha (D: tokens) to the
final losses of named subsets of runs with ``descentlab.scaling``.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import pandas as pd

from . import ANALYSES

FINAL_COLUMNS = [
    "run_id", "seed", "status", "schedule", "final_factor", "cooldown", "cooldown_fraction", "branch_step",
    "steps", "tokens", "params", "tpp", "final_val_loss",
]


def describe_schedule(spec: dict[str, Any]) -> dict[str, Any]:
    """The schedule as trained: family, final factor, WSD cooldown shape and fraction, branch step.

    ``cooldown_fraction`` is the cooldown's share of the whole run (steps from
    0), as Hägele et al. state it; a WSD run started at step K from a parent
    (``init``) reports K as ``branch_step``."""
    schedule = spec["schedule"]
    name = schedule["name"]
    steps = int(spec["steps"])
    row: dict[str, Any] = {"schedule": name, "final_factor": float(schedule.get("final_factor", 0.0)),
                           "cooldown": None, "cooldown_fraction": math.nan}
    if name == "constant":
        row["final_factor"] = 1.0
    elif name == "wsd":
        cooldown_steps = schedule.get("cooldown_steps")
        if cooldown_steps is None:
            cooldown_steps = int(schedule.get("cooldown_fraction", 0.2) * steps)
        row["cooldown"] = {"sqrt": "1-sqrt", "square": "1-square"}.get(schedule.get("cooldown", "1-sqrt"),
                                                                      schedule.get("cooldown", "1-sqrt"))
        row["cooldown_fraction"] = round(cooldown_steps / steps, 6)
    elif name not in ("cosine", "linear"):
        raise ValueError(f"schedule_finals: schedule {name!r} is not one of constant, cosine, linear, wsd")
    init = spec.get("init")
    row["branch_step"] = int(init["step"]) if init else 0
    return row


def tokens_seen(spec: dict[str, Any]) -> int:
    """Tokens the run trained on: steps x batch size x block size (every window position is a target)."""
    block = spec["dataset"].get("block_size")
    if block is None:
        raise ValueError(f"schedule_finals: dataset {spec['dataset']['name']!r} has no block_size; token counts need a token dataset")
    return int(spec["steps"]) * int(spec["batch_size"]) * int(block)


def final_value(metrics: pd.DataFrame, split: str = "val", metric: str = "loss") -> float:
    """The value of ``metric`` on ``split`` at the last step it was measured (NaN when never)."""
    rows = metrics[(metrics["split"] == split) & (metrics["metric"] == metric)]
    if rows.empty:
        return math.nan
    return float(rows.sort_values("step")["value"].iloc[-1])


def count_params(spec: dict[str, Any], data) -> int:
    """Parameters of the run's model (tied embeddings counted once), built on the meta device."""
    import torch

    from ..models import build_model

    with torch.device("meta"):
        model = build_model(spec["model"], data.input_shape, data.num_outputs)
    return int(sum(p.numel() for p in model.parameters()))


@ANALYSES.register("schedule_finals")
def schedule_finals(runs, device: str = "cpu", split: str = "val") -> pd.DataFrame:
    """One row per run: its schedule as trained, tokens, parameters, tokens per
    parameter, final loss on ``split`` (NaN for a diverged run, whose status
    says so) and its axis labels."""
    from ..data import SplitData

    params: dict[str, int] = {}
    rows = []
    for run in runs:
        spec = run.spec
        key = repr((str(run.data), spec["model"]))
        if key not in params:
            params[key] = count_params(spec, SplitData.load(run.data))
        status = run.status
        loss = final_value(run.metrics(), split) if status == "ok" else math.nan
        tokens = tokens_seen(spec)
        rows.append({
            "run_id": run.run_id, **{k: v for k, v in run.labels.items() if k != "seed"}, "seed": run.labels.get("seed", spec["seed"]),
            "status": status, **describe_schedule(spec), "steps": int(spec["steps"]), "tokens": tokens,
            "params": params[key], "tpp": tokens / params[key], "final_val_loss": loss,
        })
    return pd.DataFrame(rows)


def fit_subsets(finals: pd.DataFrame, fits: dict[str, str], x: str = "tokens") -> pd.DataFrame:
    """L = E + A x^-alpha fitted to the final losses of each subset (a pandas query);
    one row per fit with its constants and its convergence (``descentlab.scaling``)."""
    from ..scaling import fit_power_law

    rows = []
    for name, query in fits.items():
        subset = finals.query(query, engine="python")
        subset = subset[(subset["status"] == "ok") & subset["final_val_loss"].notna()]
        if subset[x].nunique() < 3:
            raise ValueError(f"schedule_power_laws: fit {name!r} ({query}) has {subset[x].nunique()} distinct {x} values; "
                             f"a power law with an offset needs at least 3")
        fit = fit_power_law(subset[x].to_numpy(float), subset["final_val_loss"].to_numpy(float))
        table = fit.to_table().iloc[0].to_dict()
        rows.append({"fit": name, "query": query, "x": x, "x_min": float(subset[x].min()), "x_max": float(subset[x].max()),
                     "seeds": int(subset["seed"].nunique()), **table})
    return pd.DataFrame(rows)


@ANALYSES.register("schedule_power_laws")
def schedule_power_laws(runs, device: str = "cpu", fits: dict[str, str] | None = None, x: str = "tokens",
                        split: str = "val") -> pd.DataFrame:
    """A power law in ``x`` (tokens) per named subset of runs, e.g.
    ``{cosine: "schedule == 'cosine'", WSD: "schedule == 'wsd' and cooldown_fraction == 0.2"}``."""
    if not fits:
        raise ValueError("schedule_power_laws: give fits, a mapping from a fit's name to a query over schedule_finals' columns")
    return fit_subsets(schedule_finals(runs, device=device, split=split), fits, x)


def predictions(fits: pd.DataFrame, xs: Sequence[float]) -> pd.DataFrame:
    """Each fit's prediction E + A x^-alpha at ``xs``: one row per (fit, x)."""
    rows = [{"fit": f["fit"], "x": float(x), "predicted_loss": f["E"] + f["A"] * float(x) ** -f["alpha"]}
            for _, f in fits.iterrows() for x in xs]
    return pd.DataFrame(rows)
