"""Named model shapes: the paper's zoo (GPT-Neo and modern), llama2.c's, and the CPU demo's.

The paper's models are GPT-Neo shaped with the vocabulary cut to the 10K most common
GPT-Neo tokens; hidden sizes 64-1024 and 1-8 layers. Sizes in the names are the paper's
labels; `tinystories presets` prints the exact parameter counts.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from tinystories.errors import TinyStoriesError
from tinystories.model.config import GPTConfig

PAPER_VOCAB = 10_000
PAPER_CONTEXT = 512


def _modern(n_layer: int, n_head: int, d_model: int) -> GPTConfig:
    return GPTConfig(vocab_size=PAPER_VOCAB, context_length=PAPER_CONTEXT, n_layer=n_layer, n_head=n_head,
                     d_model=d_model, arch="modern")


PRESETS: dict[str, GPTConfig] = {
    # CPU demo: the modern block at a shape that learns the most per minute on 2 cores
    # (bench/README.md, recipe benchmark). Trains to readable stories in 3 minutes.
    "demo": GPTConfig(vocab_size=4096, context_length=256, n_layer=4, n_head=4, d_model=128, arch="modern"),
    # The paper's models (TinyStories-1M ... -33M, and the 1-layer 21M), GPT-Neo shaped as
    # released, for fidelity and `export-hf` to GPTNeoForCausalLM.
    "1M": GPTConfig(vocab_size=PAPER_VOCAB, context_length=PAPER_CONTEXT, n_layer=8, n_head=16, d_model=64),
    "3M": GPTConfig(vocab_size=PAPER_VOCAB, context_length=PAPER_CONTEXT, n_layer=8, n_head=16, d_model=128),
    "8M": GPTConfig(vocab_size=PAPER_VOCAB, context_length=PAPER_CONTEXT, n_layer=8, n_head=16, d_model=256),
    "28M": GPTConfig(vocab_size=PAPER_VOCAB, context_length=PAPER_CONTEXT, n_layer=8, n_head=16, d_model=512),
    "33M": GPTConfig(vocab_size=PAPER_VOCAB, context_length=PAPER_CONTEXT, n_layer=4, n_head=16, d_model=768),
    "21M-1L": GPTConfig(vocab_size=PAPER_VOCAB, context_length=PAPER_CONTEXT, n_layer=1, n_head=16, d_model=1024),
    # The same sizes with the modern block (RoPE, RMSNorm, SwiGLU, no biases), the recipe's
    # architecture. Heads are 32-64 wide, not the paper's 4-64: narrow heads are slow (at the
    # demo shape 8 heads of 16 train 6% slower per token than 4 of 32) and RoPE wants room to
    # rotate. Layers and width stay the paper's, so each pairs with its GPT-Neo twin.
    "1M-modern": _modern(n_layer=8, n_head=2, d_model=64),
    "3M-modern": _modern(n_layer=8, n_head=4, d_model=128),
    "8M-modern": _modern(n_layer=8, n_head=8, d_model=256),
    "28M-modern": _modern(n_layer=8, n_head=8, d_model=512),
    "33M-modern": _modern(n_layer=4, n_head=12, d_model=768),
    "21M-1L-modern": _modern(n_layer=1, n_head=16, d_model=1024),
    # llama2.c's stories15M shape.
    "15M-llama2c": GPTConfig(vocab_size=32_000, context_length=256, n_layer=6, n_head=6, d_model=288,
                             arch="modern", tie_embeddings=True),
}


def get_preset(name: str, **overrides: Any) -> GPTConfig:
    if name not in PRESETS:
        raise TinyStoriesError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
    return replace(PRESETS[name], **overrides)  # validated again on construction


def count_params(cfg: GPTConfig) -> tuple[int, int]:
    """(total, non-embedding) parameter counts of a config, without building the model."""
    from tinystories.model.checkpoint import shapes_only

    model = shapes_only(cfg)  # no memory, no init cost
    return model.num_params(), model.num_params(non_embedding=True)
