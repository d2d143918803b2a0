"""Accuracy and calibration of a trained classifier on its test split."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from . import ANALYSES

if TYPE_CHECKING:  # pandas is imported where it is used, so the registry imports fast
    import pandas as pd


def expected_calibration_error(confidence: torch.Tensor, correct: torch.Tensor, bins: int = 15) -> float:
    """ECE (Guo et al. 2017, arXiv 1706.04599): sum over equal-width confidence
    bins (lo, hi] of |bin| / N * |accuracy(bin) - mean confidence(bin)|."""
    if confidence.shape != correct.shape or confidence.ndim != 1:
        raise ValueError(f"confidence and correct must be equal-length vectors, got {tuple(confidence.shape)} and {tuple(correct.shape)}")
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    confidence = confidence.double()
    correct = correct.double()
    # bin k holds (k/bins, (k+1)/bins]; a confidence of exactly 0 goes to bin 0
    index = (torch.ceil(confidence * bins).long() - 1).clamp(0, bins - 1)
    n = confidence.numel()
    ece = torch.zeros((), dtype=torch.float64)
    for k in range(bins):
        in_bin = index == k
        count = int(in_bin.sum())
        if count:
            ece += count / n * (correct[in_bin].mean() - confidence[in_bin].mean()).abs()
    return float(ece)


@torch.no_grad()
def predict(model: torch.nn.Module, x: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    return torch.cat([model(x[i : i + chunk]) for i in range(0, x.shape[0], chunk)])


@ANALYSES.register("calibration")
def calibration(runs, device: str = "cpu", split: str = "test", bins: int = 15) -> pd.DataFrame:
    """Per run: accuracy, ECE and mean confidence of softmax(outputs) on ``split``.

    Outputs of a model trained with MSE are not log-probabilities; softmax of
    them is still the usual confidence score (as in Hui & Belkin 2021), so the
    ECE of MSE models measures that score's calibration.
    """
    import pandas as pd

    rows = []
    for run in runs:
        row = {"run_id": run.run_id, **run.labels, "status": run.status}
        if run.status == "ok":
            model, data = run.load(device=device)
            if data.task != "classification":
                raise ValueError(f"calibration: run {run.run_id} is not a classification task")
            logits = predict(model, data.x[split].to(device)).cpu()
            confidence, predicted = torch.softmax(logits.double(), dim=1).max(dim=1)
            correct = predicted == data.y[split]
            row.update(
                accuracy=float(correct.double().mean()),
                ece=expected_calibration_error(confidence, correct, bins),
                confidence=float(confidence.mean()),
            )
        rows.append(row)
    return pd.DataFrame(rows)
