"""Directional losses for return forecasting: MADL and its smooth generalisation GMADL.

Outputs are forecast returns R̂ and targets the realised returns R, float tensors
of one shape; each loss is the mean over all entries.
"""

from __future__ import annotations

import torch
from torch import nn

from . import LOSSES, check_regression


def madl(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean absolute directional loss, -(1/N) sum sign(R_i R̂_i) |R_i|.

    Michańków, Sakowski, Ślepaczuk, arXiv 2309.10546. It rewards forecasting the
    sign of large returns. sign() is flat almost everywhere, so **autograd gives
    a zero gradient** with respect to the forecasts: use MADL to select models or
    hyperparameters, and GMADL (or another loss) to train.
    """
    check_regression(outputs, targets, "madl")
    return -(torch.sign(targets * outputs) * targets.abs()).mean()


@LOSSES.register("madl")
class MADL(nn.Module):
    """MADL (arXiv 2309.10546); its gradient is zero almost everywhere, see ``madl``."""

    def forward(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return madl(outputs, targets)


def gmadl(outputs: torch.Tensor, targets: torch.Tensor, a: float = 1000.0, b: float = 2.0) -> torch.Tensor:
    """Generalised MADL, -(1/N) sum (sigmoid(a R_i R̂_i) - 1/2) |R_i|^b.

    Michańków, Sakowski, Ślepaczuk, arXiv 2412.18405. ``a`` sets the slope of the
    sigmoid around 0 (a -> inf recovers MADL's sign up to a factor 1/2 when b = 1);
    ``b`` weights large returns more. It is smooth, so it can be trained on.
    The defaults a = 1000, b = 2 suit returns of order 1e-2 (choose a ~ 1 / |R R̂|).
    """
    check_regression(outputs, targets, "gmadl")
    return -((torch.sigmoid(a * targets * outputs) - 0.5) * targets.abs() ** b).mean()


@LOSSES.register("gmadl")
class GMADL(nn.Module):
    """GMADL (arXiv 2412.18405): smooth directional loss with slope ``a`` and magnitude power ``b``."""

    def __init__(self, a: float = 1000.0, b: float = 2.0):
        super().__init__()
        if not a > 0:
            raise ValueError(f"gmadl: a must be > 0, got {a}")
        if not b >= 0:
            raise ValueError(f"gmadl: b must be >= 0, got {b}")
        self.a, self.b = float(a), float(b)

    def forward(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return gmadl(outputs, targets, self.a, self.b)
