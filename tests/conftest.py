"""Shared fixtures: a tokenizer trained on the bundled real stories and a tiny model folder."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
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


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MB file system (tmpfs; needs root, as in CI), to fill up."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)],
                      check=False, capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path, leave: int) -> Path:
    """Fill `disk` up to `leave` free bytes with a file; delete the file to free the space again."""
    st = os.statvfs(disk)
    filler = disk / "filler"
    with filler.open("wb") as f:
        f.write(b"\0" * max(0, st.f_bavail * st.f_frsize - leave))
    return filler


@pytest.fixture(autouse=True)
def gradients_stay_on() -> Iterator[None]:
    """No code may leave autograd off for whatever runs next (a generator suspended inside
    `torch.no_grad()` once did: training after an SAE run then failed)."""
    yield
    assert torch.is_grad_enabled(), "a test left torch's gradient mode off"
