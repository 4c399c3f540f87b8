"""Corpus -> tokenizer -> token files: the `pretokenize` stage as one function."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tinystories.data.corpus import CorpusStats, read_stories
from tinystories.data.pretokenize import TokenFileInfo, pretokenize
from tinystories.data.tokenizer import Tokenizer, top_k_tokenizer, train_bpe
from tinystories.utils import write_json


@dataclass
class PrepareConfig:
    train: list[str] = field(default_factory=lambda: ["bundled:train"])
    valid: list[str] = field(default_factory=lambda: ["bundled:valid"])
    out_dir: str = "data/tokens"
    tokenizer: str = ""  # an existing tokenizer.json; empty = train a new BPE on `train`
    vocab_size: int = 4096
    gpt_neo_tokenizer: str = ""  # a local GPT-Neo tokenizer.json: keep its top `vocab_size` tokens (the paper)
    text_field: str = "text"
    split: str = "train"


def prepare(cfg: PrepareConfig, progress: bool = True) -> dict[str, TokenFileInfo]:
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    valid_stats = CorpusStats()  # stays empty when there is no validation corpus
    train, train_stats = read_stories(cfg.train, cfg.split, cfg.text_field)
    if progress:
        print(f"train corpus: {train_stats.summary()}")
    if cfg.tokenizer:
        tokenizer = Tokenizer.from_file(cfg.tokenizer)
    elif cfg.gpt_neo_tokenizer:
        tokenizer = top_k_tokenizer(Tokenizer.from_file(cfg.gpt_neo_tokenizer), train, cfg.vocab_size)
    else:
        tokenizer = train_bpe(train, cfg.vocab_size)
    tokenizer.save(out / "tokenizer.json")
    infos = {"train": pretokenize(train, tokenizer, out / "train.bin", progress=progress)}
    if cfg.valid:
        valid, valid_stats = read_stories(cfg.valid, "validation", cfg.text_field)
        if progress:
            print(f"valid corpus: {valid_stats.summary()}")
        infos["valid"] = pretokenize(valid, tokenizer, out / "valid.bin", progress=progress)
    write_json(out / "prepare.json", {
        "config": cfg.__dict__,
        "corpus": {"train": train_stats.__dict__, "valid": valid_stats.__dict__},
        "tokenizer": {"vocab_size": tokenizer.vocab_size, "fingerprint": tokenizer.fingerprint},
    })
    return infos
