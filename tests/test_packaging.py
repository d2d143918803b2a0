"""A normal (non-editable) install carries what `descentlab check` reads."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from descentlab.studies import SCHEMA_DIR

REPO = Path(__file__).resolve().parents[1]


def test_schemas_live_in_the_package():
    assert SCHEMA_DIR.parent == REPO / "src" / "descentlab"
    assert {p.name for p in SCHEMA_DIR.glob("*.yaml")} == {"config.schema.yaml", "study.schema.yaml"}


@pytest.mark.slow
def test_wheel_ships_the_schemas(tmp_path):
    """Build the wheel from a copy of the sources (no build/ left in the
    checkout) and find every schema in it, next to the modules."""
    src = tmp_path / "checkout"
    shutil.copytree(REPO / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(src)],
        check=True, capture_output=True, text=True,
    )
    (wheel,) = wheels.glob("descentlab-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "descentlab/studies.py" in names
    for schema in SCHEMA_DIR.glob("*.yaml"):
        assert f"descentlab/schemas/{schema.name}" in names
