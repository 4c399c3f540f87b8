"""`tinystories corpus` and `tinystories pretokenize`."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass

from tinystories.cli.options import add_config_flags, add_field, add_fields, build_from_args
from tinystories.config import Config, setting
from tinystories.data.corpus import EncodingErrors
from tinystories.data.prepare import PrepareConfig
from tinystories.folder_lock import hold_folder


@dataclass(frozen=True)
class CorpusConfig(Config):
    sources: list[str] = setting(help=".txt (<|endoftext|>-separated), .jsonl/.json, parquet, a datasets "
                                      "folder, hf:NAME, bundled:train or bundled:valid", factory=list, ge=1)
    text_field: str = setting("text", "JSON field holding the story")
    split: str = setting("train", "split of a Hugging Face dataset")
    out: str = setting("", "write the clean stories here as JSONL ({\"text\": ...} per line)")
    encoding_errors: EncodingErrors = setting("strict", "invalid UTF-8 in a corpus: strict (stop, naming the file "
                                                        "and byte), replace (U+FFFD) or skip (drop the story)")

    where = "corpus"


def setup_corpus(p: argparse.ArgumentParser) -> None:
    p.description = ("Read stories, repair the dataset's cp1252 mojibake, drop empty and duplicate stories, "
                     "and report counts.\n\nExample:\n  tinystories corpus bundled:train --out clean.jsonl")
    add_field(p, CorpusConfig, "sources", positional=True, metavar="SOURCE")
    add_fields(p, CorpusConfig, ["text_field", "split", "out", "encoding_errors"])
    add_config_flags(p)
    p.set_defaults(func=run_corpus)


def run_corpus(args: argparse.Namespace) -> int:
    """Streams: each clean story goes to --out as it is read (memory does not grow with the
    corpus beyond 8 bytes a story for the duplicate check)."""
    from tinystories.data.corpus import CorpusStats, iter_stories
    from tinystories.utils import atomic_write

    cfg = build_from_args(CorpusConfig, args)
    stats = CorpusStats()
    stories = iter_stories(cfg.sources, cfg.split, cfg.text_field, errors=cfg.encoding_errors, stats=stats)
    if cfg.out:
        with atomic_write(cfg.out) as f:
            for s in stories:
                f.write(json.dumps({"text": s}) + "\n")
    else:
        for _ in stories:
            pass
    print(stats.summary())
    if cfg.out:
        print(f"wrote {cfg.out}")
    return 0


def setup_pretokenize(p: argparse.ArgumentParser) -> None:
    p.description = ("Clean the corpus, train a byte-level BPE (or load one, or cut GPT-Neo's down to its "
                     "top-K tokens as the paper did) and write OUT/train.bin, OUT/valid.bin and "
                     "OUT/tokenizer.json for `tinystories train`.\n\nExample:\n"
                     "  tinystories pretokenize --train stories.txt --valid valid.jsonl --vocab-size 4096 "
                     "--out data/tokens")
    add_field(p, PrepareConfig, "train", nargs="+", metavar="SOURCE")
    add_field(p, PrepareConfig, "valid", metavar="SOURCE")
    add_fields(p, PrepareConfig, ["out_dir", "tokenizer", "vocab_size", "gpt_neo_tokenizer", "tokenizer_sample_mb",
                                  "text_field", "split", "encoding_errors"])
    add_config_flags(p)
    p.set_defaults(func=run_pretokenize)


def run_pretokenize(args: argparse.Namespace) -> int:
    from tinystories.data.prepare import prepare

    cfg = build_from_args(PrepareConfig, args)
    with hold_folder(cfg.out_dir):
        infos = prepare(cfg)
    for split, info in infos.items():
        print(f"{split}: {info.tokens:,} tokens, {info.stories:,} stories, "
              f"{info.tokens_per_byte:.3f} tokens/byte -> {cfg.out_dir}/{split}.bin")
    return 0


SETUP = {"corpus": setup_corpus, "pretokenize": setup_pretokenize}
