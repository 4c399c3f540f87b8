"""The decode step: `GPT` specialised to new tokens one row each, in C (`decode_step.c`).

`decode_step(model)` is the step a model decodes with, or None where only `forward` computes
what the model would: in training mode, with hooks on this thread, for another dtype or device
than float32 on the CPU, or where the C file cannot be built (`native.why_not`). The engine
then decodes with `forward` and its KV cache (`infer/runner.py`). The tests pin the step's
logits to `forward`'s to 1e-5 for every architecture.

One step serves every thread that decodes a model (two engines, a server and a script); what a
call writes besides the cache, its scratch memory and its thread count, is its thread's own.
"""

from __future__ import annotations

import ctypes
import threading
import weakref
from collections.abc import Callable, Mapping

import torch

from tinystories.model import native
from tinystories.model.gpt import GPT, KVCache, rope_tables
from tinystories.utils import inference

__all__ = ["ADDABLE", "DecodeStep", "addable", "decode_step"]

# model -> (what its weights were when its step was made, the step). A step holds the model's
# weights but never the model, so this does not keep models alive.
_DECODE_STEPS: weakref.WeakKeyDictionary[GPT, tuple[tuple[object, ...], DecodeStep]] = weakref.WeakKeyDictionary()

# Hook points of each block where the decode step can add a vector per row (e.g. a steering
# direction), in the order a step passes them: the residual-width activations ([B, d]) and the
# MLP's neurons (``mlp.hook_post``, [B, ffn_dim]). Others need `forward`.
ADDABLE = ("hook_resid_pre", "hook_attn_out", "hook_resid_mid", "mlp.hook_post", "hook_mlp_out", "hook_resid_post")
assert len(ADDABLE) == native.POINTS

# Prompt positions per call of `DecodeStep.prefill`: the scratch grows with them (17 KB a
# position at the 15M shape), and more save little once a call's arithmetic dwarfs reading
# the weights once.
PREFILL_ROWS = 256


def addable(name: str) -> bool:
    """Whether the decode step can add a vector at hook point `name` (see `DecodeStep.step`)."""
    block, _, point = name.partition(".")[2].partition(".")
    return name == "hook_embed" or (name.startswith("blocks.") and block.isdigit() and point in ADDABLE)


def decode_step(model: GPT) -> DecodeStep | None:
    """`model`'s decode step (made once, remade when its weights change), or None when only
    `forward` computes what the model would (see the module doc)."""
    if model.training or model.listened():
        return None
    weight = model.tok_emb.weight
    if weight.dtype != torch.float32 or weight.device.type != "cpu" or native.library() is None:
        return None
    # in-place changes bump _version; .to(), .double() and load_state_dict(assign=True) move the data
    weights = tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in model.parameters())
    known = _DECODE_STEPS.get(model)
    if known is None or known[0] != weights:
        known = (weights, DecodeStep(model))
        _DECODE_STEPS[model] = known
    return known[1]


