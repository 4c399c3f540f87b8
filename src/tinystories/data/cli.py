"""`tinystories corpus` and `tinystories pretokenize`."""

from __future__ import annotations

import argparse
import json

from tinystories.config import load_config
from tinystories.data.corpus import read_stories
from tinystories.data.prepare import PrepareConfig, prepare
from tinystories.utils import atomic_write


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("corpus", help="read a corpus, repair mojibake, report what was repaired/dropped",
                       description="Read stories (.txt with <|endoftext|>, .jsonl/.json, parquet, a datasets "
                                   "folder, hf:NAME, bundled:train, bundled:valid), repair the dataset's cp1252 "
                                   "mojibake, drop empty and duplicate stories, and report counts.")
    p.add_argument("sources", nargs="+", help="corpus files or names")
    p.add_argument("--text-field", default="text", help="JSON field holding the story (default: text)")
    p.add_argument("--split", default="train", help="split of a Hugging Face dataset")
    p.add_argument("--out", help="write the clean stories here as JSONL ({\"text\": ...} per line)")
    p.set_defaults(func=run_corpus)

    p = sub.add_parser("pretokenize", help="train (or load) a tokenizer and write uint16 token files",
                       description="Clean the corpus, train a byte-level BPE (or load one, or cut GPT-Neo's "
                                   "down to its top-K tokens as the paper did) and write OUT/train.bin, "
                                   "OUT/valid.bin and OUT/tokenizer.json for `tinystories train`.")
    p.add_argument("--config", help="YAML/JSON file with PrepareConfig fields")
    p.add_argument("--train", nargs="+", help="training corpus (default: bundled:train)")
    p.add_argument("--valid", nargs="*", help="validation corpus (default: bundled:valid; none to skip)")
    p.add_argument("--out", dest="out_dir", help="output folder (default: data/tokens)")
    p.add_argument("--tokenizer", help="use this tokenizer.json instead of training one")
    p.add_argument("--vocab-size", type=int, help="BPE vocabulary size (default: 4096)")
    p.add_argument("--gpt-neo-tokenizer", help="a local GPT-Neo tokenizer.json to keep the top --vocab-size tokens of")
    p.add_argument("--text-field", help="JSON field holding the story")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config field")
    p.set_defaults(func=run_pretokenize)


def run_corpus(args: argparse.Namespace) -> int:
    stories, stats = read_stories(args.sources, args.split, args.text_field)
    print(stats.summary())
    if args.out:
        with atomic_write(args.out) as f:
            for s in stories:
                f.write(json.dumps({"text": s}) + "\n")
        print(f"wrote {args.out}")
    return 0


def run_pretokenize(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    for name in ("train", "valid", "out_dir", "tokenizer", "vocab_size", "gpt_neo_tokenizer", "text_field"):
        value = getattr(args, name)
        if value is not None:
            overrides.append(f"{name}={json.dumps(value)}")
    cfg = load_config(PrepareConfig, args.config, overrides)
    infos = prepare(cfg)
    for split, info in infos.items():
        print(f"{split}: {info.tokens:,} tokens, {info.stories:,} stories, "
              f"{info.tokens_per_byte:.3f} tokens/byte -> {cfg.out_dir}/{split}.bin")
    return 0
