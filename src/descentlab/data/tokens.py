"""Token streams for language models, in nanoGPT's format, and the ``charlm`` dataset.

The format is what nanoGPT's ``prepare.py`` scripts write: ``train.bin`` and
``val.bin``, flat arrays of uint16 token ids (``np.memmap``), beside them a
``meta.json`` here ({"vocab_size", "chars", "dtype", "train_tokens",
"val_tokens"}; nanoGPT writes a pickle, which is never read: a user's own
directory gives ``vocab_size`` instead when it has no meta.json).

The ``charlm`` dataset cuts a token stream into windows of ``block_size + 1``
tokens: inputs are the first ``block_size``, targets the last ``block_size``
(the next token at every position). Training examples are the windows at
every start offset of the train stream, held as a strided view (no copy), so
the run's sampler draws random windows by the run's seed (epochs of
permutations of the start offsets). ``val`` is a fixed set of ``eval_windows``
windows at evenly spaced offsets of the val stream; the format has no third
split, so ``test`` holds the same windows as ``val`` (``info["test"]`` says so).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import DATASETS, SplitData
from .corpus import corpus_text

TOKEN_DTYPE = np.uint16
SPLIT_FILES = {"train": "train.bin", "val": "val.bin"}


def char_vocabulary(text: str) -> list[str]:
    """The sorted distinct characters of ``text``; a character's id is its index."""
    return sorted(set(text))


def encode_chars(text: str, chars: list[str]) -> np.ndarray:
    stoi = {c: i for i, c in enumerate(chars)}
    missing = sorted(set(text) - set(stoi))
    if missing:
        raise ValueError(f"characters not in the vocabulary: {missing[:10]}")
    return np.fromiter((stoi[c] for c in text), dtype=TOKEN_DTYPE, count=len(text))


def split_tokens(ids: np.ndarray, val_fraction: float) -> dict[str, np.ndarray]:
    """The first (1 - val_fraction) of the stream is train, the rest val (as nanoGPT)."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    cut = int(len(ids) * (1.0 - val_fraction))
    return {"train": ids[:cut], "val": ids[cut:]}


def write_token_dir(directory: str | os.PathLike, splits: dict[str, np.ndarray], vocab_size: int,
                    chars: list[str] | None = None) -> Path:
    """Write ``train.bin``, ``val.bin`` (uint16) and ``meta.json`` into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if vocab_size > np.iinfo(TOKEN_DTYPE).max + 1:
        raise ValueError(f"vocab_size {vocab_size} does not fit uint16 token ids")
    meta: dict[str, Any] = {"vocab_size": int(vocab_size), "dtype": "uint16"}
    if chars is not None:
        meta["chars"] = list(chars)
    for split, name in SPLIT_FILES.items():
        ids = np.asarray(splits[split])
        if ids.size and int(ids.max()) >= vocab_size:
            raise ValueError(f"{split}: token id {int(ids.max())} >= vocab_size {vocab_size}")
        ids.astype(TOKEN_DTYPE).tofile(directory / name)
        meta[f"{split}_tokens"] = int(ids.size)
    (directory / "meta.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n")
    return directory


def prepare_corpus(source: str, directory: str | os.PathLike, val_fraction: float = 0.1,
                   archive: str | os.PathLike | None = None) -> Path:
    """A corpus (``descentlab.data.corpus``) as a character-level token directory."""
    text = corpus_text(source, archive)
    chars = char_vocabulary(text)
    return write_token_dir(directory, split_tokens(encode_chars(text, chars), val_fraction), len(chars), chars)


def _max_token(ids: np.ndarray, chunk: int = 1 << 24) -> int:
    """The largest id, read in chunks (a memmap may be larger than memory)."""
    return max((int(ids[i : i + chunk].max()) for i in range(0, len(ids), chunk)), default=-1)


