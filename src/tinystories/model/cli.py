"""`tinystories presets`: the model zoo with exact parameter counts."""

from __future__ import annotations

import argparse

from tinystories.model.presets import PRESETS, count_params


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("presets", help="list the model presets (the paper's zoo) with parameter counts",
                       description="The model shapes `tinystories train --preset NAME` accepts: the paper's "
                                   "GPT-Neo models (1M-33M, and the 1-layer 21M), modern RoPE/RMSNorm/SwiGLU "
                                   "variants, llama2.c's 15M, and the CPU demo, with exact parameter counts.")
    p.set_defaults(func=run_presets)


def preset_table() -> str:
    head = f"{'preset':<12} {'arch':<7} {'layers':>6} {'d_model':>7} {'heads':>5} {'vocab':>6} {'context':>7} " \
           f"{'params':>8} {'non-emb':>8}"
    lines = [head, "-" * len(head)]
    for name, cfg in PRESETS.items():
        total, non_emb = count_params(cfg)
        lines.append(f"{name:<12} {cfg.arch:<7} {cfg.n_layer:>6} {cfg.d_model:>7} {cfg.n_head:>5} "
                     f"{cfg.vocab_size:>6} {cfg.context_length:>7} {total / 1e6:>7.2f}M {non_emb / 1e6:>7.2f}M")
    return "\n".join(lines)


def run_presets(args: argparse.Namespace) -> int:
    print(preset_table())
    return 0
