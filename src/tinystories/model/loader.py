"""The one model loader every command uses: whatever a user points at, the same answer.

Accepted, in this order:

* a training run's folder (``runs/demo``): its ``checkpoint/`` model;
* a tinystories model folder (``config.json`` with a ``model`` section, ``model.safetensors``,
  ``tokenizer.json``), e.g. ``runs/demo/checkpoint``;
* a Hugging Face ``transformers`` GPT-Neo or Llama folder, converted on load;
* a Hub id already in the local Hugging Face cache (``roneneldan/TinyStories-33M``).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from tinystories.errors import TinyStoriesError
from tinystories.model.checkpoint import (
    CHECKPOINT_DIR,
    CONFIG_NAME,
    LoadedModel,
    load_model,
    model_name,
    read_config_raw,
)

HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")  # owner/name, as on the Hugging Face Hub


def load_any(source: str | Path, device: str | torch.device = "cpu", name: str = "") -> LoadedModel:
    """Load `source` (see the module doc) on `device`, in eval mode, named `name` (default: its
    run's or folder's name)."""
    loaded = _load(source, device)
    loaded.name = name or model_name(Path(source).resolve() if Path(source).exists() else source)
    return loaded


def _load(source: str | Path, device: str | torch.device) -> LoadedModel:
    folder = Path(source)
    if (folder / CHECKPOINT_DIR / CONFIG_NAME).is_file() and not (folder / CONFIG_NAME).exists():
        folder = folder / CHECKPOINT_DIR  # a run folder
    if folder.exists():
        if not folder.is_dir():
            raise TinyStoriesError(f"{folder} is a file; give a model folder (one holding {CONFIG_NAME})")
        if "model" in read_config_raw(folder):
            return load_model(folder, device)
    elif not HUB_ID.fullmatch(str(source)):
        raise TinyStoriesError(f"model folder not found: {source}")
    from tinystories.model.hf import load_hf_model  # imports transformers only when needed

    return load_hf_model(source, device)