def read_token_dir(directory: str | os.PathLike, vocab_size: int | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Memmaps of ``train.bin``/``val.bin`` and the metadata, checked: the files
    exist, hold whole uint16 ids (the counts meta.json states, when it does),
    and every id is < vocab_size (from meta.json or the argument)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"token directory {directory} does not exist")
    meta_path = directory / "meta.json"
    meta: dict[str, Any] = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    if meta.get("dtype", "uint16") != "uint16":
        raise ValueError(f"{meta_path}: tokens must be uint16 (nanoGPT's format), meta.json says {meta['dtype']!r}")
    if vocab_size is None:
        if "vocab_size" not in meta:
            raise ValueError(f"{directory}: no meta.json with vocab_size; pass vocab_size")
        vocab_size = int(meta["vocab_size"])
    elif "vocab_size" in meta and int(meta["vocab_size"]) != vocab_size:
        raise ValueError(f"{directory}: vocab_size {vocab_size} given but meta.json says {meta['vocab_size']}")
    itemsize = np.dtype(TOKEN_DTYPE).itemsize
    splits = {}
    for split, name in SPLIT_FILES.items():
        path = directory / name
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist (a token directory holds {' and '.join(SPLIT_FILES.values())})")
        size = path.stat().st_size
        if size % itemsize:
            raise ValueError(f"{path}: {size} bytes is not a whole number of uint16 tokens")
        expected = meta.get(f"{split}_tokens")
        if expected is not None and size != int(expected) * itemsize:
            raise ValueError(
                f"{path}: {size} bytes, but meta.json says {expected} uint16 tokens ({int(expected) * itemsize} bytes); "
                "written with another dtype?"
            )
        ids = np.memmap(path, dtype=TOKEN_DTYPE, mode="r") if size else np.zeros(0, TOKEN_DTYPE)
        top = _max_token(ids)
        if top >= vocab_size:
            raise ValueError(f"{path}: token id {top} >= vocab_size {vocab_size}")
        splits[split] = ids
    return splits, {**meta, "vocab_size": vocab_size}


def windows(ids: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All (input, target) windows of a stream: views of shape (n - block_size, block_size)."""
    if len(ids) < block_size + 1:
        raise ValueError(f"a stream of {len(ids)} tokens is shorter than one window of block_size + 1 = {block_size + 1}")
    return ids[:-1].unfold(0, block_size, 1), ids[1:].unfold(0, block_size, 1)


def fixed_windows(ids: torch.Tensor, block_size: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` windows at evenly spaced start offsets (fixed: no randomness)."""
    if count < 1:
        raise ValueError(f"eval_windows must be >= 1, got {count}")
    x, y = windows(ids, block_size)
    starts = torch.from_numpy(np.linspace(0, len(x) - 1, num=min(count, len(x))).round().astype(np.int64))
    return x[starts].clone(), y[starts].clone()


@DATASETS.register("charlm")
def charlm(
    source: str = "shakespeare",
    block_size: int = 64,
    val_fraction: float = 0.1,
    path: str | None = None,
    vocab_size: int | None = None,
    archive: str | None = None,
    eval_windows: int = 256,
) -> SplitData:
    """Next-token windows of a token stream (see the module docstring).

    ``source``: ``shakespeare`` | ``milton`` (``descentlab.data.corpus``,
    character-level, split by ``val_fraction``) or ``path``: a directory in
    nanoGPT's format (``path=``; its own train/val split, so ``val_fraction``
    is not used; ``vocab_size`` when it has no meta.json). ``archive``: the
    shakespeare 0.6 source archive the milton corpus is read from.
    """
    if block_size < 1:
        raise ValueError(f"charlm: block_size must be >= 1, got {block_size}")
    if source == "path":
        if path is None:
            raise ValueError("charlm: source 'path' needs path= (a directory with train.bin and val.bin)")
        streams, meta = read_token_dir(path, vocab_size)
        info: dict[str, Any] = {"source": f"path:{path}"}
    elif source in ("shakespeare", "milton"):
        if path is not None or vocab_size is not None:
            raise ValueError(f"charlm: path and vocab_size go with source 'path', not {source!r}")
        text = corpus_text(source, archive)
        chars = char_vocabulary(text)
        streams = split_tokens(encode_chars(text, chars), val_fraction)
        meta = {"vocab_size": len(chars), "chars": chars}
        info = {"source": source, "val_fraction": val_fraction}
    else:
        raise ValueError(f"charlm: source must be shakespeare, milton or path, got {source!r}")
    # int64 ids: what embeddings and the losses index with; the train windows stay one view.
    train = torch.from_numpy(np.asarray(streams["train"], dtype=np.int64))
    val = torch.from_numpy(np.asarray(streams["val"], dtype=np.int64))
    x_train, y_train = windows(train, block_size)
    x_val, y_val = fixed_windows(val, block_size, eval_windows)
    info.update({
        "targets": "tokens",  # targets (N, block_size): the loss flattens over tokens
        "vocab_size": meta["vocab_size"],
        "chars": meta.get("chars"),
        "train_tokens": len(train),
        "val_tokens": len(val),
        "test": "the val windows (the format has a train/val split only)",
    })
    return SplitData(
        x={"train": x_train, "val": x_val, "test": x_val},
        y={"train": y_train, "val": y_val, "test": y_val},
        task="classification",
        num_outputs=int(meta["vocab_size"]),
        input_shape=(block_size,),
        info=info,
    )
