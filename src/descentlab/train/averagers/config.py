"""The run spec's ``averaging`` list: defaults, canonical form and checks.

Torch-free (``descentlab.spec`` imports it at parse time). Each entry is
``{kind: <kind>, ...}``; ``name`` (default: the kind) labels its metrics
(``loss@<name>``) and its final file (``final.<name>.pt``), so two averagers
of one kind need distinct names.
"""

from __future__ import annotations

import math
import re
from typing import Any

REQUIRED = object()  # a key the entry must give

# kind -> its keys and their defaults (``name`` defaults to the kind).
KINDS: dict[str, dict[str, Any]] = {
    # start: first step averaged; every: steps between averaged models (cyclic: the
    # cycle length); lr: the SWA learning rate from ``start`` on (null: the run's
    # schedule continues); cyclic: lr_max -> lr linearly within each cycle;
    # constant: SWALR anneals to lr over anneal_steps (cos or linear).
    "swa": {"start": REQUIRED, "every": 1, "lr": None, "schedule": "constant", "lr_max": None,
            "anneal_steps": 0, "anneal": "cos"},
    # decay rho at reference_batch; at batch B the decay used is rho^(B / reference_batch).
    "ema": {"decay": 0.999, "scale_with_batch": None},
    "switch_ema": {"decay": 0.999, "scale_with_batch": None},
    # mean of the latest k models taken at steps every, 2*every, ...
    "lawa": {"k": 5, "every": REQUIRED},
    # two (or more) power-function EMA profiles; snapshots of all at multiples of snapshot_every.
    "posthoc_ema": {"sigma_rels": [0.05, 0.10], "snapshot_every": REQUIRED},
}
SWA_SCHEDULES = ("constant", "cyclic")
SWA_ANNEAL = ("cos", "linear")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.-]+$")


def canonical_averaging(entries: Any) -> Any:
    """Defaults filled into every entry of a known kind (so ``{kind: ema}`` and
    ``{kind: ema, decay: 0.999}`` name the same run); anything else is returned
    as it is, for ``check_averaging`` to reject."""
    if not isinstance(entries, list):
        return entries
    out = []
    for entry in entries:
        if isinstance(entry, dict) and entry.get("kind") in KINDS:
            defaults = {k: v for k, v in KINDS[entry["kind"]].items() if v is not REQUIRED}
            entry = {"name": entry["kind"], **defaults, **entry}
        out.append(entry)
    return out


def final_file(name: str) -> str:
    """The file (next to ``final.pt``) holding averager ``name``'s final weights."""
    return f"final.{name}.pt"


def final_files(spec: dict[str, Any]) -> list[str]:
    """The averagers' final files of a canonical run spec."""
    return [final_file(entry["name"]) for entry in spec.get("averaging", [])]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_averaging(entries: Any, steps: int, batch_size: int) -> None:
    """Raise ``ValueError`` naming the entry, key and value of the first bad setting."""
    if not isinstance(entries, list):
        raise ValueError(f"averaging must be a list of {{kind: ...}} entries, got {entries!r}")
    names: dict[str, int] = {}
    for i, entry in enumerate(entries):
        where = f"averaging[{i}]"
        if not isinstance(entry, dict) or "kind" not in entry:
            raise ValueError(f"{where}: each entry is a mapping with a 'kind' ({', '.join(KINDS)}), got {entry!r}")
        kind = entry["kind"]
        if kind not in KINDS:
            raise ValueError(f"{where}: kind = {kind!r} is unknown; kinds: {', '.join(KINDS)}")
        where = f"averaging[{i}] ({kind})"
        allowed = {"kind", "name", *KINDS[kind]}
        unknown = sorted(set(entry) - allowed)
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; {kind} takes: {', '.join(sorted(allowed))}")
        missing = [k for k, v in KINDS[kind].items() if v is REQUIRED and k not in entry]
        if missing:
            raise ValueError(f"{where}: missing required key(s) {missing}")
        name = entry.get("name", kind)
        if not isinstance(name, str) or not NAME_PATTERN.match(name):
            raise ValueError(f"{where}: name = {name!r} must be letters, digits, '_', '.' or '-'")
        if name in names:
            raise ValueError(f"{where}: name = {name!r} is also averaging[{names[name]}]'s; give each a distinct name")
        names[name] = i
        _CHECKS[kind]({**KINDS[kind], **entry}, where, steps, batch_size)


def _positive_int(entry: dict[str, Any], key: str, where: str) -> None:
    if not _is_int(entry[key]) or entry[key] < 1:
        raise ValueError(f"{where}: {key} = {entry[key]!r} must be a positive integer")


