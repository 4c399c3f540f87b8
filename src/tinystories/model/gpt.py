"""A GPT for tiny story models, readable top to bottom.

Two architectures share this file:

* ``neo``: the paper's models (GPT-Neo style): learned absolute positions, LayerNorm,
  GELU MLP, attention scores *not* scaled by 1/sqrt(head_dim) (as GPT-Neo does), and
  optionally local attention on every second layer. Exports to ``GPTNeoForCausalLM``.
* ``modern``: rotary positions (RoPE), RMSNorm and a SwiGLU MLP, no biases, as in
  Llama / llama2.c. Exports to ``LlamaForCausalLM``.

Generation uses a key/value cache (`KVCache`). Prompts of different lengths are
left-padded; `pad` gives each row's number of padding slots, which attention masks out
and positions skip, so a padded row computes exactly what it would alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, cast

import torch
import torch.nn.functional as F
from torch import nn

from tinystories.model.losses import linear_cross_entropy


@dataclass
class GPTConfig:
    vocab_size: int = 4096
    context_length: int = 256
    n_layer: int = 4
    n_head: int = 4
    d_model: int = 128
    d_ff: int = 0  # MLP width; 0 means the architecture's default (4*d, or SwiGLU's 8/3*d)
    arch: Literal["neo", "modern"] = "neo"
    tie_embeddings: bool = True
    dropout: float = 0.0
    local_window: int = 0  # neo: window of the local-attention layers (odd layers); 0 = all global
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0

    def __post_init__(self) -> None:
        if self.d_model % self.n_head:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_head={self.n_head}")
        if self.arch == "modern" and (self.d_model // self.n_head) % 2:
            raise ValueError("modern (RoPE) models need an even head dimension")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def ffn_dim(self) -> int:
        if self.d_ff:
            return self.d_ff
        if self.arch == "neo":
            return 4 * self.d_model
        return 32 * math.ceil(8 * self.d_model / 3 / 32)  # llama2.c's rule, multiple of 32


class KVCache:
    """Preallocated keys and values of every layer for a batch being generated."""

    def __init__(self, cfg: GPTConfig, batch: int, max_len: int, device: torch.device,
                 dtype: torch.dtype, pad: torch.Tensor | None = None) -> None:
        shape = (cfg.n_layer, batch, cfg.n_head, max_len, cfg.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0  # slots filled so far (the same for every row)
        self.pad = pad

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.length + k.shape[2]
        self.k[layer, :, :, self.length:end] = k
        self.v[layer, :, :, self.length:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]


def attention_mask(start: int, q_len: int, k_len: int, pad: torch.Tensor | None,
                   window: int, device: torch.device) -> torch.Tensor | None:
    """Boolean mask [B or 1, 1, q_len, k_len] (True = may attend), or None when plain causal.

    Query t sits at slot start+t; key j may be seen if j <= slot, j is not padding, and
    (local layers) slot - j < window.
    """
    needs_window = window and start + q_len > window
    # SDPA's is_causal (start == 0) or a single query (sees every cached key) need no mask.
    if pad is None and not needs_window and (start == 0 or q_len == 1):
        return None
    q = torch.arange(start, start + q_len, device=device)[:, None]
    k = torch.arange(k_len, device=device)[None, :]
    mask = k <= q
    if needs_window:
        mask = mask & (q - k < window)
    mask = mask[None, None]
    if pad is not None:
        mask = mask & (k >= pad[:, None])[:, None, None, :]
    return mask


def additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean mask as 0 / -inf to add to the scores: SDPA's CPU kernel runs ~1.6x faster with it.

    Only for masks where every query sees some key (else its softmax is NaN).
    """
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, float("-inf"))


