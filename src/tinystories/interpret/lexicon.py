"""A small word-class lexicon for tiny stories: names, pronouns, and the shipped vocabulary.

Semantic attention heads attend from a word to a related earlier word: a pronoun to the
name it refers to, or a word to an earlier copy of itself. To measure that we only need
to know, for every token, which word it belongs to and that word's class:

* ``pronoun``: a fixed list of English personal pronouns and possessives;
* ``name``: capitalised words seen *inside* a sentence (not after ``.!?`` or a quote) in
  the analysed texts, plus common TinyStories names: this finds "Lily", "Tom", "Spot";
* ``verb`` / ``noun`` / ``adjective``: the shipped TinyStories instruction vocabulary
  (`tinystories.data.vocabulary`) with its inflected forms;
* ``other`` for everything else (punctuation, function words, unknown words).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from tinystories.data.vocabulary import load_vocabulary

PRONOUNS = frozenset({
    "he", "she", "it", "they", "him", "her", "them", "his", "hers", "its", "their", "theirs",
    "himself", "herself", "itself", "themselves"})
COMMON_NAMES = frozenset({
    "Lily", "Tom", "Tim", "Timmy", "Ben", "Sue", "Sara", "Sarah", "Max", "Mia", "Anna", "Sam", "Lucy",
    "Jack", "Bob", "Amy", "Kate", "Mike", "Jane", "Spot", "Molly", "Billy", "Jill", "Zoe", "Leo",
    "Emma", "Ellie", "Mark", "John", "Joe", "Sally", "Daisy", "Rosie", "Kitty"})
_WORD = re.compile(r"[A-Za-z]+(?:'[a-z]+)?")
_SENTENCE_END = re.compile(r"(^|[.!?\"“”]\s*)$")


def find_names(texts: list[str]) -> set[str]:
    """Capitalised words that appear mid-sentence in `texts` (so not just sentence-initial)."""
    names = set()
    for text in texts:
        for m in _WORD.finditer(text):
            word = m.group()
            if word[0].isupper() and word != "I" and not _SENTENCE_END.search(text[:m.start()]):
                names.add(word)
    return names


@dataclass
class Lexicon:
    names: set[str] = field(default_factory=lambda: set(COMMON_NAMES))
    classes: dict[str, str] = field(default_factory=dict)  # lower-cased form -> class

    @classmethod
    def build(cls, texts: list[str]) -> Lexicon:
        """Names from `texts` plus the shipped vocabulary's verbs, nouns and adjectives."""
        vocab = load_vocabulary()
        classes: dict[str, str] = {}
        for category, words in vocab.words.items():
            for word in words:
                for form in vocab.surface_forms(word):
                    classes.setdefault(form, category)
        return cls(names=set(COMMON_NAMES) | find_names(texts), classes=classes)

    def word_class(self, word: str) -> str:
        word = word.removesuffix("'s")
        if word in self.names:
            return "name"
        lower = word.lower()
        if lower in PRONOUNS:
            return "pronoun"
        return self.classes.get(lower, "other")


def token_words(token_strings: list[str]) -> list[str]:
    """The (letters-only) word each token belongs to; "" for punctuation and spaces.

    A byte-level BPE token starts a new word when it begins with a non-letter (usually
    the leading space; an apostrophe continues: "Spot's") or follows a token that ended in one.
    """
    words: list[str] = []
    spans: list[list[int]] = []
    prev_alpha_end = False
    for i, tok in enumerate(token_strings):
        letters = "" if tok.startswith("<|") else re.sub(r"[^A-Za-z']", "", tok)  # special tokens
        continues = prev_alpha_end and (tok[:1].isalpha() or tok[:1] == "'")
        if continues and spans:
            spans[-1].append(i)
        else:
            spans.append([i])
        prev_alpha_end = bool(tok) and tok[-1].isalpha()
        words.append(letters)
    out = [""] * len(token_strings)
    for span in spans:
        word = "".join(words[i] for i in span).strip("'")
        for i in span:
            out[i] = word
    return out
