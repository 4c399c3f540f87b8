"""The model's shape, as a typed config (kept apart from `gpt.py` so configs load without torch)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from tinystories.config import Config, setting
from tinystories.errors import TinyStoriesError


@dataclass(frozen=True)
class GPTConfig(Config):
    vocab_size: int = setting(4096, "vocabulary size (at least the tokenizer's)", ge=2, le=1_000_000)
    context_length: int = setting(256, "longest sequence, in tokens", ge=1, le=1_000_000)
    n_layer: int = setting(4, "transformer blocks", ge=1, le=1024)
    n_head: int = setting(4, "attention heads per block", ge=1, le=1024)
    d_model: int = setting(128, "width of the residual stream", ge=1, le=65536)
    d_ff: int = setting(0, "MLP width; 0 = the architecture's default (4*d, or SwiGLU's 8/3*d)", ge=0,
                        le=1_000_000)
    arch: Literal["neo", "modern"] = setting("neo", "neo: the paper's GPT-Neo shape; modern: RoPE, "
                                             "RMSNorm, SwiGLU")
    tie_embeddings: bool = setting(True, "share the input embedding and the output layer")
    dropout: float = setting(0.0, "dropout probability on the embeddings and on what each attention and MLP "
                                  "writes into the residual stream", ge=0, lt=1)
    attention_dropout: float = setting(0.0, "dropout probability on the attention pattern (costs more on a CPU: "
                                            "attention leaves its fused kernel)", ge=0, lt=1)
    local_window: int = setting(0, "neo: window of the local-attention layers (odd layers); 0 = all global",
                                ge=0)
    norm_eps: float = setting(1e-5, "epsilon of the normalisation layers", gt=0, lt=1)
    rope_theta: float = setting(10000.0, "modern: RoPE base", gt=0)
    mlp: Literal["auto", "gelu", "swiglu", "relu2"] = setting(
        "auto", "MLP activation: auto = gelu for neo, swiglu for modern; relu2 = ReLU squared (modern only)")
    qk_norm: bool = setting(False, "modern: RMS-normalise each head's queries and keys before attention")
    zero_init_proj: bool = setting(False, "start the layers that write into the residual stream at zero")

    where = "model"

    def check(self) -> None:
        if self.arch == "neo" and (self.mlp not in ("auto", "gelu") or self.qk_norm):
            raise TinyStoriesError("model: neo models are the paper's GPT-Neo (GELU MLP, no QK-norm); use "
                                   "arch=modern for mlp=swiglu/relu2 or qk_norm")
        if self.d_model % self.n_head:
            raise TinyStoriesError(f"model: d_model={self.d_model} is not divisible by n_head={self.n_head}")
        if self.arch == "modern" and (self.d_model // self.n_head) % 2:
            raise TinyStoriesError("model: modern (RoPE) models need an even head dimension "
                                   f"(d_model / n_head = {self.d_model // self.n_head})")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def activation(self) -> str:
        if self.mlp != "auto":
            return self.mlp
        return "gelu" if self.arch == "neo" else "swiglu"

    @property
    def ffn_dim(self) -> int:
        if self.d_ff:
            return self.d_ff
        if self.activation != "swiglu":
            return 4 * self.d_model
        return 32 * math.ceil(8 * self.d_model / 3 / 32)  # llama2.c's rule, multiple of 32
