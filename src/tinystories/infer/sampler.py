"""The sampler: one next token per row, the same rule on every path.

Per row, with its own `SamplingParams` and its own random generator:

* first, where `repetition_penalty` is set, each token already in the row (its prompt and its
  story so far, less the end-of-story token: `seen_tokens`) has its logit divided by the
  penalty if positive, else multiplied by it, as Hugging Face's `repetition_penalty` does
  (`penalize`); greedy rows too;
* temperature 0: the most likely token;
* otherwise: divide the logits by the temperature; keep the `top_k` most likely tokens (if
  set); of those, keep the smallest most-likely set whose probability reaches `top_p` (the
  first token always stays), and every token tied with the last one kept; of those, keep the
  tokens at least `min_p` times as likely as the most likely one; renormalise; draw one
  uniform number u from the row's generator and take the first kept token, in token-id order,
  at which the cumulative probability passes u (inverse CDF: one random number per row,
  whatever the vocabulary).

`sample` is the one place a next token is chosen, for every batch, greedy rows included.
`reference_probs` is the rule above written plainly over the whole vocabulary; `sample` draws the
same tokens in one of two ways (the tests check each against it):

* in C (`sampler.c`, built once per machine by `cbuild`), where it builds: per row, a
  histogram and a quickselect in one of its bins find the top-k and top-p cuts, in expected
  O(V), min-p's is one comparison, and one pass draws;
* else as PyTorch operations over the whole batch: each row's values sorted give its cuts,
  and every token at or above the cut stays.

A row's generator is a `random.Random` seeded with the row's seed: a uniform number from it
costs a small fraction of a `torch.Generator` draw and its `.item()`, which at 64 rows per
step was a visible part of a decode step (bench/README.md).
"""

from __future__ import annotations

import ctypes
import math
import random
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import torch

from tinystories import cbuild
from tinystories.infer.params import SamplingParams

SOURCE = Path(__file__).with_name("sampler.c")


@cache
def library() -> ctypes.CDLL | None:
    """`sampler.c` built, or None where it cannot be (no compiler, ``TINYSTORIES_NATIVE=0``)."""
    lib, _ = cbuild.load(SOURCE)
    if lib is not None:
        lib.sample_rows.restype = None
        lib.sample_rows.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int, *[ctypes.c_void_p] * 6,
                                    ctypes.c_int]
    return lib


def new_generator(params: SamplingParams) -> random.Random:
    """The row's generator, seeded with its seed (or a random one drawn from torch's global RNG,
    so `torch.manual_seed` makes unseeded rows reproducible too)."""
    seed = params.row_seed()
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,)).item())
    return random.Random(seed)


def reference_probs(logits: torch.Tensor, params: Sequence[SamplingParams]) -> torch.Tensor:
    """The distribution each sampled row draws from [B, V] (the plain definition, row by row)."""
    rows = []
    for x, p in zip(logits.float(), params):
        x = x / p.temperature
        if 0 < p.top_k < x.numel():
            x = x.masked_fill(x < torch.topk(x, p.top_k).values[-1], float("-inf"))
        if p.top_p < 1:
            values = torch.sort(x, descending=True).values
            probs = values.softmax(-1)
            kept = int(((probs.cumsum(-1) - probs) < p.top_p).sum())
            x = x.masked_fill(x < values[kept - 1], float("-inf"))
        if p.min_p > 0:  # p(token) >= min_p * p(most likely), in logits
            x = x.masked_fill(x < x.max() + math.log(p.min_p), float("-inf"))
        rows.append(x.log_softmax(-1).exp())
    return torch.stack(rows)


def seen_tokens(ids: Sequence[int], eos_id: int) -> list[int]:
    """The tokens a repetition penalty acts on: a row's prompt and story, less the end-of-story
    token (it starts every story; penalizing it would make stories run on)."""
    return [t for t in ids if t != eos_id]


def penalize(logits: torch.Tensor, params: Sequence[SamplingParams], seen: Sequence[Sequence[int]]
             ) -> torch.Tensor:
    """`logits` [B, V] with row i's `repetition_penalty` applied to the tokens in seen[i] (its
    prompt and new tokens); the same tensor where no row has a penalty."""
    rows = [i for i, p in enumerate(params) if p.penalized]
    if not rows:
        return logits
    logits = logits.float().clone()
    for i in rows:
        ids = torch.tensor(sorted(set(seen[i])), dtype=torch.long, device=logits.device)
        x, penalty = logits[i, ids], params[i].repetition_penalty
        logits[i, ids] = torch.where(x > 0, x / penalty, x * penalty)
    return logits


