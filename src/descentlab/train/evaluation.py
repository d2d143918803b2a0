"""Whole-split evaluation (loss and, for classification, accuracy)."""

from __future__ import annotations

import torch


@torch.no_grad()
def evaluate(model: torch.nn.Module, loss_fn, x: torch.Tensor, y: torch.Tensor, task: str, chunk: int = 4096) -> dict[str, float]:
    """Mean loss (chunks weighted by size) and, for classification, accuracy
    (over all targets: one per example, or one per token for sequences)."""
    was_training = model.training
    model.eval()
    total_loss, correct, n, n_targets = 0.0, 0, x.shape[0], 0
    try:
        for start in range(0, n, chunk):
            xc, yc = x[start : start + chunk], y[start : start + chunk]
            out = model(xc)
            total_loss += float(loss_fn(out, yc)) * xc.shape[0]
            if task == "classification":
                correct += int((out.argmax(dim=-1) == yc).sum())
                n_targets += yc.numel()
    finally:
        model.train(was_training)
    metrics = {"loss": total_loss / n}
    if task == "classification":
        metrics["accuracy"] = correct / n_targets
    return metrics
