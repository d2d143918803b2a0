"""Writing a benchmark's results table: one place for the file and the echo."""

from __future__ import annotations

from pathlib import Path


def publish(lines: list[str], out: Path) -> None:
    """Write ``lines`` (markdown) to ``out``, creating its folder, and print them."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    print("\n".join(lines))
