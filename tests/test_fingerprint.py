"""The library fingerprints: derived from what a run imports, lazy imports included."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from descentlab import fingerprint
from descentlab.fingerprint import (
    DATA_ENTRIES,
    PACKAGE_ROOT,
    TRAINING_ENTRIES,
    data_code_fingerprint,
    import_closure,
    training_code_fingerprint,
)
from descentlab.train.instruments import INSTRUMENTS


@pytest.fixture()
def package(tmp_path):
    """A copy of the package, to edit."""
    copy = tmp_path / "descentlab"
    shutil.copytree(PACKAGE_ROOT, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def touch(path: Path) -> None:
    with open(path, "a") as fh:
        fh.write("\n# edited\n")


def module_file(obj) -> Path:
    """The file (relative to the package) that defines ``obj``'s class."""
    return Path(sys.modules[type(obj).__module__].__file__).resolve().relative_to(PACKAGE_ROOT)


def test_copy_has_the_same_fingerprints(package):
    assert training_code_fingerprint(package) == training_code_fingerprint()
    assert data_code_fingerprint(package) == data_code_fingerprint()


def test_lazily_imported_training_code_changes_the_fingerprint(package):
    """curvature (the top_eigenvalue instrument, imported inside its builder)
    and landscape/subspace.py (intrinsic-dimension runs, imported inside
    build_run_model) were missing from the hand-kept list."""
    instrument_file = module_file(INSTRUMENTS.build({"name": "top_eigenvalue"}))
    assert instrument_file.parts[0] == "curvature"  # the lazily imported module, not train/
    before = training_code_fingerprint(package)
    touch(package / instrument_file)
    after_instrument = training_code_fingerprint(package)
    assert after_instrument != before
    touch(package / "landscape" / "subspace.py")
    assert training_code_fingerprint(package) != after_instrument


@pytest.mark.parametrize("edited", ["plots/curves.py", "plots/__init__.py", "analyses/curvature.py", "cli.py", "studies.py",
                                    "averaging/barriers.py", "averaging/task_vectors.py", "scaling/chinchilla.py"])
def test_plots_analyses_and_cli_do_not_retrain(package, edited):
    before = training_code_fingerprint(package)
    touch(package / edited)
    assert training_code_fingerprint(package) == before


def test_in_training_averagers_retrain_and_the_merge_code_does_not(package):
    before = training_code_fingerprint(package)
    touch(package / "averaging" / "__init__.py")  # the merge library
    assert training_code_fingerprint(package) == before
    touch(package / "train" / "averagers" / "averagers.py")
    assert training_code_fingerprint(package) != before


def test_every_registered_optimizer_module_is_covered(package):
    """optim/__init__ imports its modules by computed name (pkgutil): all count,
    including one added later."""
    closure = {p.as_posix() for p in import_closure(TRAINING_ENTRIES, package)}
    modules = {f"optim/{p.name}" for p in (package / "optim").glob("*.py")}
    assert modules <= closure
    (package / "optim" / "new_method.py").write_text("X = 1\n")
    assert "optim/new_method.py" in {p.as_posix() for p in import_closure(TRAINING_ENTRIES, package)}


def test_data_fingerprint_follows_data_code_only(package):
    data_before, train_before = data_code_fingerprint(package), training_code_fingerprint(package)
    touch(package / "optim" / "lion.py")
    assert data_code_fingerprint(package) == data_before
    assert training_code_fingerprint(package) != train_before
    touch(package / "data" / "__init__.py")
    assert data_code_fingerprint(package) != data_before
    touch(package / "registry.py")  # the data registry's base class
    assert "registry.py" in {p.as_posix() for p in import_closure(DATA_ENTRIES, package)}


def test_import_rules_on_a_small_package(tmp_path):
    """Each way of importing: absolute, relative (one and two levels), inside a
    function, `from pkg import submodule`, parent __init__s, and pkgutil."""
    root = tmp_path / "mypkg"
    files = {
        "__init__.py": "",
        "entry.py": "from .a import f\nimport mypkg.b\n\ndef g():\n    from .sub import inner\n",
        "a.py": "import os\n",
        "b.py": "from mypkg import c\n",
        "c.py": "",
        "sub/__init__.py": "",
        "sub/inner.py": "from ..d import x\n",
        "d.py": "",
        "reg/__init__.py": "import importlib, pkgutil\nfor m in pkgutil.iter_modules(__path__):\n    importlib.import_module(f'{__name__}.{m.name}')\n",
        "reg/one.py": "",
        "reg/two.py": "",
        "uses_reg.py": "from .reg import one\n",
        "dyn/__init__.py": "",
        "dyn/loader.py": "import importlib\n\ndef load():\n    return importlib.import_module('.impl', __package__)\n",
        "dyn/impl.py": "",
        "unused.py": "import mypkg.entry\n",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    closure = {p.as_posix() for p in import_closure(("mypkg.entry",), root)}
    assert closure == {"__init__.py", "entry.py", "a.py", "b.py", "c.py", "sub/__init__.py", "sub/inner.py", "d.py"}
    closure = {p.as_posix() for p in import_closure(("mypkg.uses_reg",), root)}
    assert closure == {"__init__.py", "uses_reg.py", "reg/__init__.py", "reg/one.py", "reg/two.py"}
    closure = {p.as_posix() for p in import_closure(("mypkg.dyn.loader",), root)}
    assert closure == {"__init__.py", "dyn/__init__.py", "dyn/loader.py", "dyn/impl.py"}  # relative import_module
    with pytest.raises(ValueError, match="not a module"):
        import_closure(("mypkg.missing",), root)


RUN = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from descentlab.data import DATASETS
    from descentlab.train import train_run
    spec = {
        "dataset": {"name": "gaussian_mixture", "n_samples": 200, "dim": 4, "n_classes": 3},
        "model": {"name": "mlp", "width": 8, "depth": 2},
        "optimizer": {"name": "sam", "lr": 0.05},
        "steps": 4, "log_every": 2, "eval_every": 2, "batch_size": 16,
        "instruments": [{"name": "top_eigenvalue", "every": 2, "n_examples": 32}],
        "subspace": {"dim": 5, "seed": 0},
    }
    train_run(spec, DATASETS.build(spec["dataset"]), sys.argv[1], progress=False)
    root = Path(sys.modules["descentlab"].__file__).parent
    print(json.dumps(sorted(str(Path(m.__file__).relative_to(root)) for n, m in list(sys.modules.items())
                            if n.startswith("descentlab") and getattr(m, "__file__", None))))
    """
)


def test_closure_covers_every_module_a_run_imports(tmp_path):
    """Independent check: the modules a real run (curvature instrument,
    subspace, a wrapper optimizer) has loaded are all in the static closure."""
    out = subprocess.run(
        [sys.executable, "-c", RUN, str(tmp_path / "run")], capture_output=True, text=True, check=True,
        env=dict(os.environ, PYTHONPATH=str(PACKAGE_ROOT.parent), OMP_NUM_THREADS="1"),
    )
    loaded = set(json.loads(out.stdout.strip().splitlines()[-1]))
    assert {"curvature/instruments.py", "landscape/subspace.py"} <= loaded  # the run did use them
    closure = {str(p) for p in import_closure(TRAINING_ENTRIES)}
    assert loaded - closure == set()


def test_fingerprint_is_cached_for_the_installed_package():
    fingerprint._installed_fingerprint.cache_clear()
    training_code_fingerprint()
    training_code_fingerprint()
    info = fingerprint._installed_fingerprint.cache_info()
    assert (info.hits, info.misses) == (1, 1)
