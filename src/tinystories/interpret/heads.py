"""Measures that tell attention heads apart, and a rule-based classification.

For every head, averaged over the queries of some stories (queries at positions >= 2,
so "previous token" and "first token" are different keys):

* ``mean_distance``: expected distance t - j of the attended key, in tokens;
* ``entropy``: the attention entropy divided by log(t + 1), its maximum for query t:
  0 = all weight on one key, 1 = uniform over everything visible;
* ``prev_token``: weight on key t - 1;
* ``first_token``: weight on key 0 (the end-of-text token that starts every story: the
  "attention sink" many heads park unused attention on);
* ``semantic``: weight on *related* earlier keys (at distance >= 2 and not key 0): a
  pronoun's query on name tokens, or a word on earlier copies of the same token. Only
  queries that have such a key count; ``semantic_lift`` divides it by the weight
  uniform attention would give them, so a head that spreads evenly scores ~1.

`classify` then names each head, first rule that matches (`HeadThresholds`):
``sink`` (first_token >= 0.5), ``previous-token`` (prev_token >= 0.5), ``semantic``
(semantic >= 0.25 and lift >= 3), ``positional-local`` (mean_distance <= 4 tokens),
else ``diffuse`` (spread over the whole story).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from tqdm import tqdm

from tinystories.interpret.hooks import pattern_names, run_with_cache
from tinystories.interpret.lexicon import Lexicon, token_words
from tinystories.model.gpt import GPT

CLASSES = ("previous-token", "positional-local", "sink", "semantic", "diffuse")
MEASURES = ("mean_distance", "entropy", "prev_token", "first_token", "semantic", "semantic_lift")


@dataclass
class HeadThresholds:
    sink: float = 0.5  # first_token at least this
    previous: float = 0.5  # prev_token at least this
    semantic: float = 0.25  # semantic at least this ...
    semantic_lift: float = 3.0  # ... and this many times uniform attention's share
    local_distance: float = 4.0  # mean_distance at most this many tokens


@dataclass
class HeadStats:
    """Per-head measures, each a [n_layer, n_head] array, and each head's class."""

    mean_distance: np.ndarray
    entropy: np.ndarray
    prev_token: np.ndarray
    first_token: np.ndarray
    semantic: np.ndarray
    semantic_lift: np.ndarray
    labels: list[list[str]]
    thresholds: HeadThresholds

    def rows(self) -> list[dict[str, object]]:
        """One dict per head (for tables and JSON)."""
        n_layer, n_head = self.entropy.shape
        return [{"layer": layer, "head": head, "class": self.labels[layer][head],
                 **{m: round(float(getattr(self, m)[layer, head]), 4) for m in MEASURES}}
                for layer in range(n_layer) for head in range(n_head)]

    def to_json(self) -> dict[str, object]:
        return {"thresholds": asdict(self.thresholds), "heads": self.rows()}


def related_keys(ids: list[int], token_strings: list[str], lexicon: Lexicon) -> torch.Tensor:
    """Boolean [T, T]: key j is semantically related to query t (pronoun -> name, same token)."""
    words = token_words(token_strings)
    classes = [lexicon.word_class(w) if w else "" for w in words]
    ids_t = torch.tensor(ids)
    is_name = torch.tensor([c == "name" for c in classes])
    is_pronoun = torch.tensor([c == "pronoun" for c in classes])
    is_word = torch.tensor([bool(w) for w in words])
    same_token = (ids_t[:, None] == ids_t[None, :]) & is_word[:, None]
    related = same_token | (is_pronoun[:, None] & is_name[None, :])
    T = len(ids)
    t = torch.arange(T)
    return related & (t[None, :] <= t[:, None] - 2) & (t[None, :] >= 1)


def classify(stats: dict[str, np.ndarray], th: HeadThresholds) -> list[list[str]]:
    n_layer, n_head = stats["entropy"].shape
    labels = []
    for layer in range(n_layer):
        row = []
        for head in range(n_head):
            m = {k: float(v[layer, head]) for k, v in stats.items()}
            if m["first_token"] >= th.sink:
                row.append("sink")
            elif m["prev_token"] >= th.previous:
                row.append("previous-token")
            elif m["semantic"] >= th.semantic and m["semantic_lift"] >= th.semantic_lift:
                row.append("semantic")
            elif m["mean_distance"] <= th.local_distance:
                row.append("positional-local")
            else:
                row.append("diffuse")
        labels.append(row)
    return labels


@torch.no_grad()
def head_stats(model: GPT, sequences: list[list[int]], token_strings: list[list[str]],
               lexicon: Lexicon, thresholds: HeadThresholds | None = None, progress: bool = False) -> HeadStats:
    """Measure every head on `sequences` (token ids, each starting a story) and classify it."""
    th = thresholds or HeadThresholds()
    L, H = model.cfg.n_layer, model.cfg.n_head
    sums = {m: torch.zeros(L, H, dtype=torch.float64) for m in ("mean_distance", "entropy", "prev_token",
                                                               "first_token", "semantic", "uniform")}
    n_queries = n_semantic = 0
    device = next(model.parameters()).device
    patterns = pattern_names(model)
    pairs = zip(sequences, token_strings, strict=True)
    for ids, strings in tqdm(pairs, total=len(sequences), desc="attention heads", unit="story", disable=not progress):
        T = len(ids)
        if T < 3:
            continue
        _, cache = run_with_cache(model, torch.tensor([ids], device=device), names=patterns)
        p = cache.stack("attn")[:, 0, :, 2:].double().cpu()  # [L, H, Q, T], queries t >= 2
        t = torch.arange(2, T, dtype=torch.float64)
        dist = (t[:, None] - torch.arange(T, dtype=torch.float64)[None, :]).clamp(min=0)
        sums["mean_distance"] += (p * dist).sum((-1, -2))
        plogp = torch.where(p > 0, p * p.log(), torch.zeros_like(p)).sum(-1)
        sums["entropy"] += (-plogp / (t + 1).log()).sum(-1)
        q = torch.arange(T - 2)
        sums["prev_token"] += p[..., q, q + 1].sum(-1)
        sums["first_token"] += p[..., 0].sum(-1)
        n_queries += T - 2
        related = related_keys(ids, strings, lexicon)[2:]
        has = related.any(-1)
        if has.any():
            sums["semantic"] += (p * related).sum(-1)[..., has].sum(-1)
            sums["uniform"] += (related.sum(-1) / (t + 1))[has].sum()
            n_semantic += int(has.sum())
    if not n_queries:
        raise ValueError("need at least one sequence of 3 or more tokens to measure attention heads")
    means = {m: (s / n_queries).float().numpy() for m, s in sums.items()
             if m not in ("semantic", "uniform")}
    semantic = (sums["semantic"] / max(n_semantic, 1)).float().numpy()
    uniform = float(sums["uniform"][0, 0]) / max(n_semantic, 1)
    means["semantic"] = semantic
    means["semantic_lift"] = semantic / uniform if uniform > 0 else np.zeros_like(semantic)
    return HeadStats(**means, labels=classify(means, th), thresholds=th)
