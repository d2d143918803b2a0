"""A fingerprint of the library code that determines a run's numbers.

Snakemake does not track imported modules, so the workflow passes this
fingerprint to training rules as a param (a library change reruns training),
and a saved resume point is only used by the same code that wrote it.
Plots, analyses and the CLI are left out: editing them must not retrain.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
TRAINING_CODE = ("data", "losses", "models", "optim", "train", "registry.py", "schedules.py", "spec.py")


@functools.lru_cache(maxsize=None)
def training_code_fingerprint() -> str:
    digest = hashlib.sha256()
    for entry in TRAINING_CODE:
        path = _PACKAGE / entry
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        for file in files:
            digest.update(str(file.relative_to(_PACKAGE)).encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()[:16]
