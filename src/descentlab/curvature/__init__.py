"""Curvature of the loss: Hessian/GGN/Fisher operators, eigenvalues, traces,
spectral densities, per-example gradients, noise scale, sharpness, NTK, and
in-training instruments.

All operators are ``scipy.sparse.linalg.LinearOperator``s over the flattened
trainable parameters (``named_parameters()`` order) of the mean loss over a
fixed dataset; analyses never modify the model (parameters, buffers, modes,
``.grad``).
"""

from .density import SpectralDensity, lanczos_tridiagonal, spectral_density
from .eigen import EigenResult, bottom_eigenvalues, power_iteration, top_eigenvalues
from .exact import exact_hessian, exact_spectrum
from .trace_exact import ggn_trace
from .instruments import TopEigenvalue
from .noise_scale import noise_scale_from_per_example, noise_scale_hessian, noise_scale_two_batch, two_batch_estimates
from .ntk import empirical_ntk, ntk_eigenvalues
from .operators import CurvatureOperator, FisherOperator, GGNOperator, HessianOperator
from .per_example import jacobian, per_example_gradients
from .sharpness import adaptive_sharpness, hessian_sharpness
from .trace import TraceResult, hessian_trace, hutchinson, hutchpp

__all__ = [
    "CurvatureOperator", "HessianOperator", "GGNOperator", "FisherOperator",
    "EigenResult", "top_eigenvalues", "bottom_eigenvalues", "power_iteration",
    "TraceResult", "hutchinson", "hutchpp", "hessian_trace", "ggn_trace",
    "SpectralDensity", "spectral_density", "lanczos_tridiagonal",
    "exact_hessian", "exact_spectrum",
    "per_example_gradients", "jacobian", "empirical_ntk", "ntk_eigenvalues",
    "noise_scale_from_per_example", "noise_scale_two_batch", "two_batch_estimates", "noise_scale_hessian",
    "hessian_sharpness", "adaptive_sharpness", "TopEigenvalue",
]
