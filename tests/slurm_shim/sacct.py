"""Fake ``sacct`` for tests: every job ``sbatch.py`` recorded, as ``jobid|STATE``."""

import os
from pathlib import Path

for path in sorted(Path(os.environ["FAKE_SLURM_DIR"]).glob("*.state")):
    print(f"{path.stem}|{path.read_text()}")
