"""Top-activating tokens of MLP neurons (or of any direction in neuron space) over a corpus.

The search streams the corpus in batches and keeps, per unit, only the `k` best
activations seen so far (values, story index, position, token): memory is
O(k * units + one batch) however large the corpus. The paper's baseline for "neurons are
interpretable" is the same search along random directions of neuron space
(`random_directions`): if neurons are more meaningful than arbitrary mixtures of them,
their top tokens look more coherent (and `distinct_tokens` is lower).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
from tqdm import tqdm

from tinystories.interpret.hooks import hook_name, run_with_cache
from tinystories.model.gpt import GPT
from tinystories.tokenizer import EOS_TEXT, Tokenizer


@dataclass
class TopK:
    """Per unit (column), the k best activations in descending order ([k, units] each)."""

    values: torch.Tensor
    seq: torch.Tensor  # index of the story in the corpus (-1 = empty slot)
    pos: torch.Tensor  # token position in the story (0 = the leading end-of-text token)
    token: torch.Tensor  # token id at that position

    def distinct_tokens(self) -> torch.Tensor:
        """Per unit, the fraction of distinct token ids among its top k (1 = all different)."""
        filled = self.seq >= 0
        return torch.tensor([len(set(self.token[filled[:, u], u].tolist())) / max(int(filled[:, u].sum()), 1)
                             for u in range(self.values.shape[1])])


def token_texts(tokenizer: Tokenizer, ids: list[int]) -> list[str]:
    """Each token's text for displays; the end-of-text token (which decodes to "") by name."""
    return [EOS_TEXT if i == tokenizer.eos_id else t for i, t in zip(ids, tokenizer.token_strings(ids), strict=True)]


def story_ids(tokenizer: Tokenizer, story: str, max_len: int) -> list[int]:
    """A story as the model sees it (`encode_story`), cut to the context."""
    return tokenizer.encode_story(story)[:max_len]


