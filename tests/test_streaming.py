"""The corpus stages stream: read in blocks, written as read, the tokenizer trained on a
sample; the results must equal what reading everything at once gave."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tinystories.cli import main
from tinystories.data.corpus import _read_txt, read_stories
from tinystories.data.prepare import PrepareConfig, prepare
from tinystories.errors import TinyStoriesError
from tinystories.tokenizer import EOS_TEXT, Tokenizer, train_bpe


def test_txt_read_in_small_blocks_equals_one_read(tmp_path: Path) -> None:
    stories = read_stories("bundled:valid")[0][:60]
    path = tmp_path / "s.txt"
    path.write_text(f"\n{EOS_TEXT}\n".join(stories) + f"\n{EOS_TEXT}\n", encoding="utf-8")
    whole = path.read_text(encoding="utf-8").split(EOS_TEXT)
    for block in (7, 100, 1 << 22):  # separators and characters cut across blocks
        assert list(_read_txt(path, "strict", block=block)) == whole
    # An invalid byte is still named by its offset in the file.
    data = path.read_bytes()
    at = len(data) // 2
    path.write_bytes(data[:at] + b"\xff" + data[at:])
    with pytest.raises(TinyStoriesError, match=f"invalid UTF-8 at byte {at} "):
        list(_read_txt(path, "strict", block=64))


def test_corpus_streams_to_its_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "clean.jsonl"
    assert main(["corpus", "bundled:valid", "bundled:valid", "--out", str(out)]) == 0
    stories, stats = read_stories(["bundled:valid", "bundled:valid"])
    assert [json.loads(line)["text"] for line in out.open()] == stories
    assert stats.summary() in capsys.readouterr().out


def test_tokenizer_trained_on_a_sample_encodes_the_whole_corpus(tmp_path: Path) -> None:
    stories = read_stories("bundled:valid")[0]
    cfg = PrepareConfig(train=["bundled:valid"], valid=[], out_dir=str(tmp_path), vocab_size=400,
                        tokenizer_sample_mb=0.02)  # ~25 of the 500 stories
    info = prepare(cfg, progress=False)["train"]
    assert info.stories == len(stories)
    tok = Tokenizer.from_file(tmp_path / "tokenizer.json")
    ids = np.fromfile(tmp_path / "train.bin", np.uint16)
    assert len(ids) == info.tokens
    assert tok.decode(ids.tolist()).split(EOS_TEXT)[:-1] == stories  # every story, in order, exactly
    assert tok.fingerprint != train_bpe(stories, 400).fingerprint  # it saw the sample only
    # A sample bigger than the corpus (the default, 256 MB) is the whole corpus: the tokenizer of before.
    full = PrepareConfig(train=["bundled:valid"], valid=[], out_dir=str(tmp_path / "full"), vocab_size=400)
    prepare(full, progress=False)
    assert Tokenizer.from_file(tmp_path / "full" / "tokenizer.json").fingerprint == train_bpe(stories, 400).fingerprint