def rope_tables(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables [B, 1, T, head_dim] in Llama's "rotate half" layout."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=positions.device).float() / head_dim)
    angles = positions.float()[..., None] * inv_freq  # [B, T, head_dim/2]
    angles = torch.cat([angles, angles], dim=-1)[:, None]
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: GPTConfig, layer: int) -> None:
        super().__init__()
        self.cfg, self.layer = cfg, layer
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.out = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.arch == "neo")
        # GPT-Neo leaves scores unscaled; everyone else divides by sqrt(head_dim).
        self.scale = 1.0 if cfg.arch == "neo" else None
        self.window = cfg.local_window if cfg.arch == "neo" and layer % 2 == 1 else 0

    def forward(self, x: torch.Tensor, masks: dict[int, torch.Tensor | None], is_causal: bool,
                rope: tuple[torch.Tensor, torch.Tensor] | None, cache: KVCache | None) -> torch.Tensor:
        B, T, _ = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.cfg.n_head, self.cfg.head_dim).permute(2, 0, 3, 1, 4)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:
            k, v = cache.update(self.layer, k, v)
        mask = masks[self.window]
        dropout = self.cfg.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout,
                                           is_causal=is_causal and mask is None, scale=self.scale)
        return self.out(y.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.arch = cfg.arch
        if cfg.arch == "neo":
            self.fc = nn.Linear(cfg.d_model, cfg.ffn_dim)
            self.proj = nn.Linear(cfg.ffn_dim, cfg.d_model)
        else:
            self.gate = nn.Linear(cfg.d_model, cfg.ffn_dim, bias=False)
            self.up = nn.Linear(cfg.d_model, cfg.ffn_dim, bias=False)
            self.proj = nn.Linear(cfg.ffn_dim, cfg.d_model, bias=False)

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """The neuron activations (what interpretability tools look at)."""
        if self.arch == "neo":
            return F.gelu(self.fc(x), approximate="tanh")
        return F.silu(self.gate(x)) * self.up(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.hidden(x))


def make_norm(cfg: GPTConfig) -> nn.Module:
    if cfg.arch == "neo":
        return nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
    return nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig, layer: int) -> None:
        super().__init__()
        self.norm1 = make_norm(cfg)
        self.attn = Attention(cfg, layer)
        self.norm2 = make_norm(cfg)
        self.mlp = MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, masks: dict[int, torch.Tensor | None], is_causal: bool,
                rope: tuple[torch.Tensor, torch.Tensor] | None, cache: KVCache | None) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x), masks, is_causal, rope, cache))
        return x + self.drop(self.mlp(self.norm2(x)))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.context_length, cfg.d_model) if cfg.arch == "neo" else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.norm = make_norm(cfg)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        self.apply(self._init_weights)
        # GPT-2's scaled init of the layers that write into the residual stream.
        for name, p in self.named_parameters():
            if name.endswith(("attn.out.weight", "mlp.proj.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def layers(self) -> list[Block]:
        """The blocks in order, typed (iterating an `nn.ModuleList` gives plain `nn.Module`s)."""
        return [cast(Block, block) for block in self.blocks]

    def num_params(self, non_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.tok_emb.weight.numel()
            if self.pos_emb is not None:
                n -= self.pos_emb.weight.numel()
            if not self.cfg.tie_embeddings:
                n -= self.lm_head.weight.numel()
        return n

    def embed(self, idx: torch.Tensor, start: int = 0, pad: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """Token (+ learned position) embeddings of `idx` at slots start.., and RoPE tables if modern."""
        T = idx.shape[1]
        if start + T > self.cfg.context_length:
            raise ValueError(
                f"sequence of {start + T} tokens is longer than the model's context of "
                f"{self.cfg.context_length}")
        slots = torch.arange(start, start + T, device=idx.device)[None, :]
        positions = (slots - pad[:, None]).clamp(min=0) if pad is not None else slots
        x = self.tok_emb(idx)
        if self.pos_emb is not None:
            return x + self.pos_emb(positions), None
        return x, rope_tables(positions, self.cfg.head_dim, self.cfg.rope_theta)

    def hidden_states(self, idx: torch.Tensor, cache: KVCache | None = None,
                      pad: torch.Tensor | None = None) -> torch.Tensor:
        """Final-normed hidden states [B, T, d_model] for tokens `idx` [B, T]."""
        T = idx.shape[1]
        start = cache.length if cache is not None else 0
        if cache is not None:
            pad = cache.pad
        x, rope = self.embed(idx, start, pad)
        x = self.drop(x)
        k_len = start + T
        windows = {0} | {blk.attn.window for blk in self.layers()}
        masks = {w: attention_mask(start, T, k_len, pad, w, idx.device) for w in windows}
        if T == 1:  # a decode step: its one query always sees its own key, so no row is all masked
            masks = {w: m if m is None else additive(m, x.dtype) for w, m in masks.items()}
        is_causal = start == 0 and T > 1
        for block in self.blocks:
            x = block(x, masks, is_causal, rope, cache)
        if cache is not None:
            cache.length += T
        return self.norm(x)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                cache: KVCache | None = None, pad: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits [B, T, vocab] and, given `targets` [B, T] (-1 = ignore), the mean cross-entropy."""
        logits = self.lm_head(self.hidden_states(idx, cache, pad))
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1),
                               ignore_index=-1)
        return logits, loss

    def loss(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Training loss; the same number as `forward(idx, targets)[1]`, faster on the CPU.

        On the CPU the output projection and cross-entropy run fused in chunks
        (`losses.linear_cross_entropy`); on GPUs the plain path, which torch.compile fuses.
        """
        hidden = self.hidden_states(idx)
        if hidden.device.type == "cpu" and hidden.dtype == torch.float32:
            return linear_cross_entropy(hidden, self.lm_head.weight, targets)
        logits = self.lm_head(hidden)
        return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)

    def new_cache(self, batch: int, max_len: int | None = None, pad: torch.Tensor | None = None) -> KVCache:
        p = self.tok_emb.weight
        return KVCache(self.cfg, batch, max_len or self.cfg.context_length, p.device, p.dtype, pad)
