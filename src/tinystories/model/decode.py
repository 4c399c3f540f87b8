"""The decode step: `GPT` specialised to one new token per row, in C where it can be.

`DecodeStep` runs the model's own modules and functions (`model/gpt.py`) on weights laid out
for one row at a time, or hands the step to C (`decode_step.c`, loaded by `native.py`) for
float32 on the CPU; the tests pin both to `GPT.forward`. `decode_step(model)` is the one a
model decodes with: made once, remade when its weights change, None when only `forward`
computes what the model would (training, or hooks on this thread). One step serves every
thread; what a call writes besides the cache is its thread's own (`native.NativeStep`).
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from tinystories.model import native as c
from tinystories.model.gpt import (
    GPT,
    Block,
    KVCache,
    activation,
    apply_rope,
    attention_probs,
    rope_tables,
)
from tinystories.utils import inference

__all__ = ["ADDABLE", "DecodeStep", "addable", "decode_step"]

# model -> (what its weights were when its step was made, the step). A step holds the model's
# modules and weights but never the model, so this does not keep models alive.
_DECODE_STEPS: weakref.WeakKeyDictionary[GPT, tuple[tuple[object, ...], DecodeStep]] = weakref.WeakKeyDictionary()

# Hook points of each block where the decode step can add a vector per row (e.g. a steering
# direction), in the order a step passes them: the residual-width activations ([B, d]) and the
# MLP's neurons (``mlp.hook_post``, [B, ffn_dim]), which it holds as tensors. Others need `forward`.
ADDABLE = ("hook_resid_pre", "hook_attn_out", "hook_resid_mid", "mlp.hook_post", "hook_mlp_out", "hook_resid_post")


# Output-layer weights (16 MB in float32) past which `DecodeStep.argmax` reads the bfloat16 copy
# for any batch below 16 rows: the 15M shape's 9.2M stream from memory at every token, the 1M
# and demo shapes' 0.6M stay in cache, where the copy pays only at one or two rows.
STREAMED = 4 << 20
# Prompt positions per call of the C step in `DecodeStep.prefill`: its scratch grows with them (17 KB
# a position at the 15M shape), and more save little: a call reads the weights once, ~1 ms there,
# against ~50 ms of arithmetic for 256 positions (1 thread, Zen 4 AMD EPYC).
PREFILL_ROWS = 256


def addable(name: str) -> bool:
    """Whether the decode step can add a vector at hook point `name` (see `DecodeStep.step`)."""
    block, _, point = name.partition(".")[2].partition(".")
    return name == "hook_embed" or (name.startswith("blocks.") and block.isdigit() and point in ADDABLE)


def decode_step(model: GPT) -> DecodeStep | None:
    """`model`'s decode step (made once, remade when its weights change), or None when only
    `forward` computes what the model would: in training mode, or with hooks on this thread.
    One step serves every thread; what a call writes besides the cache is its thread's own."""
    if model.training or model.listened():
        return None
    # in-place changes bump _version; .to(), .double() and load_state_dict(assign=True) move the data
    weights = tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in model.parameters())
    known = _DECODE_STEPS.get(model)
    if known is None or known[0] != weights:
        known = (weights, DecodeStep(model))
        _DECODE_STEPS[model] = known
    return known[1]


@dataclass
class _Layer:
    """One block's modules and weights, laid out for `x @ w` (w is [in, out])."""
    block: Block
    qkv: torch.Tensor
    out: torch.Tensor
    fc: torch.Tensor  # gate and up side by side for SwiGLU
    fc_b: torch.Tensor | None
    proj: torch.Tensor


