"""Generated blocks of the README: text between `<!-- NAME:begin -->` and `<!-- NAME:end -->`."""

from __future__ import annotations


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


def replace_block(readme_text: str, name: str, content: str) -> str:
    """The README with the text of block `name` replaced by `content`."""
    begin, end = markers(name)
    start, stop = readme_text.find(begin), readme_text.find(end)
    if start < 0 or stop < start:
        raise ValueError(f"the README has no {begin} ... {end} block")
    return readme_text[: start + len(begin)] + "\n" + content.rstrip("\n") + "\n" + readme_text[stop:]
