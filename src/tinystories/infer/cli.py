"""`tinystories sample`: stories from a model, streamed to the terminal."""

from __future__ import annotations

import argparse
import sys

import torch

from tinystories.infer.sampling import SamplingConfig, generate
from tinystories.model.checkpoint import load_any
from tinystories.utils import pick_device


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="write stories with a model (streams to the terminal)",
                       description="Continue story beginnings with a model folder (ours or a Hugging Face "
                                   "GPT-Neo/Llama folder). With one prompt the story streams as it is written.")
    p.add_argument("model", help="model folder (e.g. runs/demo/checkpoint)")
    p.add_argument("--prompt", action="append", default=[], help="story beginning (repeatable); default: empty")
    p.add_argument("-n", "--num", type=int, default=1, help="stories per prompt")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=run_sample)


def run_sample(args: argparse.Namespace) -> int:
    loaded = load_any(args.model, pick_device(args.device))
    tok = loaded.tokenizer
    texts = [p for p in (args.prompt or [""]) for _ in range(args.num)]
    cfg = SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                         top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    prompts = [[tok.eos_id, *tok.encode(t)] for t in texts]
    if len(texts) == 1:  # stream token by token
        sys.stdout.write(texts[0])
        printed: list[int] = []
        shown = ""

        def on_tokens(nxt: torch.Tensor, alive: torch.Tensor) -> None:
            nonlocal shown
            if bool(alive[0]):
                printed.append(int(nxt[0]))
                text = tok.decode(printed)
                if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
                    sys.stdout.write(text[len(shown):])
                    sys.stdout.flush()
                    shown = text

        generate(loaded.model, prompts, cfg, tok.eos_id, on_tokens)
        print()
        return 0
    for text, ids in zip(texts, generate(loaded.model, prompts, cfg, tok.eos_id)):
        print(text + tok.decode(ids))
        print("-" * 40)
    return 0
