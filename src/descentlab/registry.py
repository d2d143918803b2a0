"""Name -> builder registries.

One registry per kind (datasets, models, losses, optimizers, schedules, ...).
The workflow's config schema takes its enums from these registries, so a
misspelt name fails at parse time with the list of valid names.
"""

from __future__ import annotations

import difflib
from typing import Any, Callable, Iterator


class UnknownNameError(KeyError, ValueError):
    """A name that is not in a registry; the message lists the valid names."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class Registry:
    """A mapping from names to builders (classes or functions) of one kind."""

    def __init__(self, kind: str):
        self.kind = kind
        self._builders: dict[str, Callable[..., Any]] = {}

    def register(self, name: str, builder: Callable[..., Any] | None = None):
        """Register ``builder`` under ``name``; usable as a decorator."""

        def add(obj: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._builders and self._builders[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._builders[name] = obj
            return obj

        return add(builder) if builder is not None else add

    def get(self, name: str) -> Callable[..., Any]:
        try:
            return self._builders[name]
        except KeyError:
            raise UnknownNameError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        close = difflib.get_close_matches(str(name), self.names(), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return (
            f"unknown {self.kind} {name!r}{hint}; valid {self.kind} names: "
            + ", ".join(self.names())
        )

    def build(self, spec: dict[str, Any] | str, *args: Any, **extra: Any) -> Any:
        """Build from ``{"name": ..., **kwargs}`` (or a bare name)."""
        if isinstance(spec, str):
            spec = {"name": spec}
        kwargs = {k: v for k, v in spec.items() if k != "name"}
        return self.get(spec["name"])(*args, **kwargs, **extra)

    def names(self) -> list[str]:
        return sorted(self._builders)

    def __contains__(self, name: object) -> bool:
        return name in self._builders

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._builders)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"
