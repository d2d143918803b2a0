"""Cheap checks that a finished run's artifacts are whole.

A run's ``status.json`` (written last) records the byte size of every file the
run wrote. At parse time the workflow compares them with the files on disk
(a ``stat`` per file, no reading), so a deleted or truncated artifact makes
its training job rerun, and the problem is named, instead of a later stage
failing on it or the workflow reporting nothing to do.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable


def run_damage(run_dir: str | os.PathLike, expected: Iterable[str | os.PathLike]) -> list[str]:
    """What is wrong with a finished run's files (empty: nothing).

    ``expected``: the files the run must have (paths). Sizes are checked
    against ``status.json``'s ``files`` where it records them."""
    run_dir = Path(run_dir)
    status_path = run_dir / "status.json"
    try:
        status = json.loads(status_path.read_text())
        recorded = dict(status.get("files", {}))
    except FileNotFoundError:
        return [f"{status_path} is missing"]
    except (OSError, ValueError) as err:
        return [f"{status_path} is unreadable ({err})"]
    problems = []
    for path in map(Path, expected):
        if path.name == "status.json":
            continue
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            problems.append(f"{path} is missing")
            continue
        want = recorded.get(path.relative_to(run_dir).as_posix())
        if want is not None and size != want:
            problems.append(f"{path} has {size} bytes, {want} were written")
    return problems
