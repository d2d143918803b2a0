"""Accuracy and calibration of a trained classifier on its test split."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from . import ANALYSES

if TYPE_CHECKING:  # pandas is imported where it is used, so the registry imports fast
    import pandas as pd

# Losses whose outputs are fitted to one-hot targets: their outputs estimate the
# class probabilities themselves (the minimiser of the square loss is E[onehot | x]),
# and softmax of them is not a probability model at all.
SQUARE_LOSSES = ("mse",)


def _bin_index(confidence: torch.Tensor, bins: int) -> torch.Tensor:
    # bin k holds (k/bins, (k+1)/bins]; a confidence of exactly 0 goes to bin 0
    return (torch.ceil(confidence * bins).long() - 1).clamp(0, bins - 1)


def _check(confidence: torch.Tensor, correct: torch.Tensor, bins: int) -> None:
    if confidence.shape != correct.shape or confidence.ndim != 1:
        raise ValueError(f"confidence and correct must be equal-length vectors, got {tuple(confidence.shape)} and {tuple(correct.shape)}")
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")


def expected_calibration_error(confidence: torch.Tensor, correct: torch.Tensor, bins: int = 15) -> float:
    """ECE (Guo et al. 2017, arXiv 1706.04599): sum over equal-width confidence
    bins (lo, hi] of |bin| / N * |accuracy(bin) - mean confidence(bin)|."""
    _check(confidence, correct, bins)
    confidence = confidence.double()
    correct = correct.double()
    index = _bin_index(confidence, bins)
    n = confidence.numel()
    ece = torch.zeros((), dtype=torch.float64)
    for k in range(bins):
        in_bin = index == k
        count = int(in_bin.sum())
        if count:
            ece += count / n * (correct[in_bin].mean() - confidence[in_bin].mean()).abs()
    return float(ece)


def reliability_bins(confidence: torch.Tensor, correct: torch.Tensor, bins: int = 15) -> list[dict[str, float]]:
    """The reliability diagram's points: per non-empty bin (lo, hi], its count,
    accuracy and mean confidence (the same bins as ``expected_calibration_error``)."""
    _check(confidence, correct, bins)
    confidence, correct = confidence.double(), correct.double()
    index = _bin_index(confidence, bins)
    rows = []
    for k in range(bins):
        in_bin = index == k
        count = int(in_bin.sum())
        if count:
            rows.append({"bin": k, "bin_lo": k / bins, "bin_hi": (k + 1) / bins, "count": count,
                         "bin_accuracy": float(correct[in_bin].mean()), "bin_confidence": float(confidence[in_bin].mean())})
    return rows


def output_probabilities(outputs: torch.Tensor) -> torch.Tensor:
    """Outputs fitted to one-hot targets read as probabilities: clipped to [0, 1]
    and renormalised to sum to 1 (uniform where every output is <= 0)."""
    if outputs.ndim != 2:
        raise ValueError(f"outputs must be (N, C), got shape {tuple(outputs.shape)}")
    p = outputs.double().clamp(0.0, 1.0)
    total = p.sum(dim=1, keepdim=True)
    uniform = torch.full_like(p, 1.0 / p.shape[1])
    return torch.where(total > 0, p / total.clamp_min(torch.finfo(p.dtype).tiny), uniform)


def probabilities(outputs: torch.Tensor, loss_name: str) -> tuple[torch.Tensor, str]:
    """(class probabilities, how they were read) for outputs trained with ``loss_name``:
    the outputs themselves for square losses, softmax for the rest."""
    if loss_name in SQUARE_LOSSES:
        return output_probabilities(outputs), "outputs"
    return torch.softmax(outputs.double(), dim=1), "softmax"


@torch.no_grad()
def predict(model: torch.nn.Module, x: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    return torch.cat([model(x[i : i + chunk]) for i in range(0, x.shape[0], chunk)])


@ANALYSES.register("calibration")
def calibration(runs, device: str = "cpu", split: str = "test", bins: int = 15, selected=None,
                edge_axis: str | None = None) -> pd.DataFrame:
    """Per run, on ``split``: a ``kind = run`` row with accuracy (argmax of the
    outputs), ``ece`` and ``confidence`` of the loss's own probabilities (softmax,
    or for square losses the outputs clipped to [0, 1] and renormalised: their
    minimiser is the class probability), and ``ece_softmax`` and
    ``confidence_softmax`` of max softmax(outputs) for every loss (what the
    squentropy paper's code reports, MSE included); and ``kind = bin`` rows,
    the reliability diagram of the loss's own probabilities (``bins`` bins).

    With a study selection (``selected``: each cell's chosen setting's tuning
    runs and its reruns), only the reruns are evaluated: the setting won its
    cell on validation with the tuning seeds, so their test numbers would
    report their luck; ``runs``
    (the sweep) is then only the grid that ``edge_axis`` flags the selected
    value against (columns ``grid_low``, ``grid_high``, ``on_edge``, ``edge``,
    as ``rerun_best``).
    """
    import pandas as pd

    if edge_axis is not None and selected is None:
        raise ValueError("calibration: edge_axis flags a selected value on its grid; it needs the study's selection (analysis `selection:`)")
    edges = {}
    if selected is not None:
        from .benchmark import _grid_edges

        reruns = [run for run in selected if run.role == "rerun"]
        if not reruns:
            raise ValueError("calibration: the selection has no reruns to evaluate (every cell diverged?)")
        edges = _grid_edges(runs, reruns, edge_axis) if edge_axis is not None else {}
        runs = reruns
    rows = []
    for run in runs:
        base = {"run_id": run.run_id, **run.labels, "status": run.status, **edges.get(run.run_id, {})}
        if run.status != "ok":
            rows.append(dict(base, kind="run"))
            continue
        model, data = run.load(device=device)
        if data.task != "classification":
            raise ValueError(f"calibration: run {run.run_id} is not a classification task")
        outputs = predict(model, data.x[split].to(device)).cpu()
        y = data.y[split]
        probs, read_as = probabilities(outputs, run.spec["loss"]["name"])
        predicted = outputs.argmax(dim=1, keepdim=True)
        # the probability of the predicted class (= max probability; clipping can tie outputs above 1)
        confidence = probs.gather(1, predicted).squeeze(1)
        soft_confidence = torch.softmax(outputs.double(), dim=1).max(dim=1).values
        correct = predicted.squeeze(1) == y
        rows.append(dict(
            base, kind="run", probabilities=read_as, num_classes=int(outputs.shape[1]),
            accuracy=float(correct.double().mean()),
            ece=expected_calibration_error(confidence, correct, bins),
            confidence=float(confidence.mean()),
            ece_softmax=expected_calibration_error(soft_confidence, correct, bins),
            confidence_softmax=float(soft_confidence.mean()),
        ))
        rows += [dict(base, kind="bin", probabilities=read_as, **b) for b in reliability_bins(confidence, correct, bins)]
    return pd.DataFrame(rows)
