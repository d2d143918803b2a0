"""descentlab: optimizers, losses, training, averaging, curvature and scaling
analyses for the science of deep-learning training.

Importing the package is cheap; the registries live in their subpackages:
``descentlab.optim.OPTIMIZERS``, ``descentlab.losses.LOSSES``,
``descentlab.schedules.SCHEDULES``, ``descentlab.models.MODELS``,
``descentlab.data.DATASETS``.
"""

__version__ = "0.1.0"