class DecodeStep:
    """`step(tokens, cache)` = ``model(tokens[:, None], cache=cache)[0][:, -1]``: the same model
    specialised to generation's common case, one new token per row; `prefill` runs prompts
    through it, a position as a row.

    Not a second model: it runs the model's modules and functions (the norms, `rope_tables`,
    `apply_rope`, `attention_probs`, `activation`) on weights derived from the model's own, and
    `tests/test_fast_decode.py` checks its logits against `forward` to 1e-5 for every
    architecture. What makes it faster on a CPU (measured at the 15M shape, bench/README.md):

    * weights transposed once to [in, out] and multiplied as ``x @ w``: for one row, ``F.linear``
      on the stored [out, in] layout costs up to 3x as much (32K-vocabulary output layer);
    * SwiGLU's gate and up matrices side by side: one multiplication;
    * RoPE angles for every position computed once (`rope_tables`);
    * attention of one query over the cache as two small matmuls, with no mask built for rows
      without padding, and no module calls, hook points or masks dictionary per step.

    For float32 on the CPU the step runs in C where a compiler is at hand (`model/native.py`,
    `decode_step.c`: the same operations on a copy of the weights laid out for it, with no
    per-operation dispatch),
    else as the PyTorch operations below (``native=False`` forces them). Both are pinned to
    `forward` by the tests.

    Hooks are not run here: `decode_step` gives None when some listen on this thread. A
    vector per row can still be added at the residual hook points and the MLP's neurons
    (`ADDABLE`), which is what steering needs, without leaving this path.
    """

    def __init__(self, model: GPT, native: bool = True) -> None:
        cfg = self.cfg = model.cfg
        self.model_norm, self.tok_emb, self.pos_emb = model.norm, model.tok_emb, model.pos_emb
        self.add_order = ["hook_embed", *(f"blocks.{i}.{point}" for i in range(cfg.n_layer) for point in ADDABLE)]
        device = model.tok_emb.weight.device
        self.rope = None
        if self.pos_emb is None:  # [ctx, head_dim] each
            cos, sin = rope_tables(torch.arange(cfg.context_length, device=device)[None], cfg.head_dim,
                                   cfg.rope_theta)
            self.rope = (cos[0, 0], sin[0, 0])
        self.native = None  # the same step in C (model/native.py), for float32 on the CPU where it builds
        if native and model.tok_emb.weight.dtype == torch.float32 and device.type == "cpu":
            lib = c.library()
            if lib is not None:
                if lib.addition_points() != len(ADDABLE):  # `adds` is a table in ADDABLE's order
                    raise RuntimeError(f"decode_step.c has {lib.addition_points()} addition points a layer, "
                                       f"decode.ADDABLE {len(ADDABLE)}: change both together")
                self.native = c.NativeStep(model, lib, self.rope)
        self.layers = []
        if self.native is not None:
            return
        with torch.no_grad():
            for block in model.layers():
                a, m = block.attn, block.mlp
                fc = torch.cat([m.gate.weight, m.up.weight]) if m.activation == "swiglu" else m.fc.weight
                self.layers.append(_Layer(
                    block=block, qkv=a.qkv.weight.t().contiguous(), out=a.out.weight.t().contiguous(),
                    fc=fc.t().contiguous(), fc_b=None if m.activation == "swiglu" else m.fc.bias,
                    proj=m.proj.weight.t().contiguous()))
            self.head = model.lm_head.weight.t().contiguous()

    def step(self, tokens: torch.Tensor, cache: KVCache, adds: Mapping[str, torch.Tensor] | None = None,
             best: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, V] of the next token after `tokens` [B] (one per row), appended to `cache`.

        `adds[name]` [B, width]: added to the activation at hook point `name` (``hook_embed`` or one
        of `ADDABLE`, as ``blocks.L.hook_resid_post``), as a hook returning ``x + add`` would in `forward`.
        `best` [B] int64: set to each row's most likely token, ``logits.argmax(-1)`` (the C step
        finds it while the logits are in cache: the greedy sampler's answer, `infer/sampler.sample`).
        """
        logits = self._run(tokens, cache, adds, best, head=True)
        assert logits is not None
        return logits

    def argmax(self, tokens: torch.Tensor, cache: KVCache, adds: Mapping[str, torch.Tensor] | None,
               best: torch.Tensor) -> None:
        """`step` when only each row's most likely token is wanted (greedy rows, no log-probabilities
        to report): set in `best`, the same token `step` gives, with no logits. The C step then reads
        a bfloat16 copy of the output layer and computes float32 logits only for the tokens that
        copy cannot rule out (`argmax_pruned` in decode_step.c: half the bytes of the 15M shape's
        largest matrix, which it streams from memory at every token). That pays at one or two
        rows, and below 16 rows where the output layer is too large to stay in cache (more than
        `STREAMED` weights); elsewhere converting the copy costs more than it saves, and the step
        computes all the logits, as the PyTorch step always does (bench/README.md, Inference)."""
        B = tokens.shape[0]
        if self.native is not None and (B <= 2 or (B < 16 and self.cfg.vocab_size * self.cfg.d_model > STREAMED)):
            self._run(tokens, cache, adds, best, head=False)
        else:
            self._run(tokens, cache, adds, best, head=True)

    def fill(self, tokens: torch.Tensor, cache: KVCache, adds: Mapping[str, torch.Tensor] | None = None) -> None:
        """`step` without the output layer: `tokens` appended to `cache`, no logits (a prompt
        position before its last; the output layer is the step's largest matrix at our shapes)."""
        self._run(tokens, cache, adds, None, head=False)

    @inference
    def prefill(self, idx: torch.Tensor, cache: KVCache, adds: Mapping[str, torch.Tensor] | None = None
                ) -> torch.Tensor:
        """Prompts `idx` [n, T], left-padded as `cache.pad` says, into the empty `cache`: the logits
        [n, V] of each one's next token. What stepping through them a position at a time gives
        (`fill`, then `step` at the last), and the PyTorch step does just that. The C step takes
        every prompt position as a row instead (`decode_step.c`, its `at`; `PREFILL_ROWS` a call),
        its matrices read once for all of them, the output layer only at each prompt's last; each row
        computed as in a step of its own: the same logits and cache, bit for bit (tested), and a
        prompt's the same whatever prompts come with it."""
        n, T = idx.shape
        if T > self.cfg.context_length:
            raise ValueError(f"prompt of {T} tokens is longer than the model's context of {self.cfg.context_length}")
        if cache.length != 0 or cache.batch != n or cache.k.shape[3] < T or (
                cache.pad is not None and cache.pad.shape != (n,)):
            raise ValueError(f"prefill needs an empty cache of {n} rows and {T} slots or more, with a padding "
                             f"count per row (the C step writes into it unchecked)")
        if self.native is None:
            for t in range(T - 1):
                self.fill(idx[:, t], cache, adds)
            return self.step(idx[:, -1], cache, adds)
        start = cache.pad if cache.pad is not None else torch.zeros(n, dtype=torch.long)
        real = torch.arange(T)[None] >= start[:, None]  # [n, T]: prompt positions, not padding
        at = real.nonzero()  # [P, 2]: (cache row, slot) of each position, row by row
        tokens, last = idx[real], (T - start).cumsum(0) - 1  # each row's last position among them
        table = [adds[name][at[:, 0]] if name in adds else None for name in self.add_order] if adds else None
        logits = []
        for a in range(0, at.shape[0], PREFILL_ROWS):  # a row's earlier positions are in the cache by then
            b = a + PREFILL_ROWS
            out = last[(last >= a) & (last < b)] - a
            part = None if table is None else [t if t is None else t[a:b] for t in table]
            got = self.native.step(tokens[a:b], cache.k, cache.v, T - 1, cache.pad, part, None, len(out) > 0,
                                   at[a:b], out)
            logits += [got] if got is not None else []
        cache.length = T
        return torch.cat(logits)

    @inference
    def _run(self, tokens: torch.Tensor, cache: KVCache, adds: Mapping[str, torch.Tensor] | None,
             best: torch.Tensor | None, head: bool) -> torch.Tensor | None:
        cfg, adds = self.cfg, adds or {}
        B, H, D = tokens.shape[0], cfg.n_head, cfg.head_dim
        slot = cache.length
        if slot >= cfg.context_length:
            raise ValueError(f"sequence of {slot + 1} tokens is longer than the model's context of "
                             f"{cfg.context_length}")
        pad = cache.pad
        if self.native is not None:
            assert best is None or (best.dtype == torch.int64 and best.is_contiguous() and best.shape == (B,))
            logits = self.native.step(tokens, cache.k, cache.v, slot, pad,
                                      [adds.get(n) for n in self.add_order] if adds else None, best, head)
            cache.length += 1
            return logits
        pos = torch.full((B,), slot, device=tokens.device) if pad is None else (slot - pad).clamp(min=0)
        x = self.tok_emb(tokens)
        rope = None
        if self.pos_emb is not None:
            x = x + self.pos_emb(pos)
        else:
            assert self.rope is not None
            rope = (self.rope[0][pos][:, None], self.rope[1][pos][:, None])  # [B, 1, head_dim]
        keys = torch.arange(slot + 1, device=tokens.device)
        visible = None if pad is None else keys[None, :] >= pad[:, None]  # [B, slot+1]

        def add(name: str, t: torch.Tensor) -> torch.Tensor:
            return t + adds[name] if name in adds else t

        x = add("hook_embed", x)
        for i, layer in enumerate(self.layers):
            blk, at = layer.block, f"blocks.{i}."
            x = add(at + "hook_resid_pre", x)
            q, k, v = (blk.norm1(x) @ layer.qkv).view(B, 3, H, D).unbind(1)  # each [B, H, D]
            if blk.attn.q_norm is not None and blk.attn.k_norm is not None:
                q, k = blk.attn.q_norm(q), blk.attn.k_norm(k)
            if rope is not None:
                q, k = apply_rope(q, *rope), apply_rope(k, *rope)
            cache.k[i, :, :, slot] = k
            cache.v[i, :, :, slot] = v
            mask = visible
            if blk.attn.window and slot + 1 > blk.attn.window:
                recent = (keys > slot - blk.attn.window)[None]
                mask = recent if mask is None else mask & recent
            probs = attention_probs(q[:, :, None], cache.k[i, :, :, :slot + 1],
                                    None if mask is None else mask[:, None, None], blk.attn.scale)
            z = (probs.to(x.dtype) @ cache.v[i, :, :, :slot + 1]).reshape(B, -1)  # [B, H * D]
            attn = z @ layer.out
            if blk.attn.out.bias is not None:
                attn = attn + blk.attn.out.bias
            x = add(at + "hook_resid_mid", x + add(at + "hook_attn_out", attn))
            h = blk.norm2(x) @ layer.fc
            if layer.fc_b is not None:
                h = h + layer.fc_b
            hidden = activation("swiglu", *h.chunk(2, -1)) if blk.mlp.activation == "swiglu" \
                else activation(blk.mlp.activation, h)
            out = add(at + "mlp.hook_post", hidden) @ layer.proj
            if blk.mlp.proj.bias is not None:
                out = out + blk.mlp.proj.bias
            x = add(at + "hook_resid_post", x + add(at + "hook_mlp_out", out))
        cache.length += 1
        if not head:
            return None
        logits = self.model_norm(x) @ self.head
        if best is not None:
            torch.argmax(logits, -1, out=best)
        return logits
