"""Byte-level BPE tokenizers, trained here or cut down from GPT-Neo's (the paper's choice).

Shared by every stage. Tokenizers are stored in Hugging Face's standard ``tokenizer.json``
form, so ``tokenizers.Tokenizer.from_file`` and ``transformers`` read them as they are.
Byte-level BPE round-trips any text exactly, which the tests check on real stories.

A story starts after ``<|endoftext|>`` and ends with it: that is how stories are packed for
training, so it is how every stage must present a story (or a story's beginning) to a
model. `Tokenizer.encode_story` is the one place that says so.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from tinystories.errors import TinyStoriesError
from tinystories.utils import atomic_write

EOS_TEXT = "<|endoftext|>"  # separates stories; a model reads it as "a new story starts here"


class Tokenizer:
    """A thin wrapper over `tokenizers.Tokenizer` with the end-of-story token the pipeline needs."""

    def __init__(self, hf: HFTokenizer) -> None:
        self.hf = hf
        eos = hf.token_to_id(EOS_TEXT)
        if eos is None:
            raise TinyStoriesError(f"tokenizer has no {EOS_TEXT} token, which marks the end of a story")
        self.eos_id: int = eos

    @classmethod
    def from_file(cls, path: str | Path) -> Tokenizer:
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.exists():
            raise TinyStoriesError(f"tokenizer not found: {path}")
        try:
            return cls(HFTokenizer.from_file(str(path)))
        except Exception as exc:  # tokenizers raises plain Exception on bad files
            raise TinyStoriesError(f"{path}: not a valid tokenizer.json ({exc})") from exc

    def save(self, path: str | Path) -> None:
        with atomic_write(path) as f:
            f.write(self.hf.to_str(pretty=True))

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size()

    @property
    def fingerprint(self) -> str:
        """A short hash of the vocabulary and merges: models remember the tokenizer they were trained with."""
        model = json.loads(self.hf.to_str())["model"]
        return hashlib.sha256(json.dumps(model, sort_keys=True).encode()).hexdigest()[:16]

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        # The Rust side spreads a batch over all cores; the _fast variant skips character offsets.
        encode = getattr(self.hf, "encode_batch_fast", self.hf.encode_batch)
        return [e.ids for e in encode(texts, add_special_tokens=False)]

    def encode_story(self, text: str, end: bool = False) -> list[int]:
        """A story (or its beginning) as a model sees it: EOS first; with `end`, EOS last too."""
        return [self.eos_id, *self.encode(text), *([self.eos_id] if end else [])]

    def encode_stories(self, texts: list[str], end: bool = False) -> list[list[int]]:
        """`encode_story` of many texts, encoded in parallel."""
        tail = [self.eos_id] if end else []
        return [[self.eos_id, *ids, *tail] for ids in self.encode_batch(texts)]

    def decode(self, ids: Iterable[int]) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=False)

    def token_strings(self, ids: Iterable[int]) -> list[str]:
        """Each id's own text (bytes shown as decoded text), for interpretability displays."""
        return [self.hf.decode([i]) for i in ids]


def _empty_byte_level_bpe(vocab: dict[str, int] | None = None, merges: list[tuple[str, str]] | None = None
                          ) -> HFTokenizer:
    tok = HFTokenizer(models.BPE(vocab=vocab, merges=merges) if vocab is not None else models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def train_bpe(stories: Iterable[str], vocab_size: int = 4096, min_frequency: int = 2) -> Tokenizer:
    """Train a byte-level BPE with `<|endoftext|>` as token 0."""
    if vocab_size < 257 or vocab_size > 65536:
        raise TinyStoriesError(f"vocab_size must be between 257 and 65536 (uint16 token files); got {vocab_size}")
    tok = _empty_byte_level_bpe()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[EOS_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(stories, trainer=trainer)
    return Tokenizer(tok)


def top_k_tokenizer(base: Tokenizer, stories: Iterable[str], k: int = 10_000) -> Tokenizer:
    """The paper's tokenizer: keep the `k` most frequent tokens of `base` (GPT-Neo) on a corpus.

    All 256 byte tokens and the end-of-story token are always kept, so any text still
    encodes; merges whose result was dropped are dropped too, and words they built fall
    apart into kept pieces. Ids are renumbered 0..k-1 by frequency, EOS first.
    """
    spec = json.loads(base.hf.to_str())
    model = spec["model"]
    if model.get("type") != "BPE":
        raise TinyStoriesError("top_k_tokenizer needs a BPE tokenizer such as GPT-Neo's")
    id_to_token = {i: t for t, i in model["vocab"].items()}
    counts: Counter[int] = Counter()
    for batch in _batched(stories, 1000):
        for ids in base.encode_batch(batch):
            counts.update(ids)
    parents: dict[str, tuple[str, str]] = {}
    for m in model["merges"]:
        a, b = m.split(" ") if isinstance(m, str) else m
        parents.setdefault(a + b, (a, b))
    kept: dict[str, None] = {}  # insertion-ordered set

    def keep(tok: str) -> None:
        # A token is only reachable if the pieces its merge joins are kept too.
        if tok in kept:
            return
        if tok in parents:
            for part in parents[tok]:
                keep(part)
        kept[tok] = None

    for tok in [EOS_TEXT, *pre_tokenizers.ByteLevel.alphabet()]:
        kept[tok] = None
    for i, _ in counts.most_common():
        if len(kept) >= k:
            break
        keep(id_to_token[i])
    merges = [parents[t] for t in parents if t in kept]  # merge priority order preserved
    vocab = {t: i for i, t in enumerate(kept)}
    hf = _empty_byte_level_bpe(vocab, merges)
    hf.add_special_tokens([EOS_TEXT])
    return Tokenizer(hf)


def _batched(items: Iterable[str], n: int) -> Iterable[list[str]]:
    batch: list[str] = []
    for item in items:
        batch.append(item)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch
