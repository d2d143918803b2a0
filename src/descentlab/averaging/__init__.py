"""Model merging after training: soups, Fisher, Model Stock, DiWA, task
arithmetic, TIES, DARE, gradient matching, interpolation, permutation
alignment by weight matching, and loss/error barriers along paths.

Every merge reads its inputs (weights-file paths, state dicts or modules) one
at a time; inputs must share an architecture; integer tensors are carried from
the first input (or the pretrained model), never averaged.
"""

from .barriers import barrier_table, path_table, recompute_batchnorm
from .fisher import diagonal_fisher, fisher_merge
from .gradient_matching import gradient_matching_merge
from .interpolation import interpolate, interpolate_layerwise, layer_names
from .model_stock import model_stock, stock_ratio
from .rebasin import PermutationSpec, align, aligned, apply_permutation, random_permutation, sequential_spec, weight_matching
from .soups import GreedySoup, diwa, greedy_soup, uniform_soup, weighted_average
from .states import check_same_architecture, iter_states, load_state, task_vector
from .task_vectors import dare, dare_keep_masks, dare_merge, dare_seed, task_arithmetic, ties_merge, ties_threshold

__all__ = [
    "uniform_soup", "weighted_average", "greedy_soup", "GreedySoup", "diwa",
    "diagonal_fisher", "fisher_merge", "model_stock", "stock_ratio",
    "task_arithmetic", "ties_merge", "ties_threshold", "dare", "dare_merge", "dare_seed", "dare_keep_masks",
    "gradient_matching_merge", "interpolate", "interpolate_layerwise", "layer_names",
    "PermutationSpec", "sequential_spec", "apply_permutation", "weight_matching", "align", "aligned", "random_permutation",
    "path_table", "barrier_table", "recompute_batchnorm",
    "load_state", "iter_states", "check_same_architecture", "task_vector",
]
