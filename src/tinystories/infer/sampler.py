"""The sampler: one next token per row, the same rule on every path.

Per row, with its own `SamplingParams` and its own random generator:

* temperature 0: the most likely token;
* otherwise: divide the logits by the temperature; keep the `top_k` most likely tokens (if
  set); of those, keep the smallest most-likely set whose probability reaches `top_p` (the
  first token always stays), and every token tied with the last one kept; renormalise; draw
  one uniform number u from the row's generator and take the first kept token, in token-id
  order, at which the cumulative probability passes u (inverse CDF: one random number per
  row, whatever the vocabulary).

`reference_probs` is that definition written plainly over the whole vocabulary. `sample`
draws the same tokens faster, in one of two ways (the tests check each against it):

* in C (`sampler.c`, built once per machine by `cbuild`), where it builds: per row, a
  histogram and a quickselect in one of its bins find the top-k and top-p cuts, in expected
  O(V), and one pass draws;
* else as PyTorch operations: a trained model's nucleus is a few dozen tokens, so they look at
  the 64 most likely first and sort a row's whole vocabulary only when those miss its top_p
  (flat distributions: random weights, high temperatures). That sort needs the values only,
  not their ids: the cut is a value, and the kept tokens are those at or above it.

A row's generator is a `random.Random` seeded with the row's seed: one uniform number per
step from it costs ~0.1 us, where a `torch.Generator` draw and its `.item()` cost ~2 us, which
at 64 rows per step was a visible part of a decode step.
"""

from __future__ import annotations

import ctypes
import random
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import numpy as np
import torch

from tinystories import cbuild
from tinystories.infer.params import SamplingParams

FAST_CANDIDATES = 64
SOURCE = Path(__file__).with_name("sampler.c")


@cache
def library() -> ctypes.CDLL | None:
    """`sampler.c` built, or None where it cannot be (no compiler, ``TINYSTORIES_NATIVE=0``)."""
    lib, _ = cbuild.load(SOURCE)
    if lib is not None:
        lib.sample_rows.restype = None
        lib.sample_rows.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int, *[ctypes.c_void_p] * 5,
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
        rows.append(x.log_softmax(-1).exp())
    return torch.stack(rows)


