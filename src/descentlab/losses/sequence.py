"""Losses over token sequences: any registered loss applied per token."""

from __future__ import annotations

import torch
from torch import nn


class PerTokenLoss(nn.Module):
    """``base`` over every token: logits (N, T, C) and targets (N, T) are
    flattened to (N*T, C) and (N*T,), so the mean is over all tokens (windows
    have one length, so this is also the mean over windows of their means)."""

    def __init__(self, base: nn.Module):
        super().__init__()
        self.base = base

    def forward(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if outputs.ndim != 3 or targets.shape != outputs.shape[:2]:
            raise ValueError(
                f"per-token loss: outputs must be (N, T, C) logits and targets (N, T), got "
                f"{tuple(outputs.shape)} and {tuple(targets.shape)}"
            )
        return self.base(outputs.reshape(-1, outputs.shape[-1]), targets.reshape(-1))
