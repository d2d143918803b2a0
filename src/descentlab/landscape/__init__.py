"""Loss landscapes: filter-normalised directions, 1-D/2-D grids, interpolation
barriers, and random-subspace training for intrinsic dimension."""

from .directions import direction_norms, normalize_direction, random_direction
from .evaluate import evaluate, offset_params
from .grids import loss_line, loss_surface
from .interpolation import barriers, interpolate_states, interpolation_path
from .subspace import RandomSubspace, intrinsic_dimension

__all__ = [
    "random_direction", "normalize_direction", "direction_norms",
    "evaluate", "offset_params", "loss_line", "loss_surface",
    "interpolate_states", "interpolation_path", "barriers",
    "RandomSubspace", "intrinsic_dimension",
]
