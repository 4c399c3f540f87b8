"""The streamed top-k neuron search equals a brute-force search over the whole corpus."""

from __future__ import annotations

import pytest
import torch

from tinystories.interpret.hooks import run_with_cache
from tinystories.interpret.neurons import (
    corpus_batches,
    random_directions,
    story_ids,
    top_activations,
    top_rows,
    unit_examples,
)
from tinystories.model.gpt import GPT, GPTConfig
from tinystories.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def model(tokenizer: Tokenizer) -> GPT:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, context_length=48, n_layer=2, n_head=2,
                          d_model=16, arch="modern")).eval()
    with torch.no_grad():  # larger weights than the init: activations that differ from token to token
        for p in model.parameters():
            p.mul_(10.0)
    return model


def brute_force(model: GPT, tokenizer: Tokenizer, stories: list[str], layer: int, k: int,
                directions: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All activations of every story, one story at a time, sorted per unit."""
    acts, where = [], []
    for s, story in enumerate(stories):
        ids = story_ids(tokenizer, story, model.cfg.context_length)
        a = run_with_cache(model, torch.tensor([ids]))[1]["mlp_post", layer][0]
        acts.append(a if directions is None else a @ directions)
        where += [(s, p) for p in range(len(ids))]
    values, order = torch.cat(acts).sort(dim=0, descending=True, stable=True)  # ties: earliest first
    where_t = torch.tensor(where)
    return values[:k], where_t[order[:k], 0], where_t[order[:k], 1]


@pytest.mark.parametrize("use_directions", [False, True])
def test_streamed_topk_matches_brute_force(model: GPT, tokenizer: Tokenizer, valid_stories: list[str],
                                           use_directions: bool) -> None:
    stories = valid_stories[:13]
    directions = random_directions(model.cfg.ffn_dim, 5, seed=7) if use_directions else None
    top = top_activations(model, corpus_batches(stories, tokenizer, 48, batch_size=4), layer=1, k=6,
                          directions=directions)
    values, seq, pos = brute_force(model, tokenizer, stories, 1, 6, directions)
    assert top.values.shape == (6, 5 if use_directions else model.cfg.ffn_dim)
    assert torch.equal(top.seq, seq) and torch.equal(top.pos, pos)
    torch.testing.assert_close(top.values, values, atol=1e-5, rtol=1e-5)
    for u in range(3):
        s, p = int(top.seq[0, u]), int(top.pos[0, u])
        assert top.token[0, u] == story_ids(tokenizer, stories[s], 48)[p]


def test_fewer_tokens_than_k_leaves_empty_slots(model: GPT, tokenizer: Tokenizer) -> None:
    top = top_activations(model, corpus_batches(["Hi.", "A cat."], tokenizer, 48, batch_size=2), layer=0, k=20)
    n_tokens = len(story_ids(tokenizer, "Hi.", 48)) + len(story_ids(tokenizer, "A cat.", 48))
    assert int((top.seq >= 0).sum(0).max()) == n_tokens
    assert torch.isinf(top.values[n_tokens:]).all() and (top.pos[n_tokens:] == -1).all()


def test_examples_show_the_top_token_in_context(model: GPT, tokenizer: Tokenizer, valid_stories: list[str]) -> None:
    stories = valid_stories[:5]
    top = top_activations(model, corpus_batches(stories, tokenizer, 48, batch_size=2), layer=0, k=3)
    ex = unit_examples(model, tokenizer, stories, top, layer=0, units=[0, 4], before=5, after=2)
    first = ex[4][0]
    assert first.value == pytest.approx(float(top.values[0, 4]))
    assert first.acts[first.focus] == pytest.approx(first.value, abs=1e-5)
    assert max(first.acts) == pytest.approx(first.value, abs=1e-5)
    assert len(first.tokens) <= 8 and len(ex[0]) == 3
    assert 0 < float(top.distinct_tokens()[0]) <= 1


def test_top_rows_breaks_ties_towards_the_earliest_row() -> None:
    merged = torch.randint(0, 4, (50, 30), generator=torch.Generator().manual_seed(0)).float()  # many ties
    merged[:, 0] = float("-inf")  # an empty column
    values, rows = top_rows(merged, 5)
    expected_values, expected_rows = merged.sort(dim=0, descending=True, stable=True)
    assert torch.equal(values, expected_values[:5]) and torch.equal(rows, expected_rows[:5])
