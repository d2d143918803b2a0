"""A normal (non-editable) install carries what `descentlab check` reads."""

import os
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
    checkout), find every schema in it, next to the modules, and check a
    study with the package installed from it."""
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

    # Installed from the wheel (away from the checkout), `descentlab check` works.
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, text=True)
    study = REPO / "config" / "studies" / "optimizer-curves.yaml"
    code = "import sys, descentlab, descentlab.cli; print(descentlab.__file__); sys.exit(descentlab.cli.main(['check', sys.argv[1]]))"
    out = subprocess.run([sys.executable, "-c", code, str(study)], cwd=tmp_path, capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(target)))
    assert out.returncode == 0, out.stderr
    installed, verdict = out.stdout.splitlines()[:2]
    assert Path(installed).is_relative_to(target)
    assert verdict.startswith(f"{study}: ok")
