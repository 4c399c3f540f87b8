"""The sampler: one next token per row, the same rule on every path.

Per row, with its own `SamplingParams` and its own random generator:

* temperature 0: the most likely token;
* otherwise: divide the logits by the temperature; keep the `top_k` most likely tokens (if
  set); of those, keep the smallest most-likely set whose probability reaches `top_p` (the
  first token always stays); renormalise; draw one uniform number u from the row's
  generator and take the first kept token, in token-id order, at which the cumulative
  probability passes u (inverse CDF: one random number per row, whatever the vocabulary).

`reference_probs` is that definition written plainly over the whole vocabulary. `sample`
draws the same tokens faster: a trained model's nucleus is a few dozen tokens, so it looks at
the 64 most likely first and sorts a row's whole vocabulary only when those miss its top_p.
The tests check the two agree.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tinystories.infer.params import SamplingParams

FAST_CANDIDATES = 64


def new_generator(params: SamplingParams, device: torch.device | str = "cpu") -> torch.Generator:
    """The row's generator, seeded with its seed (or a random one drawn from torch's global RNG)."""
    seed = params.row_seed()
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,)).item())
    return torch.Generator(device="cpu").manual_seed(seed)


def reference_probs(logits: torch.Tensor, params: Sequence[SamplingParams]) -> torch.Tensor:
    """The distribution each sampled row draws from [B, V] (the plain definition, row by row)."""
    rows = []
    for x, p in zip(logits.float(), params):
        x = x / p.temperature
        if 0 < p.top_k < x.numel():
            x = x.masked_fill(x < torch.topk(x, p.top_k).values[-1], float("-inf"))
        if p.top_p < 1:
            values, order = torch.sort(x, descending=True)
            probs = values.softmax(-1)
            x = x.clone()
            x[order[(probs.cumsum(-1) - probs) >= p.top_p]] = float("-inf")
        rows.append(x.softmax(-1))
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
    probs = probs.masked_fill((probs.cumsum(-1) - probs) >= top_p[:, None], 0.0)
    ids, order = ids.sort(-1)
    return probs.gather(-1, order), ids


def sample(logits: torch.Tensor, params: Sequence[SamplingParams], generators: Sequence[torch.Generator]
           ) -> torch.Tensor:
    """Next token ids [B] from last-position logits [B, V], row i by params[i] and generators[i]."""
    V = logits.shape[-1]
    out = logits.argmax(-1)
    rows = [i for i, p in enumerate(params) if not p.greedy]
    if not rows:
        return out
    u = torch.tensor([torch.rand(1, generator=generators[i]).item() for i in rows], device=logits.device)
    temperature = torch.tensor([params[i].temperature for i in rows], device=logits.device)
    x = logits[rows].float() / temperature[:, None]
    cut = [j for j, i in enumerate(rows) if params[i].filters]
    whole = [j for j, i in enumerate(rows) if not params[i].filters]
    chosen = torch.empty(len(rows), dtype=torch.long, device=logits.device)
    if whole:  # nothing cut: draw from the full distribution, already in id order
        chosen[whole] = draw(x[whole].softmax(-1), u[whole])
    if cut:
        top_k = torch.tensor([params[rows[j]].top_k or V for j in cut], device=logits.device).clamp_(max=V)
        top_p = torch.tensor([params[rows[j]].top_p for j in cut], device=logits.device)
        xc, width = x[cut], min(FAST_CANDIDATES, V)
        probs, ids = _kept(xc, top_k, top_p, width)
        # Rows the fast look misses: top_k beyond it, or a nucleus wider than it (flat distributions).
        short = (top_k > width) & ((top_k < V) | (probs.sum(-1) < top_p))
        if bool(short.any()):
            s = short.nonzero()[:, 0]
            full_probs, full_ids = _kept(xc[s], top_k[s], top_p[s], V)
            chosen[[cut[j] for j in s.tolist()]] = full_ids.gather(-1, draw(full_probs, u[cut][s])[:, None])[:, 0]
            keep = (~short).nonzero()[:, 0]
            probs, ids, cut = probs[keep], ids[keep], [cut[j] for j in keep.tolist()]
        if cut:
            chosen[cut] = ids.gather(-1, draw(probs, u[cut])[:, None])[:, 0]
    out[rows] = chosen
    return out
