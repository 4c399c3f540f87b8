"""Shared fixtures: a tokenizer trained on the bundled real stories and a tiny model folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tinystories.data.corpus import read_stories
from tinystories.model.checkpoint import save_model
from tinystories.model.gpt import GPT, GPTConfig
from tinystories.tokenizer import Tokenizer, train_bpe


@pytest.fixture(scope="session")
def stories() -> list[str]:
    """The bundled real TinyStories training sample (2,317 stories)."""
    return read_stories("bundled:train")[0]


@pytest.fixture(scope="session")
def valid_stories() -> list[str]:
    return read_stories("bundled:valid")[0]


@pytest.fixture(scope="session")
def tokenizer(stories: list[str]) -> Tokenizer:
    return train_bpe(stories, vocab_size=512)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer: Tokenizer) -> Path:
    """A saved model folder (random weights, GPT-Neo style) with its tokenizer."""
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=tokenizer.vocab_size, context_length=128, n_layer=2, n_head=4, d_model=32)
    folder = tmp_path_factory.mktemp("tiny_model")
    return save_model(folder, GPT(cfg).eval(), tokenizer)