def draw(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse CDF: per row, the first index where the cumulative `probs` pass u * total."""
    cdf = probs.cumsum(-1)
    return torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True)[:, 0].clamp_(max=probs.shape[-1] - 1)


def _sample_in_torch(logits: torch.Tensor, params: Sequence[SamplingParams], u: list[float]) -> torch.Tensor:
    """`sample` for rows that draw (temperature > 0), as PyTorch operations on the logits' device."""
    V, device = logits.shape[-1], logits.device
    x = logits.float() / torch.tensor([p.temperature for p in params], device=device)[:, None]
    top_k = torch.tensor([p.top_k or V for p in params], device=device).clamp_(max=V)
    top_p = torch.tensor([p.top_p if p.top_p < 1 else float("inf") for p in params], device=device)
    values = torch.sort(x, dim=-1, descending=True).values
    survives = values >= values.gather(-1, top_k[:, None] - 1)  # the top k, and every token tied with the kth
    norm = values.masked_fill(~survives, float("-inf")).logsumexp(-1, keepdim=True)  # over the top k
    probs = (values - norm).exp().masked_fill_(~survives, 0.0)
    kept = (survives & ((probs.cumsum(-1) - probs) < top_p[:, None])).sum(-1, keepdim=True)  # a prefix, >= 1
    cut = values.gather(-1, kept - 1)  # the last kept token's value: every token at or above it stays
    if any(p.min_p > 0 for p in params):  # min-p, a cut relative to the most likely token
        floor = torch.tensor([math.log(p.min_p) if p.min_p > 0 else float("-inf") for p in params], device=device)
        cut = torch.maximum(cut, values[:, :1] + floor[:, None])
    return draw((x - norm).exp().masked_fill_(x < cut, 0.0), torch.tensor(u, device=device))


def sample(logits: torch.Tensor | None, params: Sequence[SamplingParams], generators: Sequence[random.Random],
           best: torch.Tensor | None = None, seen: Sequence[Sequence[int]] = ()) -> torch.Tensor:
    """Next token ids [B] from last-position logits [B, V], row i by params[i] and generators[i].

    `best`: every row's most likely token, where the decode step found it instead of the logits
    (`DecodeStep.argmax`: every row greedy, none penalized); then `logits` may be None. `seen`:
    each row's tokens so far (prompt and story), needed where a row has a `repetition_penalty`."""
    greedy = [i for i, p in enumerate(params) if p.greedy]
    if best is not None:
        assert len(greedy) == len(params) and not any(p.penalized for p in params), \
            "the most likely tokens alone serve unpenalized greedy rows only"
        return best
    assert logits is not None
    logits = penalize(logits, params, seen)
    if len(greedy) == len(params):
        return logits.argmax(-1)
    out = torch.empty(len(params), dtype=torch.long, device=logits.device)
    if greedy:
        out[greedy] = logits[greedy].argmax(-1)
    rows = [i for i, p in enumerate(params) if not p.greedy]
    draws = [generators[i].random() for i in rows]
    x = logits if len(rows) == len(params) else logits[rows]
    lib = library() if logits.device.type == "cpu" else None
    chosen = _sample_in_c(lib, x, [params[i] for i in rows], draws) if lib is not None else \
        _sample_in_torch(x, [params[i] for i in rows], draws)
    out[rows] = chosen
    return out


def _sample_in_c(lib: ctypes.CDLL, logits: torch.Tensor, params: Sequence[SamplingParams], u: list[float]
                 ) -> torch.Tensor:
    """`sample` for rows that draw (temperature > 0), by `sampler.c`."""
    x = logits.detach().float().contiguous()
    B, V = x.shape
    settings = [torch.tensor([p.temperature for p in params], dtype=torch.float32),
                torch.tensor([min(p.top_k, V) for p in params], dtype=torch.int32),
                torch.tensor([p.top_p for p in params], dtype=torch.float32),
                torch.tensor([p.min_p for p in params], dtype=torch.float32),
                torch.tensor(u, dtype=torch.float64)]
    out = torch.empty(B, dtype=torch.int64)
    lib.sample_rows(x.data_ptr(), B, V, *(t.data_ptr() for t in settings), out.data_ptr(), torch.get_num_threads())
    if bool((out < 0).any()):
        raise MemoryError(f"no memory for the sampler's work on a vocabulary of {V}")
    return out