def corpus_batches(stories: Sequence[str], tokenizer: Tokenizer, max_len: int, batch_size: int
                   ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(ids [B, T] right-padded, lengths [B], story indices [B]) for the stories in order."""
    for start in range(0, len(stories), batch_size):
        chunk = stories[start:start + batch_size]
        rows = [ids[:max_len] for ids in tokenizer.encode_stories(list(chunk))]
        T = max(len(r) for r in rows)
        idx = torch.full((len(rows), T), tokenizer.eos_id, dtype=torch.long)
        for i, r in enumerate(rows):
            idx[i, :len(r)] = torch.tensor(r)
        yield idx, torch.tensor([len(r) for r in rows]), torch.arange(start, start + len(rows))


def random_directions(n_neurons: int, n: int, seed: int) -> torch.Tensor:
    """`n` random unit vectors of neuron space, as columns [n_neurons, n] (seeded)."""
    d = torch.randn(n_neurons, n, generator=torch.Generator().manual_seed(seed))
    return d / d.norm(dim=0, keepdim=True)


@torch.no_grad()
def unit_activations(model: GPT, idx: torch.Tensor, layer: int,
                     directions: torch.Tensor | None = None) -> torch.Tensor:
    """MLP neuron activations of `layer` [B, T, ffn], or their projections on `directions` [B, T, n]."""
    if not 0 <= layer < model.cfg.n_layer:
        raise ValueError(f"layer {layer} does not exist: the model has layers 0..{model.cfg.n_layer - 1}")
    name = hook_name("mlp_post", layer)
    _, cache = run_with_cache(model, idx, names=[name])
    acts = cache[name].float()
    return acts if directions is None else acts @ directions.to(acts.device)


def top_rows(merged: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per column, the `k` largest values of `merged` [N, U] and their row indices, descending.

    Ties go to the lower row. Rows are (kept so far, then the batch in corpus order), so ties
    go to the earliest token of the corpus and the result never depends on the batch size.
    `topk` is fast but picks arbitrarily among ties; a full stable sort is exact but ~5x
    slower, so it only runs for columns where a tie straddles the k-th place.
    """
    values, best = merged.topk(k, dim=0)
    # Within the k: lowest row first, then a stable sort by value keeps that order among ties.
    best, order = best.sort(dim=0)
    values = values.gather(0, order)
    values, order = values.sort(dim=0, descending=True, stable=True)
    best = best.gather(0, order)
    tied = (merged >= values[-1]).sum(0) > k  # more candidates than places at the boundary value
    if tied.any():
        cols = tied.nonzero().squeeze(1)
        v, b = merged[:, cols].sort(dim=0, descending=True, stable=True)
        values[:, cols], best[:, cols] = v[:k], b[:k]
    return values, best


ActsFn = Callable[[torch.Tensor], torch.Tensor]  # token ids [B, T] -> unit activations [B, T, units]


@torch.no_grad()
def top_activations(model: GPT, batches: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
                    layer: int, k: int = 10, directions: torch.Tensor | None = None,
                    progress: tqdm | None = None) -> TopK:
    """Stream `batches` (from `corpus_batches`) and keep each unit's `k` highest activations."""
    n_units = directions.shape[1] if directions is not None else model.cfg.ffn_dim
    return stream_top_k(lambda idx: unit_activations(model, idx, layer, directions), batches, n_units,
                        next(model.parameters()).device, k, progress)


@torch.no_grad()
def stream_top_k(acts_fn: ActsFn, batches: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
                 n_units: int, device: torch.device, k: int = 10, progress: tqdm | None = None) -> TopK:
    """`top_activations` for any units: `acts_fn` gives their activations (neurons, SAE features, ...)."""
    values = torch.full((k, n_units), float("-inf"))
    seq = torch.full((k, n_units), -1, dtype=torch.long)
    pos = torch.full((k, n_units), -1, dtype=torch.long)
    token = torch.full((k, n_units), -1, dtype=torch.long)
    for idx, lengths, seq_ids in batches:
        B, T = idx.shape
        acts = acts_fn(idx.to(device)).float().cpu()  # [B, T, U]
        valid = torch.arange(T)[None, :] < lengths[:, None]
        acts = acts.masked_fill(~valid[..., None], float("-inf")).reshape(B * T, n_units)
        cand_seq = seq_ids[:, None].expand(B, T).reshape(-1)
        cand_pos = torch.arange(T).repeat(B)
        cand_tok = idx.reshape(-1)
        values, best = top_rows(torch.cat([values, acts]), k)
        from_batch = best >= k  # rows k.. of `merged` are this batch's candidates
        cand = (best - k).clamp(min=0)
        keep = best.clamp(max=k - 1)
        seq = torch.where(from_batch, cand_seq[cand], seq.gather(0, keep))
        pos = torch.where(from_batch, cand_pos[cand], pos.gather(0, keep))
        token = torch.where(from_batch, cand_tok[cand], token.gather(0, keep))
        if progress is not None:
            progress.update(B)
    empty = values == float("-inf")  # fewer than k tokens in the corpus (or only padding)
    return TopK(values, seq.masked_fill(empty, -1), pos.masked_fill(empty, -1), token.masked_fill(empty, -1))


@dataclass
class Example:
    """One top activation in context: tokens around it and the unit's activation on each."""

    tokens: list[str]
    acts: list[float]
    focus: int  # index in `tokens` of the top-activating token
    value: float


@torch.no_grad()
def unit_examples(model: GPT, tokenizer: Tokenizer, stories: Sequence[str], top: TopK, layer: int,
                  units: list[int], directions: torch.Tensor | None = None, before: int = 12,
                  after: int = 4) -> dict[int, list[Example]]:
    """For each of `units`, its top activations with `before`/`after` tokens of context."""
    return context_examples(lambda idx: unit_activations(model, idx, layer, directions), tokenizer, stories, top,
                            units, model.cfg.context_length, next(model.parameters()).device, before, after)


@torch.no_grad()
def context_examples(acts_fn: ActsFn, tokenizer: Tokenizer, stories: Sequence[str], top: TopK, units: list[int],
                     max_len: int, device: torch.device, before: int = 12, after: int = 4
                     ) -> dict[int, list[Example]]:
    """`unit_examples` for any units: `acts_fn` gives their activations."""
    needed = sorted({int(s) for u in units for s in top.seq[:, u] if s >= 0})
    acts_by_story: dict[int, tuple[list[int], torch.Tensor]] = {}
    for s in needed:
        ids = story_ids(tokenizer, stories[s], max_len)
        acts = acts_fn(torch.tensor([ids], device=device))[0].float().cpu()
        acts_by_story[s] = (ids, acts)
    out: dict[int, list[Example]] = {}
    for u in units:
        examples = []
        for rank in range(top.values.shape[0]):
            s, p = int(top.seq[rank, u]), int(top.pos[rank, u])
            if s < 0:
                continue
            ids, acts = acts_by_story[s]
            lo, hi = max(0, p - before), min(len(ids), p + after + 1)
            examples.append(Example(tokens=token_texts(tokenizer, ids[lo:hi]),
                                    acts=acts[lo:hi, u].tolist(), focus=p - lo,
                                    value=float(top.values[rank, u])))
        out[u] = examples
    return out