class DecodeStep:
    """`step(tokens, cache)` = ``model(tokens[:, None], cache=cache)[0][:, -1]``, in C; `argmax`
    the same step's most likely tokens; `prefill` prompts through it, a position as a row.

    Hooks do not run here: `decode_step` gives None when some listen on this thread. A vector
    per row can still be added at the residual hook points and the MLP's neurons (`ADDABLE`),
    which is what steering needs, as `adds[name]` [B, width] (``hook_embed`` or
    ``blocks.L.<point>``): what a hook returning ``x + add`` would do in `forward`.
    """

    def __init__(self, model: GPT) -> None:
        lib = native.library()
        assert lib is not None, "decode_step(model) makes steps where the C file builds"
        self.lib, self.cfg = lib, model.cfg
        self.add_order = ["hook_embed", *(f"blocks.{i}.{point}" for i in range(self.cfg.n_layer) for point in ADDABLE)]
        rope = None
        if model.pos_emb is None:  # [context, head_dim] each
            cos, sin = rope_tables(torch.arange(self.cfg.context_length)[None], self.cfg.head_dim, self.cfg.rope_theta)
            rope = (cos[0, 0], sin[0, 0])
        self.weights = native.Weights(model, rope)
        self.local = threading.local()

    def _mine(self, rows: int) -> tuple[ctypes._CArgObject, int]:
        """This thread's copy of the C `Model` (its `threads` field set to this thread's torch
        threads) and the address of its scratch, room for `rows` rows or more."""
        mine = self.local
        if not hasattr(mine, "model"):
            mine.model = native.Model.from_buffer_copy(self.weights.struct)
            mine.ref = ctypes.byref(mine.model)
            mine.scratch, mine.shape = torch.empty(0), None
        threads = mine.model.threads = torch.get_num_threads()
        if mine.shape != (rows, threads):  # the batch or the threads changed: room enough?
            need = self.lib.scratch_floats(mine.ref, rows)
            if need > mine.scratch.numel():
                mine.scratch = torch.empty(need)
            mine.shape = (rows, threads)
        return mine.ref, mine.scratch.data_ptr()

    @staticmethod
    def _cache(cache: KVCache, rows: int, held: list[torch.Tensor]) -> native.Cache:
        """`cache` as decode_step.c's `Cache` (a padding count per row, zeros if it has none)."""
        assert cache.k.is_contiguous() and cache.v.is_contiguous() and cache.k.dtype == torch.float32
        pad = cache.pad if cache.pad is not None else torch.zeros(rows, dtype=torch.long)
        assert pad.shape == (rows,) and pad.is_contiguous()
        held.append(pad)
        return native.Cache(k=cache.k.data_ptr(), v=cache.v.data_ptr(), pad=pad.data_ptr(), rows=rows,
                            len=cache.k.shape[3])

    def _adds(self, adds: Mapping[str, torch.Tensor] | None, held: list[torch.Tensor]) -> ctypes.Array | None:  # type: ignore[type-arg]
        """`adds` as decode_step.c's table, in `add_order` (the tensors it points into go in `held`)."""
        if not adds:
            return None
        table = [adds[name].float().contiguous() if name in adds else None for name in self.add_order]
        held += [a for a in table if a is not None]
        return (ctypes.c_void_p * len(table))(*[None if a is None else a.data_ptr() for a in table])

    @inference
    def step(self, tokens: torch.Tensor, cache: KVCache, adds: Mapping[str, torch.Tensor] | None = None
             ) -> torch.Tensor:
        """Logits [B, V] of the next token after `tokens` [B] (one per row), appended to `cache`."""
        return self._batch(self.lib.step, tokens, cache, adds, torch.empty(tokens.shape[0], self.cfg.vocab_size))

    @inference
    def argmax(self, tokens: torch.Tensor, cache: KVCache, adds: Mapping[str, torch.Tensor] | None = None
               ) -> torch.Tensor:
        """`step`'s most likely token of each row [B] (the first of ties, as ``logits.argmax(-1)``),
        without computing every logit: from a bfloat16 copy of the output layer, and float32 logits
        for the few tokens that copy cannot rule out (`argmax_pruned` in decode_step.c). It reads
        half the output layer's bytes for each row, so it pays for one row (`infer/runner.py`)."""
        return self._batch(self.lib.argmax, tokens, cache, adds, torch.empty(tokens.shape[0], dtype=torch.long))

    def _batch(self, entry: Callable[..., None], tokens: torch.Tensor, cache: KVCache,
               adds: Mapping[str, torch.Tensor] | None, out: torch.Tensor) -> torch.Tensor:
        """One step of the running batch by C entry point `entry` (`step` or `argmax`), into `out`."""
        if cache.length >= self.cfg.context_length:
            raise ValueError(f"sequence of {cache.length + 1} tokens is longer than the model's context of "
                             f"{self.cfg.context_length}")
        B, tokens = tokens.shape[0], tokens.contiguous()
        assert tokens.dtype == torch.int64 and cache.batch == B
        held: list[torch.Tensor] = []
        ref, scratch = self._mine(B)
        entry(ref, B, tokens.data_ptr(), cache.length, ctypes.byref(self._cache(cache, B, held)),
              self._adds(adds, held), out.data_ptr(), scratch)
        cache.length += 1
        return out

    @inference
    def prefill(self, idx: torch.Tensor, cache: KVCache, adds: Mapping[str, torch.Tensor] | None = None
                ) -> torch.Tensor:
        """Prompts `idx` [n, T], left-padded as `cache.pad` says, into the empty `cache`: the logits
        [n, V] of each one's next token. Every prompt position is a row of a call (`PREFILL_ROWS` a
        call), the output layer computed only at each prompt's last: the logits and cache that
        stepping through the prompts a position at a time gives, bit for bit (tested), and a
        prompt's the same whatever prompts come with it."""
        n, T = idx.shape
        if T > self.cfg.context_length:
            raise ValueError(f"prompt of {T} tokens is longer than the model's context of {self.cfg.context_length}")
        if cache.length != 0 or cache.batch != n or cache.k.shape[3] < T or (
                cache.pad is not None and cache.pad.shape != (n,)):
            raise ValueError(f"prefill needs an empty cache of {n} rows and {T} slots or more, with a padding "
                             f"count per row (the C step writes into it unchecked)")
        held: list[torch.Tensor] = []
        c = ctypes.byref(self._cache(cache, n, held))
        start = held[0]  # each row's padding
        real = torch.arange(T)[None] >= start[:, None]  # [n, T]: prompt positions, not padding
        at = real.nonzero().contiguous()  # [P, 2]: (cache row, slot) of each position, row by row
        tokens, last = idx[real].contiguous(), (T - start).cumsum(0) - 1  # each row's last position among them
        rows = {name: a[at[:, 0]] for name, a in adds.items()} if adds else None
        logits = torch.empty(n, self.cfg.vocab_size)
        done = 0  # prompts whose logits are in
        for a in range(0, at.shape[0], PREFILL_ROWS):  # a row's earlier positions are in the cache by then
            b = min(a + PREFILL_ROWS, at.shape[0])
            out = (last[(last >= a) & (last < b)] - a).contiguous()
            part = {name: r[a:b] for name, r in rows.items()} if rows else None
            table, ref, scratch = self._adds(part, held), *self._mine(b - a)
            self.lib.prefill(ref, b - a, tokens[a:].data_ptr(), at[a:].data_ptr(), c, table, len(out), out.data_ptr(),
                             logits[done:].data_ptr(), scratch)
            done += len(out)
        cache.length = T
        return logits
