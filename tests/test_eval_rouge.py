"""Rouge-2 by the inverted index equals rouge-score's brute force on real stories."""

from __future__ import annotations

import random

import pytest
from rouge_score import rouge_scorer, tokenize

from tinystories.eval.rouge import (
    max_rouge_precision,
    ngram_counts,
    rouge_n,
    rouge_tokens,
    within_prompt_overlap,
)


@pytest.fixture(scope="module")
def completions(stories: list[str], valid_stories: list[str]) -> list[str]:
    """Real stories of every kind of overlap: copies, halves, spliced halves, unseen stories."""
    rng = random.Random(0)
    picked = rng.sample(stories[:300], 6)
    out = [picked[0], picked[1][: len(picked[1]) // 2]]
    out += [a[: len(a) // 2] + b[len(b) // 2:] for a, b in zip(picked[2:4], picked[4:6])]
    out += valid_stories[:8] + ["", "Hi!", "THE END. the end... The   end"]
    return out


def test_tokenization_matches_rouge_score(stories: list[str]):
    for text in [*stories[:200], "Don't stop! Café's 3rd TEST--now_ok", "\u0130stanbul \u00e9t\u00e9 \u00df"]:
        assert rouge_tokens(text) == tokenize.tokenize(text, None)


def test_max_precision_matches_rouge_score_brute_force(stories: list[str], completions: list[str]):
    training = stories[:300]
    scorer = rouge_scorer.RougeScorer(["rouge2"], use_stemmer=False)
    got = max_rouge_precision(completions, training, chunk=70, progress=False)  # 5 chunks
    for completion, nearest in zip(completions, got):
        brute = [scorer.score(story, completion)["rouge2"].precision for story in training]
        assert nearest.precision == max(brute)  # exactly: same integer counts, same division
        if nearest.story >= 0:
            assert brute[nearest.story] == max(brute)
    assert got[0].precision == 1.0 and got[0].story == training.index(completions[0])
    assert got[1].precision == 1.0  # a prefix of a training story
    for one_chunk_or_processes in ({}, {"chunk": 40, "workers": 2}):  # the same answer
        again = max_rouge_precision(completions, training, progress=False, **one_chunk_or_processes)
        assert [(x.precision, x.story) for x in again] == [(x.precision, x.story) for x in got]


def test_within_prompt_overlap_matches_rouge_score(completions: list[str]):
    scorer = rouge_scorer.RougeScorer(["rouge2"], use_stemmer=False)
    groups = [completions[:3], completions[6:10]]
    expected = [scorer.score(g[i], g[j])["rouge2"].fmeasure for g in groups
                for i in range(len(g)) for j in range(i + 1, len(g))]
    assert within_prompt_overlap(groups) == pytest.approx(expected, abs=0, rel=1e-15)
    a, b = ngram_counts(completions[6]), ngram_counts(completions[7])
    assert rouge_n(a, b)[2] == scorer.score(completions[6], completions[7])["rouge2"].fmeasure
