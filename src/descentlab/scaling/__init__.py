"""Scaling-law fitting: power laws, Chinchilla's L(N, D), Approaches 1 and 2,
bootstrap intervals, held-out validation and loss-to-loss prediction.

Every fit runs batched L-BFGS from a grid of starts with tight tolerances
(:mod:`.multistart`) and reports its convergence (:class:`Convergence`).
"""

from .approaches import ComputeOptimalFrontier, approach1_envelope, approach2_isoflop
from .bootstrap import BootstrapResult, bootstrap_chinchilla, bootstrap_power_law
from .chinchilla import (
    BESIROGLU_2024,
    HOFFMANN_2022,
    ChinchillaFit,
    compute_optimal_allocation,
    fit_chinchilla,
    replication_points,
    start_grid,
    theta_from_constants,
)
from .loss_to_loss import LossToLossFit, fit_loss_to_loss
from .multistart import Convergence, minimize_batched
from .powerlaw import PowerLawFit, fit_power_law, power_law_start_grid
from .validation import HeldOutResult, SmallLargeSplit, held_out_validation

__all__ = [
    "BESIROGLU_2024", "HOFFMANN_2022", "BootstrapResult", "ChinchillaFit", "ComputeOptimalFrontier", "Convergence",
    "HeldOutResult", "LossToLossFit", "PowerLawFit", "SmallLargeSplit", "approach1_envelope", "approach2_isoflop",
    "bootstrap_chinchilla", "bootstrap_power_law", "compute_optimal_allocation", "fit_chinchilla", "fit_loss_to_loss",
    "fit_power_law", "held_out_validation", "minimize_batched", "power_law_start_grid", "replication_points",
    "start_grid", "theta_from_constants",
]
