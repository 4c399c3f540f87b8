"""Pretokenize stories into a flat memory-mapped uint16 array, stories separated by EOS.

Layout of a token folder::

    train.bin       uint16 tokens: story, EOS, story, EOS, ...
    train.json      counts (tokens, stories, UTF-8 bytes) and the tokenizer's fingerprint
    tokenizer.json  the tokenizer the ids belong to

The byte count lets validation loss be reported in bits per byte, which compares
models with different tokenizers.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Sized
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from tinystories.config import read_structured
from tinystories.errors import TinyStoriesError
from tinystories.tokenizer import Tokenizer
from tinystories.utils import atomic_write, write_json

DTYPE = np.uint16


@dataclass
class TokenFileInfo:
    tokens: int
    stories: int
    bytes: int  # UTF-8 bytes of the stories, plus one per story for its end
    tokenizer_fingerprint: str
    vocab_size: int

    @property
    def tokens_per_byte(self) -> float:
        return self.tokens / max(self.bytes, 1)


def pretokenize(stories: Iterable[str], tokenizer: Tokenizer, out_path: str | Path,
                batch_size: int = 2048, progress: bool = True) -> TokenFileInfo:
    """Encode `stories` to `out_path` (.bin) and its .json description; returns the description.
    The stories are streamed, `batch_size` at a time."""
    if tokenizer.vocab_size > np.iinfo(DTYPE).max + 1:
        raise TinyStoriesError(f"vocabulary of {tokenizer.vocab_size} does not fit uint16 token files")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    n_tokens = n_bytes = n_stories = 0
    total = len(stories) if isinstance(stories, Sized) else None
    bar = tqdm(total=total, unit="story", desc=f"tokenizing {out_path.name}", disable=not progress)
    start = time.perf_counter()
    iterator = iter(stories)
    with atomic_write(out_path, "wb") as f:  # a crash never leaves a half-written token file
        while batch := list(itertools.islice(iterator, batch_size)):
            n_stories += len(batch)
            ids = tokenizer.encode_batch(batch)
            for seq in ids:
                seq.append(tokenizer.eos_id)
            flat = np.concatenate([np.asarray(seq, dtype=DTYPE) for seq in ids])
            f.write(flat.tobytes())
            n_tokens += len(flat)
            n_bytes += sum(len(s.encode("utf-8")) + 1 for s in batch)
            bar.update(len(batch))
            bar.set_postfix(MBps=f"{n_bytes / 1e6 / (time.perf_counter() - start + 1e-9):.1f}")
    bar.close()
    info = TokenFileInfo(n_tokens, n_stories, n_bytes, tokenizer.fingerprint, tokenizer.vocab_size)
    write_json(out_path.with_suffix(".json"), asdict(info))
    return info


def load_tokens(path: str | Path, tokenizer: Tokenizer | None = None,
                vocab_size: int | None = None) -> tuple[np.memmap, TokenFileInfo]:
    """Memory-map a token file; with `tokenizer`, check the ids were made by it; with
    `vocab_size`, check every id is below it (a scan of the file, ~1 GB/s), so a bad file fails
    here with its name, not as an index error in the middle of training."""
    path = Path(path)
    meta = path.with_suffix(".json")
    if not path.exists() or not meta.exists():
        raise TinyStoriesError(f"token file {path} (and its {meta.name}) not found: run `tinystories pretokenize`")
    try:
        info = TokenFileInfo(**read_structured(meta, "token file description"))
    except TypeError as exc:
        raise TinyStoriesError(f"{meta}: not a token file description ({exc})") from exc
    expected = info.tokens * np.dtype(DTYPE).itemsize
    if path.stat().st_size != expected:
        raise TinyStoriesError(f"{path} has {path.stat().st_size} bytes but {meta.name} says "
                               f"{info.tokens} tokens ({expected} bytes): the file is truncated or stale")
    if tokenizer is not None and tokenizer.fingerprint != info.tokenizer_fingerprint:
        raise TinyStoriesError(f"{path} was made with a different tokenizer "
                               f"({info.tokenizer_fingerprint}, this one is {tokenizer.fingerprint})")
    tokens = np.memmap(path, dtype=DTYPE, mode="r")
    if vocab_size is not None:
        for start in range(0, len(tokens), 1 << 24):
            chunk = tokens[start:start + (1 << 24)]
            if len(chunk) and int(chunk.max()) >= vocab_size:
                where = start + int(np.argmax(chunk >= vocab_size))
                raise TinyStoriesError(f"{path}: token {where} has id {int(tokens[where])}, beyond the model's "
                                       f"vocabulary of {vocab_size}: the file is corrupt or was made for another "
                                       "tokenizer; run `tinystories pretokenize` again")
    return tokens, info
