import os
import sys

import torch

# Shared helpers live in tests/optim/_problems.py.
sys.path.insert(0, os.path.dirname(__file__))

# These tests use tiny tensors: one intra-op thread is fastest, and on a shared
# machine OpenMP threads spinning on busy cores slowed the contract tests ~30x.
torch.set_num_threads(1)
