"""``StackedUpdate``: one optimizer step for many runs (filled in below)."""

from __future__ import annotations

from typing import Any


def stacked_update_key(run) -> Any:
    return None


class StackedUpdate:
    pass
