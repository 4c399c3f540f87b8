"""Corpus -> tokenizer -> token files: the `pretokenize` stage as one function."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tinystories.config import Config, setting
from tinystories.data.corpus import EncodingErrors
from tinystories.utils import write_json

if TYPE_CHECKING:
    from tinystories.data.pretokenize import TokenFileInfo

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrepareConfig(Config):
    train: list[str] = setting(help="training corpus: files, folders, hf:NAME or bundled:train",
                               factory=lambda: ["bundled:train"], ge=1)
    valid: list[str] = setting(help="validation corpus (`--valid` with no value: none, and `train` holds "
                                     "out some of the training stories instead)", factory=lambda: ["bundled:valid"])
    out_dir: str = setting("data/tokens", "output folder", flag="out")
    tokenizer: str = setting("", "use this tokenizer.json instead of training one")
    vocab_size: int = setting(4096, "BPE vocabulary size", ge=257, le=65536)
    gpt_neo_tokenizer: str = setting("", "a local GPT-Neo tokenizer.json: keep its top --vocab-size tokens "
                                         "(the paper's tokenizer)")
    tokenizer_sample_mb: float = setting(256, "train the tokenizer on the first this many MB of stories "
                                              "(all of them if the corpus is smaller); bounds memory", gt=0)
    text_field: str = setting("text", "JSON field holding the story")
    split: str = setting("train", "split of a Hugging Face dataset")
    encoding_errors: EncodingErrors = setting("strict", "invalid UTF-8 in a corpus: strict (stop, naming the file "
                                                        "and byte), replace (U+FFFD) or skip (drop the story)")

    where = "pretokenize"


def prepare(cfg: PrepareConfig, progress: bool = True) -> dict[str, TokenFileInfo]:
    """One streamed pass over the corpus: the first `tokenizer_sample_mb` MB of stories are
    held to train the tokenizer, then encoded with everything after them in batches, so
    memory is bounded by the sample, not by the corpus."""
    from tinystories.data.corpus import CorpusStats, iter_stories
    from tinystories.data.pretokenize import pretokenize
    from tinystories.tokenizer import Tokenizer, top_k_tokenizer, train_bpe

    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    valid_stats = CorpusStats()  # stays empty when there is no validation corpus
    train_stats = CorpusStats()
    train = iter_stories(cfg.train, cfg.split, cfg.text_field, errors=cfg.encoding_errors, stats=train_stats)
    sample: list[str] = []
    size, limit = 0, cfg.tokenizer_sample_mb * 1e6
    for story in train:
        sample.append(story)
        size += len(story)
        if size >= limit:
            break
    if cfg.tokenizer:
        tokenizer = Tokenizer.from_file(cfg.tokenizer)
    elif cfg.gpt_neo_tokenizer:
        tokenizer = top_k_tokenizer(Tokenizer.from_file(cfg.gpt_neo_tokenizer), sample, cfg.vocab_size)
    else:
        tokenizer = train_bpe(sample, cfg.vocab_size)
    tokenizer.save(out / "tokenizer.json")
    infos = {"train": pretokenize(itertools.chain(_drain(sample), train), tokenizer, out / "train.bin",
                                  progress=progress)}
    log.info("train corpus: %s", train_stats.summary())
    if cfg.valid:
        valid = iter_stories(cfg.valid, "validation", cfg.text_field, errors=cfg.encoding_errors, stats=valid_stats)
        infos["valid"] = pretokenize(valid, tokenizer, out / "valid.bin", progress=progress)
        log.info("valid corpus: %s", valid_stats.summary())
    else:  # a valid.bin left here by an earlier run would be taken for this corpus's validation stories
        for stale in (out / "valid.bin", out / "valid.json"):
            stale.unlink(missing_ok=True)
    write_json(out / "prepare.json", {
        "config": asdict(cfg),
        "corpus": {"train": train_stats.__dict__, "valid": valid_stats.__dict__},
        "tokenizer": {"vocab_size": tokenizer.vocab_size, "fingerprint": tokenizer.fingerprint},
    })
    return infos


def _drain(stories: list[str]) -> Iterator[str]:
    """The stories in order, each dropped from the list as it is handed out."""
    stories.reverse()
    while stories:
        yield stories.pop()
