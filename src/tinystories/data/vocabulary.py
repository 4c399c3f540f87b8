"""The word lists prompts draw from: categories (verb, noun, adjective) of words, plus forms.

The shipped vocabulary is the TinyStories instruction words, labelled offline by
`scripts/label_vocabulary.py`. Users can bring their own (any language, any categories) as a
YAML/JSON file: `{"words": {"verb": [...], "noun": [...], "adjective": [...]}, "forms":
{"go": ["went", "gone"]}}`; the category names become the prompt template's placeholders.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from tinystories.config import read_structured
from tinystories.errors import TinyStoriesError
from tinystories.utils import resource_path

DEFAULT_VOCABULARY = "vocabulary.json"


@dataclass(frozen=True)
class Vocabulary:
    words: dict[str, list[str]]  # category -> words, in the order prompts name them
    forms: dict[str, list[str]] = field(default_factory=dict)  # word -> irregular/extra forms

    @property
    def categories(self) -> list[str]:
        return list(self.words)

    def all_words(self) -> set[str]:
        return {w for ws in self.words.values() for w in ws}

    def surface_forms(self, word: str) -> set[str]:
        """Lower-cased forms that count as using `word` in a story."""
        return {f.lower() for f in (word, *self.forms.get(word, ()), *regular_inflections(word))}

    def form_index(self) -> dict[str, set[str]]:
        """Surface form -> the vocabulary words it can stand for (for coverage counting)."""
        index: dict[str, set[str]] = {}
        for word in self.all_words():
            for form in self.surface_forms(word):
                index.setdefault(form, set()).add(word)
        return index


def regular_inflections(word: str) -> set[str]:
    """English regular inflections: -s/-es, -ed, -ing, -er/-est and the -ly adverb, with the
    usual spelling rules (bake -> baking, cry -> cried, happy -> happily, hop -> hopping).

    The one rule both the generation filter and `eval instruct`'s word check use, as a fallback
    for words the vocabulary file gives no forms for; extra wrong forms are harmless (they
    only have to appear in a story to count, and nonsense forms never do).
    """
    w = word.lower()
    if not re.fullmatch(r"[a-z]+", w):
        return set()
    forms = {w + "s", w + "es", w + "ed", w + "ing", w + "er", w + "est", w + "ly"}
    if w.endswith("e"):  # bake -> baked, baking, baker; cute -> cuter, cutest; noise -> noisy
        forms |= {w + "d", w + "r", w + "st", w[:-1] + "ing", w[:-1] + "y"}
    if w.endswith("y") and len(w) > 1 and w[-2] not in "aeiou":  # cry -> cries, happy -> happily
        stem = w[:-1]
        forms |= {stem + "ies", stem + "ied", stem + "ier", stem + "iest", stem + "ily"}
    if re.search(r"(^|[^aeiou])[aeiou][^aeiouwxy]$", w):  # CVC: hop -> hopping, run -> runner, big -> bigger
        forms |= {w + w[-1] + suffix for suffix in ("ing", "ed", "er", "est", "y")}
    return forms


def load_vocabulary(path: str | Path | None = None) -> Vocabulary:
    """Load the shipped vocabulary, or a user's YAML/JSON file with the same layout."""
    path = Path(path) if path else resource_path(DEFAULT_VOCABULARY)
    if not path.exists():
        raise TinyStoriesError(f"vocabulary file not found: {path}")
    data = read_structured(path, "vocabulary file")
    words = data.get("words") if isinstance(data, dict) else None
    if not isinstance(words, dict) or not words:
        raise TinyStoriesError(
            f"{path}: expected a 'words' mapping of category -> list of words, "
            'e.g. {"words": {"verb": ["run"], "noun": ["dog"], "adjective": ["big"]}}'
        )
    for category, ws in words.items():
        if not isinstance(ws, list) or not ws or not all(isinstance(w, str) and w for w in ws):
            raise TinyStoriesError(f"{path}: words.{category} must be a non-empty list of words")
    forms = data.get("forms") or {}
    if not isinstance(forms, dict):
        raise TinyStoriesError(f"{path}: 'forms' must map a word to a list of its forms")
    return Vocabulary(words={str(c): list(ws) for c, ws in words.items()},
                      forms={str(w): list(fs) for w, fs in forms.items()})
