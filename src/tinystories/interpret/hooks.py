"""Run a `GPT` and keep every intermediate activation, in the spirit of TransformerLens.

`run_with_cache(model, idx)` is a readable re-implementation of `GPT.hidden_states` that
calls the model's own modules (embeddings, norms, `qkv`, `out`, MLP) and only replaces
`F.scaled_dot_product_attention`, which returns no weights, by the explicit
``softmax(q k^T * scale + mask) @ v`` so the attention patterns can be kept. It honours
everything the model does: neo's unscaled scores and local windows on odd layers, RoPE
for modern, left padding. The tests check that it reproduces ``model(idx)`` exactly.

Keys (``cache[name, layer]``, or ``cache[name]`` for model-wide ones):

========== ===================== ==============================================
name       shape                 what
========== ===================== ==============================================
embed      [B, T, d]             token embeddings (+ learned positions for neo)
resid_pre  [B, T, d]             residual stream entering block `layer`
q, k, v    [B, H, T, head_dim]   per-head queries/keys/values (after RoPE)
attn       [B, H, T, T]          attention probabilities (query x key)
z          [B, H, T, head_dim]   per-head mixed values, ``attn @ v``
attn_out   [B, T, d]             attention output written to the residual stream
resid_mid  [B, T, d]             residual stream after attention
mlp_post   [B, T, ffn]           MLP neuron activations (`MLP.hidden`)
mlp_out    [B, T, d]             MLP output written to the residual stream
resid_post [B, T, d]             residual stream leaving block `layer`
final      [B, T, d]             ``model.norm(resid_post[-1])``
========== ===================== ==============================================
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from tinystories.model.gpt import GPT, Attention, apply_rope, attention_mask


class ActivationCache:
    """Activations of one forward pass, keyed by ``(name, layer)`` or ``name``."""

    def __init__(self, n_layer: int) -> None:
        self.n_layer = n_layer
        self.store: dict[str | tuple[str, int], torch.Tensor] = {}

    def __getitem__(self, key: str | tuple[str, int]) -> torch.Tensor:
        if isinstance(key, tuple) and key[1] < 0:  # cache["resid_post", -1] = last layer
            key = (key[0], key[1] + self.n_layer)
        if key not in self.store:
            raise KeyError(f"{key!r} not in cache; available names: {sorted(self.names())}")
        return self.store[key]

    def __setitem__(self, key: str | tuple[str, int], value: torch.Tensor) -> None:
        self.store[key] = value

    def __contains__(self, key: object) -> bool:
        return key in self.store

    def __iter__(self) -> Iterator[str | tuple[str, int]]:
        return iter(self.store)

    def names(self) -> set[str]:
        return {k[0] if isinstance(k, tuple) else k for k in self.store}

    def stack(self, name: str) -> torch.Tensor:
        """One activation across layers, stacked on a new first dimension: [n_layer, ...]."""
        return torch.stack([self[name, layer] for layer in range(self.n_layer)])


def attention_pattern(attn: Attention, q: torch.Tensor, k: torch.Tensor,
                      mask: torch.Tensor | None) -> torch.Tensor:
    """Softmax probabilities [B, H, Tq, Tk] exactly as SDPA computes them (float32)."""
    scale = attn.scale if attn.scale is not None else q.shape[-1] ** -0.5
    scores = (q.float() @ k.float().transpose(-1, -2)) * scale
    if mask is None:  # plain causal
        Tq, Tk = scores.shape[-2:]
        mask = torch.ones(Tq, Tk, dtype=torch.bool, device=q.device).tril(Tk - Tq)
    scores = scores.masked_fill(~mask, float("-inf"))
    # A fully masked row (a padding query) would be NaN; it attends to nothing instead.
    return torch.softmax(scores, dim=-1).nan_to_num(0.0)


@torch.no_grad()
def run_with_cache(model: GPT, idx: torch.Tensor, pad: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, ActivationCache]:
    """Logits [B, T, vocab] of `idx` [B, T] and an `ActivationCache` of the whole forward pass.

    `pad` is the per-row count of left padding slots, as in `GPT.forward`. Dropout is
    never applied (what `model.eval()` computes).
    """
    cfg = model.cfg
    B, T = idx.shape
    cache = ActivationCache(cfg.n_layer)
    x, rope = model.embed(idx, 0, pad)
    cache["embed"] = x
    for layer, block in enumerate(model.layers()):
        cache["resid_pre", layer] = x
        attn = block.attn
        h = block.norm1(x)
        q, k, v = attn.qkv(h).view(B, T, 3, cfg.n_head, cfg.head_dim).permute(2, 0, 3, 1, 4)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        pattern = attention_pattern(attn, q, k, attention_mask(0, T, T, pad, attn.window, idx.device))
        z = (pattern @ v.float()).to(v.dtype)
        attn_out = attn.out(z.transpose(1, 2).reshape(B, T, -1))
        x = x + attn_out
        hidden = block.mlp.hidden(block.norm2(x))
        mlp_out = block.mlp.proj(hidden)
        for name, value in (("q", q), ("k", k), ("v", v), ("attn", pattern), ("z", z),
                            ("attn_out", attn_out), ("resid_mid", x), ("mlp_post", hidden),
                            ("mlp_out", mlp_out)):
            cache[name, layer] = value
        x = x + mlp_out
        cache["resid_post", layer] = x
    cache["final"] = model.norm(x)
    return model.lm_head(cache["final"]), cache
