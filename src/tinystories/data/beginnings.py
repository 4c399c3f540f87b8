"""Story beginnings: the paper's 44 GPT-Eval prompts, or a user's own list, read one way.

Used to sample completions for evaluation (`tinystories eval`) and to keep those same
beginnings out of generated training data (decontamination in `data.filters`).
"""

from __future__ import annotations

from pathlib import Path

from tinystories.config import read_structured
from tinystories.errors import TinyStoriesError
from tinystories.utils import resource_path

QUOTES = str.maketrans({"\u201c": '"', "\u201d": '"', "\u201e": '"', "\u2018": "'", "\u2019": "'"})


def normalize_quotes(text: str) -> str:
    """Curly quotes (as copied from the paper's PDF) to the straight ones the training data uses."""
    return text.translate(QUOTES)


def load_beginnings(path: str | Path | None = None, key: str = "prompt") -> list[str]:
    """Story beginnings: the paper's 44 by default, or a YAML/JSON list or a text file (one per
    paragraph, separated by blank lines). JSON records may be objects with a `key` field."""
    path = Path(path) if path else resource_path("evaluation_prompts.yaml")
    if not path.exists():
        raise TinyStoriesError(f"prompt file not found: {path}")
    if path.suffix in (".yaml", ".yml", ".json"):
        items = read_structured(path, "prompt file")
    else:
        text = path.read_text(encoding="utf-8")
        items = [p.strip() for p in text.split("\n\n") if p.strip()]
    if not isinstance(items, list):
        raise TinyStoriesError(f"{path}: expected a list of prompts")
    prompts = []
    for i, item in enumerate(items):
        if isinstance(item, dict):
            item = item.get(key)
        if not isinstance(item, str) or not item.strip():
            raise TinyStoriesError(f"{path}: item {i} is not a non-empty string"
                                   + (f" (or an object with a {key!r} string)" if key else ""))
        prompts.append(normalize_quotes(item.rstrip()))
    if not prompts:
        raise TinyStoriesError(f"{path}: no prompts")
    return prompts
