"""Input checks shared by the fitters: each error names the argument and the bad value."""

from __future__ import annotations

import numpy as np


def as_array(name: str, values, *, positive: bool = True) -> np.ndarray:
    """``values`` as a 1-d float64 array of finite (and, by default, positive) numbers."""
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be numbers, got {values!r}") from exc
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    bad = ~np.isfinite(arr)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{name} must be finite: {name}[{i}] = {float(arr[i])!r}")
    if positive and (arr <= 0).any():
        i = int(np.flatnonzero(arr <= 0)[0])
        raise ValueError(f"{name} must be positive: {name}[{i}] = {float(arr[i])!r}")
    return arr


def same_length(**arrays: np.ndarray) -> int:
    lengths = {name: len(a) for name, a in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"mismatched lengths: {lengths}")
    return next(iter(lengths.values()))


def at_least(name: str, n: int, minimum: int, why: str) -> None:
    if n < minimum:
        raise ValueError(f"{name} has {n} points; at least {minimum} are needed ({why})")


def positive_scalar(name: str, value) -> float:
    v = float(value)
    if not np.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return v


def starts_array(starts, n_params: int, names: tuple[str, ...]) -> np.ndarray:
    arr = np.asarray(starts, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr.reshape(1, -1)
    if arr.ndim != 2 or arr.shape[1] != n_params or arr.shape[0] == 0:
        raise ValueError(f"starts must have shape (n_starts, {n_params}) for parameters {names}, got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError("starts must be finite")
    return arr
