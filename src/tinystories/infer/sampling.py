"""Batched story generation with a KV cache: many prompts at once, each row its own params.

`generate` is the fast path. `generate_reference` recomputes the whole sequence at every
step with no cache: slow and obviously right, and the tests check the two agree. Both pick
tokens with the one sampler (`infer.sampler.sample`), as the server's engine does, so the
same seed and settings write the same story everywhere.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import torch

from tinystories.errors import TinyStoriesError
from tinystories.infer.fast import decoder_for
from tinystories.infer.params import SamplingParams
from tinystories.infer.sampler import new_generator, sample
from tinystories.infer.text_stream import TextStream
from tinystories.model.gpt import GPT
from tinystories.tokenizer import Tokenizer

TokenCallback = Callable[[torch.Tensor, torch.Tensor], None]


def row_params(params: SamplingParams | Sequence[SamplingParams], rows: int) -> list[SamplingParams]:
    """One params per row: a shared `params` gives row i seed + i."""
    if isinstance(params, SamplingParams):
        return [params.for_row(i) for i in range(rows)]
    if len(params) != rows:
        raise ValueError(f"{len(params)} sampling params for {rows} prompts")
    return list(params)


def left_pad(prompts: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts as one left-padded [B, T] batch, and each row's amount of padding."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise TinyStoriesError("every prompt needs at least one token (an empty prompt can start "
                               "with the end-of-story token)")
    width = max(len(p) for p in prompts)
    idx = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    for row, p in enumerate(prompts):
        idx[row, width - len(p):] = torch.tensor(p, dtype=torch.long)
    pad = torch.tensor([width - len(p) for p in prompts], dtype=torch.long)
    return idx.to(device), pad.to(device)


def _setup(model: GPT, prompts: list[list[int]], params: SamplingParams | Sequence[SamplingParams], eos_id: int
           ) -> tuple[torch.Tensor, torch.Tensor | None, int, list[SamplingParams], list[random.Random]]:
    device = model.tok_emb.weight.device
    idx, pad = left_pad(prompts, eos_id, device)
    ctx = model.cfg.context_length
    if idx.shape[1] > ctx:
        raise TinyStoriesError(f"prompt of {idx.shape[1]} tokens is longer than the model's context of {ctx}")
    rows = row_params(params, len(prompts))
    steps = min(max(p.max_new_tokens for p in rows), ctx - idx.shape[1])
    return idx, (pad if int(pad.max()) > 0 else None), steps, rows, [new_generator(p) for p in rows]


def _record(out: list[list[int]], nxt: torch.Tensor, alive: torch.Tensor, rows: list[SamplingParams],
            eos_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Append each live row's token: (rows that got one, rows still alive after it)."""
    stops = torch.tensor([p.stop_at_eos for p in rows], device=nxt.device)
    got = alive & ~((nxt == eos_id) & stops)
    tokens = nxt.tolist()  # one device sync per step, not one per row
    for row in got.nonzero().flatten().tolist():
        out[row].append(tokens[row])
    full = torch.tensor([len(o) >= p.max_new_tokens for o, p in zip(out, rows)], device=nxt.device)
    return got, got & ~full


@torch.inference_mode()
def generate(model: GPT, prompts: list[list[int]], params: SamplingParams | Sequence[SamplingParams],
             eos_id: int, on_tokens: TokenCallback | None = None) -> list[list[int]]:
    """New tokens for each prompt (EOS excluded). Stops at EOS, `max_new_tokens` or the context end.

    `on_tokens(tokens [B], alive [B] bool)` is called after every step, for streaming.
    """
    idx, pad, steps, rows, generators = _setup(model, prompts, params, eos_id)
    B = idx.shape[0]
    out: list[list[int]] = [[] for _ in range(B)]
    if steps == 0:
        return out
    cache = model.new_cache(B, idx.shape[1] + steps, pad)
    alive = torch.ones(B, dtype=torch.bool, device=idx.device)
    logits = model(idx, cache=cache)[0][:, -1]
    fast = decoder_for(model)  # the fused decode step (infer/fast.py), unless hooks must see it
    for step in range(steps):
        nxt = sample(logits, rows, generators)
        got, alive = _record(out, nxt, alive, rows, eos_id)
        if on_tokens is not None:
            on_tokens(nxt, got)
        if not bool(alive.any()) or step == steps - 1:
            break
        logits = fast.step(nxt, cache) if fast is not None else model(nxt[:, None], cache=cache)[0][:, -1]
    return out


@torch.inference_mode()
def generate_reference(model: GPT, prompts: list[list[int]], params: SamplingParams | Sequence[SamplingParams],
                       eos_id: int) -> list[list[int]]:
    """The same as `generate`, recomputing every position at every step (no cache)."""
    idx, pad, steps, rows, generators = _setup(model, prompts, params, eos_id)
    B = idx.shape[0]
    out: list[list[int]] = [[] for _ in range(B)]
    alive = torch.ones(B, dtype=torch.bool, device=idx.device)
    for _ in range(steps):
        logits, _ = model(idx, pad=pad)
        nxt = sample(logits[:, -1], rows, generators)
        _, alive = _record(out, nxt, alive, rows, eos_id)
        if not bool(alive.any()):
            break
        idx = torch.cat([idx, nxt[:, None]], dim=1)
    return out


def complete(model: GPT, tokenizer: Tokenizer, texts: list[str], params: SamplingParams | Sequence[SamplingParams],
             on_tokens: TokenCallback | None = None) -> list[str]:
    """Text in, continuations out. An empty text starts a story from scratch (after EOS).

    Each continuation ends before its first stop string (`SamplingParams.stop`, text that
    token ids cannot see), cut by the same `TextStream` that the server's rows use.
    """
    prompts = tokenizer.encode_stories(texts)
    rows = row_params(params, len(texts))
    out = generate(model, prompts, rows, tokenizer.eos_id, on_tokens)
    return [TextStream(p.stop).push(ids, tokenizer.decode, final=True) for ids, p in zip(out, rows)]
