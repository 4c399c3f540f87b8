"""Bits per byte: a hand computation, a uniform model, sliding windows past the context."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from tinystories.eval.bpb import evaluate_bpb, story_windows
from tinystories.model.gpt import GPT, GPTConfig
from tinystories.model.loader import load_any
from tinystories.model.losses import bits_per_byte


def test_windows_cover_every_target_once():
    for length in (2, 5, 9, 10, 11, 30, 31):
        ids = list(range(length))
        for context, stride in ((8, 4), (8, 1), (8, 8), (3, 2)):
            targets = []
            for window, skip in story_windows(ids, context, stride):
                assert 2 <= len(window) <= context + 1
                targets += window[1 + skip:]
                # each scored token keeps at least context - stride tokens of history (after the first window)
                if skip:
                    assert skip >= context - stride
            assert targets == ids[1:], (length, context, stride)


@torch.inference_mode()
def test_bpb_equals_hand_computation(tiny_model_dir: Path, valid_stories: list[str]):
    loaded = load_any(tiny_model_dir)
    model, tok = loaded.model, loaded.tokenizer
    stories = [s[:100] for s in valid_stories[:3]]  # within the context of 128
    nll = 0.0
    for story in stories:
        ids = [tok.eos_id, *tok.encode(story), tok.eos_id]
        for t in range(1, len(ids)):  # one token at a time, from the full prefix
            logits, _ = model(torch.tensor([ids[:t]]))
            nll -= torch.log_softmax(logits[0, -1].double(), -1)[ids[t]].item()
    n_bytes = sum(len(s.encode()) + 1 for s in stories)
    result = evaluate_bpb(model, tok, stories, batch_size=2, progress=False)
    assert result.bytes == n_bytes and result.stories == 3
    assert result.nll_nats == pytest.approx(nll, rel=1e-6)
    assert result.bpb == pytest.approx(nll / math.log(2) / n_bytes, rel=1e-6)
    assert bits_per_byte(result.loss, result.tokens / result.bytes) == pytest.approx(result.bpb)


def test_uniform_model_gives_log2_vocab(tokenizer, valid_stories: list[str]):
    """Zero weights: uniform logits, so bpb = log2(V) * tokens / bytes, long stories included."""
    model = GPT(GPTConfig(vocab_size=600, context_length=32, n_layer=1, n_head=2, d_model=16)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    stories = valid_stories[:6]
    tokens = sum(len(tokenizer.encode(s)) + 1 for s in stories)
    assert max(len(tokenizer.encode(s)) for s in stories) > 32  # sliding windows in use
    n_bytes = sum(len(s.encode()) + 1 for s in stories)
    result = evaluate_bpb(model, tokenizer, stories, batch_size=4, stride=10, progress=False)
    assert result.tokens == tokens
    assert result.bpb == pytest.approx(math.log2(600) * tokens / n_bytes, rel=1e-9)


@torch.inference_mode()
def test_sliding_window_equals_explicit_contexts(tokenizer, valid_stories: list[str]):
    """Past the context, each token is scored from the window `story_windows` gives it."""
    torch.manual_seed(1)
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, context_length=16, n_layer=1, n_head=2,
                          d_model=16)).eval()
    story = valid_stories[0]
    ids = [tokenizer.eos_id, *tokenizer.encode(story), tokenizer.eos_id]
    assert len(ids) > 40
    nll = 0.0
    for window, skip in story_windows(ids, 16, 5):
        for t in range(1 + skip, len(window)):
            logits, _ = model(torch.tensor([window[:t]]))
            nll -= torch.log_softmax(logits[0, -1].double(), -1)[window[t]].item()
    result = evaluate_bpb(model, tokenizer, [story], batch_size=2, stride=5, progress=False)
    assert result.nll_nats == pytest.approx(nll, rel=1e-6)
