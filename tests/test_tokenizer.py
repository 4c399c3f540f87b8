from pathlib import Path

import numpy as np
import pytest

from tinystories.data.pretokenize import load_tokens, pretokenize
from tinystories.errors import TinyStoriesError
from tinystories.tokenizer import Tokenizer, top_k_tokenizer, train_bpe


def test_bpe_round_trips_real_stories_exactly(stories: list[str], valid_stories: list[str],
                                              tokenizer: Tokenizer) -> None:
    for text in stories + valid_stories:
        assert tokenizer.decode(tokenizer.encode(text)) == text
    odd = "Ünïcödé — “quotes”, emoji 🐉, tabs\tand  spaces\n\nnew lines"
    assert tokenizer.decode(tokenizer.encode(odd)) == odd
    assert tokenizer.eos_id == 0 and tokenizer.vocab_size == 512


def test_save_load_keeps_ids_and_fingerprint(tmp_path: Path, tokenizer: Tokenizer, stories: list[str]) -> None:
    tokenizer.save(tmp_path / "tokenizer.json")
    again = Tokenizer.from_file(tmp_path)
    assert again.fingerprint == tokenizer.fingerprint
    assert again.encode(stories[3]) == tokenizer.encode(stories[3])
    other = train_bpe(stories[:200], vocab_size=300)
    assert other.fingerprint != tokenizer.fingerprint


def test_top_k_cut_of_a_larger_tokenizer(stories: list[str]) -> None:
    big = train_bpe(stories, vocab_size=2000)  # stands in for GPT-Neo's 50K tokenizer
    small = top_k_tokenizer(big, stories, k=1200)
    assert 1200 <= small.vocab_size <= 1220
    assert small.eos_id == 0
    for text in stories[:300]:
        assert small.decode(small.encode(text)) == text
    # Frequent words stay single tokens; the cut only lengthens the encoding a little.
    assert len(small.encode(" the")) == 1
    big_len = sum(len(big.encode(s)) for s in stories[:300])
    small_len = sum(len(small.encode(s)) for s in stories[:300])
    assert big_len < small_len < 1.2 * big_len


def test_pretokenize_writes_stories_and_eos(tmp_path: Path, tokenizer: Tokenizer, stories: list[str]) -> None:
    info = pretokenize(stories[:50], tokenizer, tmp_path / "train.bin", batch_size=16, progress=False)
    tokens, loaded = load_tokens(tmp_path / "train.bin", tokenizer)
    expected = [t for s in stories[:50] for t in (*tokenizer.encode(s), tokenizer.eos_id)]
    assert tokens.dtype == np.uint16 and tokens.tolist() == expected
    assert loaded == info and info.stories == 50
    assert info.bytes == sum(len(s.encode()) + 1 for s in stories[:50])


def test_token_file_errors(tmp_path: Path, tokenizer: Tokenizer, stories: list[str]) -> None:
    pretokenize(stories[:5], tokenizer, tmp_path / "train.bin", progress=False)
    other = train_bpe(stories[:100], vocab_size=300)
    with pytest.raises(TinyStoriesError, match="different tokenizer"):
        load_tokens(tmp_path / "train.bin", other)
    with (tmp_path / "train.bin").open("ab") as f:
        f.write(b"\0\0")
    with pytest.raises(TinyStoriesError, match="truncated or stale"):
        load_tokens(tmp_path / "train.bin")
    with pytest.raises(TinyStoriesError, match="not found"):
        load_tokens(tmp_path / "valid.bin")


def test_bad_tokenizer_file(tmp_path: Path) -> None:
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(TinyStoriesError, match="not a valid tokenizer.json"):
        Tokenizer.from_file(tmp_path / "tokenizer.json")
