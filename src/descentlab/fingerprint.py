"""Fingerprints of the library code that determines a run's numbers (and a
prepared dataset's).

Snakemake does not track imported modules, so the workflow passes these
fingerprints to rules as params (a library change reruns training, or data
preparation), and a saved resume point is only used by the same code that
wrote it.

What is hashed is derived, not listed by hand: the static import closure of
the entry modules, read with ``ast`` (nothing is imported or run). Every
``import`` / ``from ... import`` of a descentlab module counts, wherever it
sits (inside functions too, e.g. the ``top_eigenvalue`` instrument's lazy
import of ``curvature.instruments``), relative or absolute, with the
``__init__`` of every package on the way. A package that imports modules by a
computed name (``pkgutil.iter_modules`` plus ``importlib.import_module``, as
the registries do) counts as importing all its modules. Over-inclusion only
costs a rerun; a module left out would leave stale results, so any doubt
includes. Plots, analyses and the CLI are outside the training closure:
editing them does not retrain.
"""

from __future__ import annotations

import ast
import functools
import hashlib
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent

# Where a training job's code starts: the loop and the registries it builds
# runs from (the loop imports them too; listing them keeps them in if it stops).
TRAINING_ENTRIES = (
    "descentlab.train",
    "descentlab.train.loop",
    "descentlab.train.instruments",
    "descentlab.data",
    "descentlab.models",
    "descentlab.losses",
    "descentlab.optim",
    "descentlab.schedules",
)
# Where data preparation starts (scripts/prepare_data.py calls data.build_dataset).
DATA_ENTRIES = ("descentlab.data",)

Module = tuple[str, ...]  # a module's name below the package root: () is the root


def _file(root: Path, module: Module) -> Path | None:
    """The source file of ``module``, or None when it is no module of the package."""
    path = root.joinpath(*module)
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    if module and path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    return None


def _submodules(root: Path, package: Module, recursive: bool) -> list[Module]:
    directory = root.joinpath(*package)
    found = []
    for child in sorted(directory.iterdir()):
        if child.suffix == ".py" and child.stem != "__init__":
            found.append(package + (child.stem,))
        elif (child / "__init__.py").is_file():
            found.append(package + (child.name,))
            if recursive:
                found.extend(_submodules(root, package + (child.name,), recursive))
    return found


def _own_name(dotted: str, package_name: str) -> Module | None:
    """``descentlab.a.b`` -> ("a", "b"); None for modules outside the package."""
    parts = tuple(dotted.split("."))
    return parts[1:] if parts[0] == package_name else None


def _imports(root: Path, module: Module, source: str) -> set[Module]:
    """The package modules ``source`` (the code of ``module``) may import."""
    package_name = root.name
    is_package = _file(root, module).name == "__init__.py"
    here = module if is_package else module[:-1]  # the package relative imports start from
    found: set[Module] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                own = _own_name(alias.name, package_name)
                if own is not None:
                    found.add(own)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - (node.level - 1)] if node.level - 1 <= len(here) else None
                if base is None:
                    continue  # beyond the package root: not ours
                target = base + (tuple(node.module.split(".")) if node.module else ())
            else:
                target = _own_name(node.module, package_name) if node.module else None
                if target is None:
                    continue
            found.add(target)
            for alias in node.names:  # `from pkg import submodule`
                if alias.name != "*" and _file(root, target + (alias.name,)) is not None:
                    found.add(target + (alias.name,))
        elif isinstance(node, ast.Call) and _called_name(node) in ("import_module", "__import__"):
            arg = node.args[0] if node.args else None
            name = arg.value if isinstance(arg, ast.Constant) and isinstance(arg.value, str) else None
            if name is not None and not name.startswith("."):
                own = _own_name(name, package_name)
                if own is not None:
                    found.add(own)
            else:  # a computed (or relative) name: assume any module of this package
                found.update(_submodules(root, here, recursive=True))
        elif isinstance(node, ast.Call) and _called_name(node) in ("iter_modules", "walk_packages") and is_package:
            found.update(_submodules(root, module, recursive=_called_name(node) == "walk_packages"))
    return found


def _called_name(call: ast.Call) -> str | None:
    func = call.func
    if isinstance(func, ast.Attribute):
        return func.attr
    if isinstance(func, ast.Name):
        return func.id
    return None


def _with_parents(module: Module) -> list[Module]:
    """Importing a.b.c runs the root's, a's and a.b's ``__init__`` first."""
    return [module[:i] for i in range(len(module) + 1)]


def import_closure(entries: tuple[str, ...], package_root: Path = PACKAGE_ROOT) -> list[Path]:
    """The source files (relative to ``package_root``) the ``entries`` may import, sorted."""
    root = Path(package_root)
    todo: list[Module] = []
    for entry in entries:
        own = _own_name(entry, root.name)
        if own is None or _file(root, own) is None:
            raise ValueError(f"{entry!r} is not a module of the package at {root}")
        todo.append(own)
    seen: set[Module] = set()
    while todo:
        module = todo.pop()
        for step in _with_parents(module):
            path = _file(root, step)
            if step in seen or path is None:
                continue
            seen.add(step)
            todo.extend(_imports(root, step, path.read_text()))
    return sorted(_file(root, m).relative_to(root) for m in seen)


def code_fingerprint(entries: tuple[str, ...], package_root: Path = PACKAGE_ROOT) -> str:
    """Hash of the paths and contents of the files in ``import_closure(entries)``."""
    digest = hashlib.sha256()
    for rel in import_closure(entries, package_root):
        digest.update(rel.as_posix().encode() + b"\0")
        digest.update((Path(package_root) / rel).read_bytes() + b"\0")
    return digest.hexdigest()[:16]


@functools.lru_cache(maxsize=None)
def _installed_fingerprint(entries: tuple[str, ...]) -> str:
    return code_fingerprint(entries, PACKAGE_ROOT)


def training_code_fingerprint(package_root: Path | None = None) -> str:
    """Fingerprint of the code a training job runs (``TRAINING_ENTRIES``' closure).

    For this package (no ``package_root``) it is computed once per process;
    another root (a copy, in tests) is read afresh on every call."""
    if package_root is None:
        return _installed_fingerprint(TRAINING_ENTRIES)
    return code_fingerprint(TRAINING_ENTRIES, package_root)


def data_code_fingerprint(package_root: Path | None = None) -> str:
    """Fingerprint of the code that prepares a dataset (``DATA_ENTRIES``' closure);
    cached like ``training_code_fingerprint``."""
    if package_root is None:
        return _installed_fingerprint(DATA_ENTRIES)
    return code_fingerprint(DATA_ENTRIES, package_root)
