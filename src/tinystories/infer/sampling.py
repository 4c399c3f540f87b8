"""Batched story generation: greedy, temperature, top-k and top-p, with a KV cache.

`generate` is the fast path. `generate_reference` recomputes the whole sequence at every
step with no cache: slow and obviously right, and the tests check the two agree.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from tinystories.errors import TinyStoriesError
from tinystories.model.gpt import GPT


@dataclass
class SamplingConfig:
    max_new_tokens: int = 200
    temperature: float = 1.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    seed: int | None = None
    stop_at_eos: bool = True

    def validate(self) -> None:
        if self.max_new_tokens < 0:
            raise TinyStoriesError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise TinyStoriesError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise TinyStoriesError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise TinyStoriesError(f"top_p must be in (0, 1], got {self.top_p}")


def filter_logits(logits: torch.Tensor, cfg: SamplingConfig) -> torch.Tensor:
    """Scale by temperature and mask (-inf) what top-k / top-p exclude. logits: [B, V]."""
    logits = logits.float() / cfg.temperature
    if cfg.top_k and cfg.top_k < logits.size(-1):
        kth = torch.topk(logits, cfg.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if cfg.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        # Drop a token when the tokens before it already reach top_p; the first always stays.
        drop_sorted = (cumulative - sorted_logits.softmax(-1)) >= cfg.top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def candidates(logits: torch.Tensor, cfg: SamplingConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The tokens `filter_logits` keeps, with their probabilities: (probs [B, K], ids [B, K]).

    The fast path of sampling: instead of sorting the whole vocabulary for top-p, take the
    top 64 logits, and sort the whole vocabulary only when that misses top_p in some row (the
    nucleus of a trained model is usually a few dozen tokens). The tests check the result equals
    `softmax(filter_logits(logits))` restricted to the returned ids.
    """
    logits = logits.float() / cfg.temperature
    vocab = logits.size(-1)
    limit = cfg.top_k if cfg.top_k and cfg.top_k < vocab else vocab
    if limit == vocab and cfg.top_p >= 1.0:
        return logits.softmax(-1), torch.arange(vocab, device=logits.device).expand_as(logits)
    if limit < vocab:  # top-k: its survivors, renormalised, are what top-p then cuts
        values, ids = torch.topk(logits, limit, dim=-1)
        probs = values.softmax(-1)
    else:
        norm = logits.logsumexp(-1, keepdim=True)
        values, ids = torch.topk(logits, min(64, vocab), dim=-1)  # sorted, largest first
        probs = (values - norm).exp()
        if bool((probs.sum(-1) < cfg.top_p).any()):  # a flat distribution: sort the whole vocabulary once
            values, ids = torch.sort(logits, dim=-1, descending=True)
            probs = (values - norm).exp()
    if cfg.top_p < 1.0:
        before = probs.cumsum(-1) - probs
        probs = probs.masked_fill(before >= cfg.top_p, 0.0)
    return probs / probs.sum(-1, keepdim=True), ids


def sample_next(logits: torch.Tensor, cfg: SamplingConfig, generator: torch.Generator | None) -> torch.Tensor:
    """Next token ids [B] from last-position logits [B, V]."""
    if cfg.temperature == 0:
        return logits.argmax(-1)
    probs, ids = candidates(logits, cfg)
    # Inverse-CDF sampling with one uniform per row: far cheaper than torch.multinomial on wide rows.
    cdf = probs.cumsum(-1)
    u = torch.rand(probs.shape[0], 1, generator=generator, device=probs.device) * cdf[:, -1:]
    choice = torch.searchsorted(cdf, u, right=True).clamp_(max=probs.shape[-1] - 1)
    return ids.gather(-1, choice).squeeze(-1)


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


def _setup(model: GPT, prompts: list[list[int]], cfg: SamplingConfig, eos_id: int
           ) -> tuple[torch.Tensor, torch.Tensor | None, int, torch.Generator | None]:
    cfg.validate()
    device = model.tok_emb.weight.device
    idx, pad = left_pad(prompts, eos_id, device)
    ctx = model.cfg.context_length
    if idx.shape[1] > ctx:
        raise TinyStoriesError(f"prompt of {idx.shape[1]} tokens is longer than the model's context of {ctx}")
    steps = min(cfg.max_new_tokens, ctx - idx.shape[1])
    generator = None
    if cfg.seed is not None:
        generator = torch.Generator(device=device).manual_seed(cfg.seed)
    return idx, (pad if int(pad.max()) > 0 else None), steps, generator


TokenCallback = Callable[[torch.Tensor, torch.Tensor], None]


@torch.inference_mode()
def generate(model: GPT, prompts: list[list[int]], cfg: SamplingConfig, eos_id: int,
             on_tokens: TokenCallback | None = None) -> list[list[int]]:
    """New tokens for each prompt (EOS excluded). Stops at EOS, `max_new_tokens` or the context end.

    `on_tokens(tokens [B], alive [B] bool)` is called after every step, for streaming.
    """
    idx, pad, steps, generator = _setup(model, prompts, cfg, eos_id)
    B = idx.shape[0]
    out: list[list[int]] = [[] for _ in range(B)]
    if steps == 0:
        return out
    cache = model.new_cache(B, idx.shape[1] + steps, pad)
    alive = torch.ones(B, dtype=torch.bool, device=idx.device)
    logits, _ = model(idx, cache=cache)
    for step in range(steps):
        nxt = sample_next(logits[:, -1], cfg, generator)
        if cfg.stop_at_eos:
            alive = alive & (nxt != eos_id)
        tokens = nxt.tolist()  # one device sync per step, not one per row
        for row in alive.nonzero().flatten().tolist():
            out[row].append(tokens[row])
        if on_tokens is not None:
            on_tokens(nxt, alive)
        if not bool(alive.any()) or step == steps - 1:
            break
        logits, _ = model(nxt[:, None], cache=cache)
    return out


@torch.inference_mode()
def generate_reference(model: GPT, prompts: list[list[int]], cfg: SamplingConfig, eos_id: int) -> list[list[int]]:
    """The same as `generate`, recomputing every position at every step (no cache)."""
    idx, pad, steps, generator = _setup(model, prompts, cfg, eos_id)
    B = idx.shape[0]
    out: list[list[int]] = [[] for _ in range(B)]
    alive = torch.ones(B, dtype=torch.bool, device=idx.device)
    for _ in range(steps):
        logits, _ = model(idx, pad=pad)
        nxt = sample_next(logits[:, -1], cfg, generator)
        if cfg.stop_at_eos:
            alive = alive & (nxt != eos_id)
        tokens = nxt.tolist()  # one device sync per step, not one per row
        for row in alive.nonzero().flatten().tolist():
            out[row].append(tokens[row])
        if not bool(alive.any()):
            break
        idx = torch.cat([idx, nxt[:, None]], dim=1)
    return out


def complete(model: GPT, tokenizer, texts: list[str], cfg: SamplingConfig,
             on_tokens: TokenCallback | None = None) -> list[str]:
    """Text in, continuations out. An empty text starts a story from scratch (after EOS)."""
    prompts = [[tokenizer.eos_id, *tokenizer.encode(t)] for t in texts]
    return [tokenizer.decode(ids) for ids in generate(model, prompts, cfg, tokenizer.eos_id, on_tokens)]
