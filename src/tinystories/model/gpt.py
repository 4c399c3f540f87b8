"""A GPT for tiny story models, readable top to bottom.

Two architectures share this file:

* ``neo``: the paper's models (GPT-Neo style): learned absolute positions, LayerNorm,
  GELU MLP, attention scores *not* scaled by 1/sqrt(head_dim) (as GPT-Neo does), and
  optionally local attention on every second layer. Exports to ``GPTNeoForCausalLM``.
* ``modern``: rotary positions (RoPE), RMSNorm and a SwiGLU MLP, no biases, as in
  Llama / llama2.c. Exports to ``LlamaForCausalLM``. Options for new recipes: a ReLU²
  MLP (``mlp="relu2"``), RMS-normalised queries and keys (``qk_norm``), and output
  projections that start at zero (``zero_init_proj``).

Hook points. Every activation worth looking at passes through a `HookPoint`
(`model/hook_points.py`, as in TransformerLens), named by its place
(``blocks.0.attn.hook_pattern``, ``blocks.1.mlp.hook_post``); hooks read or replace it there.
The attention pattern exists only when someone listens: then attention runs as explicit
``softmax(q k^T * scale + mask) @ v`` instead of the fused kernel; the tests check both give
the same output.

Generation uses a key/value cache (`KVCache`). Prompts of different lengths are
left-padded; `pad` gives each row's number of padding slots, which attention masks out
and positions skip, so a padded row computes exactly what it would alone. The decode step
(`model/decode.py`) is this model written again in C (`decode_step.c`) for one new token per
row, where it can run; the tests pin it to `forward`. Whoever changes the model here changes
`decode_step.c` too, and the tests say so if not.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from tinystories.model.config import GPTConfig
from tinystories.model.hook_points import HookedModule, HookPoint
from tinystories.model.losses import linear_cross_entropy

__all__ = ["GPT", "GPTConfig", "HookPoint", "KVCache"]


class KVCache:
    """Preallocated keys and values of every layer for a batch being generated.

    Slots 0..length-1 are filled in every row; row r's first `pad[r]` slots are padding
    (its prompt was shorter), which attention never reads. The model only appends to it;
    the batch surgery a continuous-batching engine needs (rows joining, leaving, compaction)
    is the engine's cache manager's (`tinystories.infer.cache_manager`).
    """

    def __init__(self, cfg: GPTConfig, batch: int, max_len: int, device: torch.device,
                 dtype: torch.dtype, pad: torch.Tensor | None = None) -> None:
        shape = (cfg.n_layer, batch, cfg.n_head, max_len, cfg.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0  # slots filled so far (the same for every row)
        self.pad = pad

    @property
    def batch(self) -> int:
        return self.k.shape[1]

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


def attention_probs(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None, scale: float) -> torch.Tensor:
    """softmax(q k^T * scale + mask) [B, H, Tq, Tk] in float32: what SDPA computes inside.

    `mask` is boolean (True = may attend), additive (0 / -inf), or None for plain causal
    attention. A query that may see no key (a padding slot) attends to nothing (all zeros).
    """
    scores = (q.float() @ k.float().transpose(-1, -2)) * scale
    if mask is None:
        Tq, Tk = scores.shape[-2:]
        mask = torch.ones(Tq, Tk, dtype=torch.bool, device=q.device).tril(Tk - Tq)
    scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    return torch.softmax(scores, dim=-1).nan_to_num(0.0)


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
        self.scale = 1.0 if cfg.arch == "neo" else cfg.head_dim ** -0.5
        self.window = cfg.local_window if cfg.arch == "neo" and layer % 2 == 1 else 0
        # QK-norm: per-head RMSNorm of queries and keys keeps attention logits bounded at high LR.
        self.q_norm = nn.RMSNorm(cfg.head_dim, eps=cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = nn.RMSNorm(cfg.head_dim, eps=cfg.norm_eps) if cfg.qk_norm else None
        # [B, H, T, head_dim] per head (q, k after RoPE), the pattern [B, H, Tq, Tk], z = pattern @ v.
        self.hook_q, self.hook_k, self.hook_v = HookPoint(), HookPoint(), HookPoint()
        self.hook_pattern, self.hook_z = HookPoint(), HookPoint()

    def forward(self, x: torch.Tensor, masks: dict[int, torch.Tensor | None], is_causal: bool,
                rope: tuple[torch.Tensor, torch.Tensor] | None, cache: KVCache | None) -> torch.Tensor:
        B, T, _ = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.cfg.n_head, self.cfg.head_dim).permute(2, 0, 3, 1, 4)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        q, k, v = self.hook_q(q), self.hook_k(k), self.hook_v(v)
        if cache is not None:
            k, v = cache.update(self.layer, k, v)
        mask = masks[self.window]
        dropout = self.cfg.attention_dropout if self.training else 0.0
        if self.hook_pattern.active:  # someone wants the pattern: compute it explicitly
            pattern = self.hook_pattern(attention_probs(q, k, mask, self.scale))
            z = F.dropout(pattern, dropout, self.training).to(v.dtype) @ v
        else:
            z = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout,
                                               is_causal=is_causal and mask is None, scale=self.scale)
        z = self.hook_z(z)
        return self.out(z.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.activation = cfg.activation
        bias = cfg.arch == "neo"
        if self.activation == "swiglu":
            self.gate = nn.Linear(cfg.d_model, cfg.ffn_dim, bias=False)
            self.up = nn.Linear(cfg.d_model, cfg.ffn_dim, bias=False)
        else:
            self.fc = nn.Linear(cfg.d_model, cfg.ffn_dim, bias=bias)
        self.proj = nn.Linear(cfg.ffn_dim, cfg.d_model, bias=bias)
        self.hook_post = HookPoint()  # the neuron activations [B, T, ffn_dim]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.activation == "swiglu":
            hidden = activation("swiglu", self.gate(x), self.up(x))
        else:
            hidden = activation(self.activation, self.fc(x))
        return self.proj(self.hook_post(hidden))


def activation(kind: str, h: torch.Tensor, up: torch.Tensor | None = None) -> torch.Tensor:
    """The MLP's nonlinearity: SwiGLU silu(gate) * up, ReLU², or GPT-Neo's tanh-approximated GELU."""
    if kind == "swiglu":
        assert up is not None
        return F.silu(h) * up
    if kind == "relu2":
        return F.relu(h).square()
    return F.gelu(h, approximate="tanh")


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
        # The residual stream [B, T, d] entering, after attention, and leaving; what each part writes.
        self.hook_resid_pre, self.hook_resid_mid, self.hook_resid_post = HookPoint(), HookPoint(), HookPoint()
        self.hook_attn_out, self.hook_mlp_out = HookPoint(), HookPoint()

    def forward(self, x: torch.Tensor, masks: dict[int, torch.Tensor | None], is_causal: bool,
                rope: tuple[torch.Tensor, torch.Tensor] | None, cache: KVCache | None) -> torch.Tensor:
        x = self.hook_resid_pre(x)
        x = self.hook_resid_mid(x + self.hook_attn_out(self.drop(self.attn(self.norm1(x), masks, is_causal,
                                                                           rope, cache))))
        return self.hook_resid_post(x + self.hook_mlp_out(self.drop(self.mlp(self.norm2(x)))))


class GPT(HookedModule):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.context_length, cfg.d_model) if cfg.arch == "neo" else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.norm = make_norm(cfg)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.hook_embed, self.hook_final = HookPoint(), HookPoint()  # [B, T, d]: first and last stream
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        self.apply(self._init_weights)
        # GPT-2's scaled init of the layers that write into the residual stream (or zero: each
        # block then starts as the identity, and learns what to add).
        for name, p in self.named_parameters():
            if name.endswith(("attn.out.weight", "mlp.proj.weight")):
                if cfg.zero_init_proj:
                    nn.init.zeros_(p)
                else:
                    nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def layers(self) -> list[Block]:
        """The blocks in order, typed (iterating an `nn.ModuleList` gives plain `nn.Module`s)."""
        return [block for block in self.blocks if isinstance(block, Block)]

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
        x = self.drop(self.hook_embed(x))
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
        return self.hook_final(self.norm(x))

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                cache: KVCache | None = None, pad: torch.Tensor | None = None, last: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits [B, T, vocab] and, given `targets` [B, T] (-1 = ignore), the mean cross-entropy.

        `last`: logits of the last position only ([B, 1, vocab]): a prompt's prefill needs no
        more, and at a 32K vocabulary the output layer is most of a short prompt's work.
        """
        hidden = self.hidden_states(idx, cache, pad)
        logits = self.lm_head(hidden[:, -1:] if last else hidden)
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
        if hidden.device.type == "cpu":  # any dtype, and under autocast
            return linear_cross_entropy(hidden, self.lm_head.weight, targets)
        logits = self.lm_head(hidden)
        return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)

    def new_cache(self, batch: int, max_len: int | None = None, pad: torch.Tensor | None = None) -> KVCache:
        p = self.tok_emb.weight
        return KVCache(self.cfg, batch, max_len or self.cfg.context_length, p.device, p.dtype, pad)

