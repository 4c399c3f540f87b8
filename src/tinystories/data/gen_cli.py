"""`tinystories generate` (synthetic stories from a teacher model) and `tinystories vocab`."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from tinystories.config import load_config
from tinystories.data.generate import GenerateConfig, generate
from tinystories.data.prompts import PromptBuilder, PromptConfig
from tinystories.data.vocabulary import load_vocabulary

# flag dest -> (config section or None, field)
GENERATE_FLAGS = {
    "base_url": ("teacher", "base_url"), "model": ("teacher", "model"), "api": ("teacher", "api"),
    "api_key_env": ("teacher", "api_key_env"), "concurrency": ("teacher", "concurrency"),
    "rpm": ("teacher", "requests_per_minute"), "tpm": ("teacher", "tokens_per_minute"),
    "timeout": ("teacher", "timeout_s"), "max_retries": ("teacher", "max_retries"),
    "price_in": ("teacher", "price_input_per_1m"), "price_out": ("teacher", "price_output_per_1m"),
    "vocabulary": ("prompts", "vocabulary"),
    "n": (None, "n"), "seed": (None, "seed"), "out": (None, "out"), "instruct": (None, "instruct"),
    "batch_api": (None, "batch_api"), "parquet": (None, "parquet"),
}


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "generate",
        help="generate synthetic children's stories with a teacher LLM (OpenAI-compatible API)",
        description=(
            "Generate TinyStories-style data with any OpenAI-compatible endpoint (OpenAI, vLLM, "
            "llama.cpp server, Ollama). Output: OUT/data/*.jsonl (a `datasets` JSON dataset "
            "with a `text` field), OUT/rejected.jsonl, OUT/manifest.json, OUT/README.md. "
            "Interrupt at any time and rerun the same command to finish the run."
        ),
        epilog="Example: tinystories generate --base-url http://localhost:8000/v1 "
               "--model Qwen/Qwen2.5-7B-Instruct --n 100000 --concurrency 256 --out runs/gen",
    )
    p.add_argument("--config", metavar="FILE", help="YAML/JSON GenerateConfig (teacher/prompts/filters sections)")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[],
                   help="override any config key, e.g. --set filters.min_words=80 (repeatable)")
    p.add_argument("--base-url", help="API root including /v1 (default https://api.openai.com/v1)")
    p.add_argument("--model", help="teacher model name")
    p.add_argument("--api", choices=["chat", "completion"], help="chat/completions or completions endpoint")
    p.add_argument("--api-key-env", metavar="VAR",
                   help="environment variable holding the API key (default OPENAI_API_KEY); "
                        "the key is never logged or written")
    p.add_argument("--n", type=int, help="number of prompts / stories to generate")
    p.add_argument("--seed", type=int, help="seed of the prompts (same seed, same prompts)")
    p.add_argument("--out", metavar="DIR", help="output folder (resumed if it exists)")
    p.add_argument("--concurrency", type=int, help="requests in flight")
    p.add_argument("--rpm", type=float, help="requests-per-minute limit (0 = none)")
    p.add_argument("--tpm", type=float, help="tokens-per-minute limit (0 = none)")
    p.add_argument("--timeout", type=float, help="seconds per request before it is retried")
    p.add_argument("--max-retries", type=int, help="retries per request (429/5xx/timeout/malformed)")
    p.add_argument("--price-in", type=float, help="USD per 1M prompt tokens, for the cost report")
    p.add_argument("--price-out", type=float, help="USD per 1M completion tokens")
    p.add_argument("--vocabulary", metavar="FILE", help="your own word lists (YAML/JSON)")
    p.add_argument("--instruct", action="store_true", default=None,
                   help="TinyStories-Instruct records (asks the teacher for a summary too)")
    p.add_argument("--batch-api", action="store_true", default=None,
                   help="use the OpenAI Batch API (/v1/files + /v1/batches): cheaper, slower")
    p.add_argument("--parquet", action="store_true", default=None, help="also write OUT/data.parquet")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("-v", "--verbose", action="store_true", help="log every retry")
    p.set_defaults(func=run_generate)

    v = subparsers.add_parser(
        "vocab", help="inspect the word lists and sample prompts of the generator",
        description="Show the vocabulary (verbs, nouns, adjectives) prompts draw from, a word's "
                    "forms, or sample prompts for a seed.",
    )
    v.add_argument("--vocabulary", metavar="FILE", help="a YAML/JSON vocabulary instead of the shipped one")
    v.add_argument("--list", metavar="CATEGORY", help="print every word of CATEGORY (e.g. verb)")
    v.add_argument("--word", help="show the category and accepted forms of WORD")
    v.add_argument("--prompts", type=int, default=0, metavar="K", help="print the first K prompts")
    v.add_argument("--seed", type=int, default=0, help="seed for --prompts")
    v.set_defaults(func=run_vocab)


def generate_config(args: argparse.Namespace) -> GenerateConfig:
    cfg = load_config(GenerateConfig, args.config, args.set)
    for dest, (section, name) in GENERATE_FLAGS.items():
        value = getattr(args, dest)
        if value is not None:
            setattr(getattr(cfg, section) if section else cfg, name, value)
    if args.no_progress:
        cfg.progress = False
    return cfg


def run_generate(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    manifest = generate(generate_config(args))
    counts, cost = manifest["counts"], manifest["usage"]["this_session"]["cost_usd"]
    print(f"{counts['accepted']} accepted, {counts['rejected']} rejected "
          f"{counts['rejected_by_reason']}, {counts['pending']} pending; this session cost ${cost:.4f}")
    if counts["pending"]:
        print(f"{counts['pending']} prompts are not done ({counts['failed_this_session']} failed this "
              "session, see manifest.json); rerun the same command to finish", file=sys.stderr)
        return 1
    return 0


def run_vocab(args: argparse.Namespace) -> int:
    vocab = load_vocabulary(args.vocabulary)
    if args.list:
        print("\n".join(vocab.words.get(args.list, [])))
    elif args.word:
        cats = [c for c, ws in vocab.words.items() if args.word in ws]
        print(f"{args.word}: {', '.join(cats) or 'not in the vocabulary'}; "
              f"accepted forms: {', '.join(sorted(vocab.surface_forms(args.word)))}")
    else:
        for cat, ws in vocab.words.items():
            print(f"{cat:10s} {len(ws):5d}  e.g. {', '.join(ws[:: max(1, len(ws) // 8)][:8])}")
        print(f"{'total':10s} {len(vocab.all_words()):5d}")
    if args.prompts:
        builder = PromptBuilder(PromptConfig(vocabulary=args.vocabulary), args.seed)
        for i in range(args.prompts):
            print(json.dumps(builder.prompt(i).to_dict(), ensure_ascii=False))
    return 0
