"""`tinystories generate` (synthetic stories from a teacher model) and `tinystories vocab`."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass

from tinystories.cli.options import add_config_flags, add_fields, build_from_args
from tinystories.config import Config, setting
from tinystories.data.generate import GenerateConfig
from tinystories.folder_lock import hold_folder

TEACHER = ["teacher.base_url", "teacher.model", "teacher.api", "teacher.api_key_env", "teacher.concurrency",
           "teacher.requests_per_minute", "teacher.tokens_per_minute", "teacher.timeout_s", "teacher.max_retries",
           "teacher.price_input_per_1m", "teacher.price_output_per_1m"]


def setup_generate(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Generate TinyStories-style data with any OpenAI-compatible endpoint (OpenAI, vLLM, llama.cpp "
        "server, Ollama). Output: OUT/data/*.jsonl (a `datasets` JSON dataset with a `text` field), "
        "OUT/rejected.jsonl, OUT/manifest.json, OUT/README.md. Interrupt at any time and rerun the same "
        "command to finish the run.\n\nExample:\n  tinystories generate --base-url http://localhost:8000/v1 "
        "--model Qwen/Qwen2.5-7B-Instruct --num-stories 100000 --concurrency 256 --out runs/gen")
    add_fields(p, GenerateConfig, ["n", "seed", "out", "instruct", "batch_api", "parquet", "progress",
                                   "prompts.vocabulary"])
    add_fields(p.add_argument_group("teacher"), GenerateConfig, TEACHER)
    p.add_argument("-v", "--verbose", action="store_true", help="log every request and retry")
    add_config_flags(p)
    p.set_defaults(func=run_generate)


def run_generate(args: argparse.Namespace) -> int:
    from tinystories.data.generate import generate

    cfg = build_from_args(GenerateConfig, args)
    with hold_folder(cfg.out):
        manifest = generate(cfg)
    counts, cost = manifest["counts"], manifest["usage"]["this_session"]["cost_usd"]
    print(f"{counts['accepted']} accepted, {counts['rejected']} rejected "
          f"{counts['rejected_by_reason']}, {counts['pending']} pending; this session cost ${cost:.4f}")
    if counts["pending"]:
        print(f"{counts['pending']} prompts are not done ({counts['failed_this_session']} failed this "
              "session, see manifest.json); rerun the same command to finish", file=sys.stderr)
        return 1
    return 0


@dataclass(frozen=True)
class VocabConfig(Config):
    vocabulary: str | None = setting(None, "a YAML/JSON vocabulary instead of the shipped one")
    list: str = setting("", "print every word of this category (e.g. verb)")
    word: str = setting("", "show the category and accepted forms of this word")
    prompts: int = setting(0, "print the first K prompts", ge=0)
    seed: int = setting(0, "seed of the prompts", ge=0)

    where = "vocab"


def setup_vocab(p: argparse.ArgumentParser) -> None:
    p.description = ("Show the vocabulary (verbs, nouns, adjectives) prompts draw from, a word's forms, or "
                     "sample prompts for a seed.\n\nExample:\n  tinystories vocab --word go --prompts 3")
    add_fields(p, VocabConfig, ["vocabulary", "list", "word", "prompts", "seed"])
    add_config_flags(p)
    p.set_defaults(func=run_vocab)


def run_vocab(args: argparse.Namespace) -> int:
    from tinystories.data.prompts import PromptBuilder, PromptConfig
    from tinystories.data.vocabulary import load_vocabulary

    cfg = build_from_args(VocabConfig, args)
    vocab = load_vocabulary(cfg.vocabulary)
    if cfg.list:
        print("\n".join(vocab.words.get(cfg.list, [])))
    elif cfg.word:
        cats = [c for c, ws in vocab.words.items() if cfg.word in ws]
        print(f"{cfg.word}: {', '.join(cats) or 'not in the vocabulary'}; "
              f"accepted forms: {', '.join(sorted(vocab.surface_forms(cfg.word)))}")
    else:
        for cat, ws in vocab.words.items():
            print(f"{cat:10s} {len(ws):5d}  e.g. {', '.join(ws[:: max(1, len(ws) // 8)][:8])}")
        print(f"{'total':10s} {len(vocab.all_words()):5d}")
    if cfg.prompts:
        builder = PromptBuilder(PromptConfig(vocabulary=cfg.vocabulary), cfg.seed)
        for i in range(cfg.prompts):
            print(json.dumps(builder.prompt(i).to_dict(), ensure_ascii=False))
    return 0


SETUP = {"generate": setup_generate, "vocab": setup_vocab}