def _check_swa(entry: dict[str, Any], where: str, steps: int, batch_size: int) -> None:
    start = entry["start"]
    if not _is_int(start) or not 0 <= start <= steps:
        raise ValueError(f"{where}: start = {start!r} must be an integer step in [0, steps={steps}]")
    _positive_int(entry, "every", where)
    if entry["schedule"] not in SWA_SCHEDULES:
        raise ValueError(f"{where}: schedule = {entry['schedule']!r} must be one of {', '.join(SWA_SCHEDULES)}")
    for key in ("lr", "lr_max"):
        if entry[key] is not None and (not _is_number(entry[key]) or entry[key] <= 0):
            raise ValueError(f"{where}: {key} = {entry[key]!r} must be a positive number (or null)")
    if entry["schedule"] == "cyclic":
        if entry["lr"] is None or entry["lr_max"] is None:
            raise ValueError(f"{where}: schedule = 'cyclic' needs lr (the cycle's last, lowest lr) and lr_max (its first)")
        if entry["lr_max"] < entry["lr"]:
            raise ValueError(f"{where}: lr_max = {entry['lr_max']!r} must be >= lr = {entry['lr']!r}")
    elif entry["lr_max"] is not None:
        raise ValueError(f"{where}: lr_max = {entry['lr_max']!r} is for schedule 'cyclic' only")
    if not _is_int(entry["anneal_steps"]) or entry["anneal_steps"] < 0:
        raise ValueError(f"{where}: anneal_steps = {entry['anneal_steps']!r} must be a non-negative integer")
    if entry["anneal"] not in SWA_ANNEAL:
        raise ValueError(f"{where}: anneal = {entry['anneal']!r} must be one of {', '.join(SWA_ANNEAL)}")
    if entry["lr"] is None and (entry["anneal_steps"] or entry["anneal"] != "cos"):
        raise ValueError(f"{where}: anneal_steps/anneal shape the SWA lr; give lr, or leave them out")


def _check_ema(entry: dict[str, Any], where: str, steps: int, batch_size: int) -> None:
    decay = entry["decay"]
    if not _is_number(decay) or not 0 < decay < 1:
        raise ValueError(f"{where}: decay = {decay!r} must be a number in (0, 1)")
    scaling = entry["scale_with_batch"]
    if scaling is None:
        return
    if not isinstance(scaling, dict) or set(scaling) != {"reference_batch"}:
        raise ValueError(f"{where}: scale_with_batch = {scaling!r} must be null or {{reference_batch: <batch size>}}")
    if not _is_int(scaling["reference_batch"]) or scaling["reference_batch"] < 1:
        raise ValueError(f"{where}: scale_with_batch.reference_batch = {scaling['reference_batch']!r} must be a positive integer")


def _check_lawa(entry: dict[str, Any], where: str, steps: int, batch_size: int) -> None:
    _positive_int(entry, "k", where)
    _positive_int(entry, "every", where)
    if entry["every"] > steps:
        raise ValueError(f"{where}: every = {entry['every']!r} exceeds steps={steps}: no model would be taken")


def _check_posthoc(entry: dict[str, Any], where: str, steps: int, batch_size: int) -> None:
    from .power_ema import sigma_rel_to_gamma  # numpy only

    sigmas = entry["sigma_rels"]
    if not isinstance(sigmas, list) or not sigmas or len(set(map(repr, sigmas))) != len(sigmas):
        raise ValueError(f"{where}: sigma_rels = {sigmas!r} must be a non-empty list of distinct numbers")
    for sigma in sigmas:
        if not _is_number(sigma):
            raise ValueError(f"{where}: sigma_rels holds {sigma!r}, not a number")
        try:
            sigma_rel_to_gamma(sigma)
        except ValueError as err:
            raise ValueError(f"{where}: sigma_rels holds {sigma!r}: {err}") from None
    _positive_int(entry, "snapshot_every", where)


_CHECKS = {"swa": _check_swa, "ema": _check_ema, "switch_ema": _check_ema, "lawa": _check_lawa, "posthoc_ema": _check_posthoc}


def scaled_decay(decay: float, scale_with_batch: dict[str, int] | None, batch_size: int) -> float:
    """The EMA scaling rule (Busbridge et al. 2023): a batch kappa times the
    reference batch takes rho^kappa, so one step at kappa*B decays as kappa steps at B."""
    if scale_with_batch is None:
        return decay
    return decay ** (batch_size / scale_with_batch["reference_batch"])