def draw(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse CDF: per row, the first index where the cumulative `probs` pass u * total."""
    cdf = probs.cumsum(-1)
    return torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True)[:, 0].clamp_(max=probs.shape[-1] - 1)


def _kept(x: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor, width: int
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """The `width` most likely tokens of each row of scaled logits `x` with their probability
    after top-k and top-p (0 for the cut ones): (probs, ids), sorted by id."""
    V = x.shape[-1]
    values, ids = torch.topk(x, width, dim=-1) if width < V else torch.sort(x, dim=-1, descending=True)
    rank = torch.arange(width, device=x.device)[None]
    survives = rank < top_k[:, None]  # top_k here is in 1..V
    norm = torch.where(top_k[:, None] >= V, x.logsumexp(-1, keepdim=True),
                       values.masked_fill(~survives, float("-inf")).logsumexp(-1, keepdim=True))
    probs = (values - norm).exp().masked_fill_(~survives, 0.0)
    probs = probs.masked_fill(values < _last_kept(values, probs, survives, top_p), 0.0)
    ids, order = ids.sort(-1)
    return probs.gather(-1, order), ids


def _last_kept(values: torch.Tensor, probs: torch.Tensor, survives: torch.Tensor, top_p: torch.Tensor
               ) -> torch.Tensor:
    """The value of each row's last kept token [B, 1], from its values sorted largest first, their
    probabilities, and which survive top-k: the kept ones are a prefix (at least one token)."""
    kept = (survives & ((probs.cumsum(-1) - probs) < top_p[:, None])).sum(-1, keepdim=True)
    return values.gather(-1, kept - 1)


def _argmax(x: torch.Tensor) -> torch.Tensor:
    """Each row's most likely token (the first of ties, as torch's). On the CPU numpy's, whose call
    costs ~1 us where torch's costs ~7 (a tenth of a token at the demo's shape)."""
    if x.device.type != "cpu" or x.dtype != torch.float32:
        return x.argmax(-1)
    return torch.from_numpy(x.detach().numpy().argmax(-1))


def _sorted_values(x: torch.Tensor) -> torch.Tensor:
    """Each row's values, largest first, without their ids. On the CPU numpy's vectorised sort
    takes about a quarter of the time of torch.sort, which computes the ids too (32K values: 0.6
    vs 2.3 ms on a Zen 4 AMD EPYC)."""
    if x.device.type != "cpu":
        return torch.sort(x, dim=-1, descending=True).values
    return torch.from_numpy(np.ascontiguousarray(np.sort(x.detach().float().numpy(), axis=-1)[:, ::-1]))


def _kept_in_order(x: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """`_kept` over the whole vocabulary, as unnormalised probabilities [B, V] in id order: the
    sorted values give the cut, and every token at or above it stays."""
    V = x.shape[-1]
    values = _sorted_values(x)
    survives = torch.arange(V, device=x.device)[None] < top_k[:, None]
    if bool(survives[:, -1].all()):  # no top-k (the usual case): half the passes over [B, V]
        norm = x.logsumexp(-1, keepdim=True)
        probs = (values - norm).exp()
    else:
        norm = torch.where(top_k[:, None] >= V, x.logsumexp(-1, keepdim=True),
                           values.masked_fill(~survives, float("-inf")).logsumexp(-1, keepdim=True))
        probs = (values - norm).exp().masked_fill_(~survives, 0.0)
    return (x - norm).exp().masked_fill_(x < _last_kept(values, probs, survives, top_p), 0.0)


def sample(logits: torch.Tensor, params: Sequence[SamplingParams], generators: Sequence[random.Random],
           logprobs: torch.Tensor | None = None, best: torch.Tensor | None = None) -> torch.Tensor:
    """Next token ids [B] from last-position logits [B, V], row i by params[i] and generators[i].

    `logprobs`: the caller's `log_softmax(logits)` if it has it (the server reports them), reused
    for rows at temperature 1; `best`: each row's most likely token, ``logits.argmax(-1)``, if the
    caller has it (the decode step finds it: `DecodeStep.step`), for greedy rows. The result is
    the same either way.
    """
    V = logits.shape[-1]
    greedy = [i for i, p in enumerate(params) if p.greedy]
    if len(greedy) == len(params):  # every row greedy (a single greedy stream): no gathers
        return best if best is not None else _argmax(logits)
    out = torch.empty(len(params), dtype=torch.long, device=logits.device)
    if greedy:
        out[greedy] = best[greedy] if best is not None else _argmax(logits[greedy])
    rows = [i for i, p in enumerate(params) if not p.greedy]
    if not rows:
        return out
    draws = [generators[i].random() for i in rows]
    lib = library() if logits.device.type == "cpu" else None
    if lib is not None:
        out[rows] = _sample_in_c(lib, logits if len(rows) == len(params) else logits[rows],
                                 [params[i] for i in rows], draws)
        return out
    u = torch.tensor(draws, device=logits.device)
    temps = [params[i].temperature for i in rows]
    if logprobs is not None and all(t == 1 for t in temps):
        lp = logprobs[rows] if len(rows) < len(params) else logprobs
    else:
        lp = (logits[rows].float() / torch.tensor(temps, device=logits.device)[:, None]).log_softmax(-1)
    cut = [j for j, i in enumerate(rows) if params[i].filters]
    whole = [j for j, i in enumerate(rows) if not params[i].filters]
    chosen = torch.empty(len(rows), dtype=torch.long, device=logits.device)
    if whole:  # nothing cut: draw from the full distribution, already in id order
        chosen[whole] = draw((lp if len(whole) == len(rows) else lp[whole]).exp(), u[whole])
    if cut:
        top_k = torch.tensor([params[rows[j]].top_k or V for j in cut], device=logits.device).clamp_(max=V)
        top_p = torch.tensor([params[rows[j]].top_p for j in cut], device=logits.device)
        xc, width = lp[cut], min(FAST_CANDIDATES, V)
        probs, ids = _kept(xc, top_k, top_p, width)
        # Rows the fast look misses: top_k beyond it, or a nucleus wider than it (flat distributions).
        short = (top_k > width) & ((top_k < V) | (probs.sum(-1) < top_p))
        if bool(short.any()):
            s = short.nonzero()[:, 0]
            full = _kept_in_order(xc[s], top_k[s], top_p[s])
            chosen[[cut[j] for j in s.tolist()]] = draw(full, u[cut][s])
            keep = (~short).nonzero()[:, 0]
            probs, ids, cut = probs[keep], ids[keep], [cut[j] for j in keep.tolist()]
        if cut:
            chosen[cut] = ids.gather(-1, draw(probs, u[cut])[:, None])[:, 0]
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
                torch.tensor(u, dtype=torch.float64)]
    out = torch.empty(B, dtype=torch.int64)
    lib.sample_rows(x.data_ptr(), B, V, *(t.data_ptr() for t in settings), out.data_ptr(), torch.get_num_threads())
    if bool((out < 0).any()):
        raise MemoryError(f"no memory for the sampler's work on a vocabulary of {V}")
    return out
