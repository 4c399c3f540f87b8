"""Quality filters for generated stories; each rejection names its reason.

Checks, cheapest first: refusal, non-ASCII / non-English, length, missing required words,
overlap with the evaluation prompts (decontamination), near-duplicate of an accepted story
(MinHash LSH band keys, `near_duplicates.BandIndex`: the same decisions as datasketch's
MinHashLSH in 40 bytes per accepted story). The near-duplicate index only grows with accepted
stories.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from datasketch import MinHash

from tinystories.config import Config, setting
from tinystories.data.beginnings import load_beginnings
from tinystories.data.near_duplicates import BandIndex
from tinystories.data.vocabulary import Vocabulary
from tinystories.errors import TinyStoriesError

# Typographic characters a teacher model likes, mapped to the ASCII the corpus uses.
_NORMALISE = str.maketrans({
    "\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2013": "-", "\u2014": "-",
    "\u2026": "...", "\u00a0": " ", "\u2032": "'",
})
_WORD = re.compile(r"[^\W\d_]+(?:['-][^\W\d_]+)*")
ENGLISH_STOPWORDS = ["the", "a", "and", "to", "was", "he", "she", "it", "they", "of", "in",
                     "his", "her", "with", "said", "is", "on", "you", "i", "that", "had", "an"]
REFUSALS = [r"i'?m sorry", r"i am sorry", r"as an ai", r"i can(?:no|')t (?:write|help|create|comply)",
            r"i'?m not able to", r"i am unable", r"sorry, but"]


@dataclass(frozen=True)
class FilterConfig(Config):
    min_words: int = setting(60, "shortest story kept, in words", ge=0)
    max_words: int = setting(1000, "longest story kept, in words", ge=1)
    ascii_only: bool = setting(True, "reject non-ASCII stories (set false for non-Latin languages)")
    stopwords: list[str] = setting(help="the language's most common words", factory=lambda: list(ENGLISH_STOPWORDS))
    min_stopword_ratio: float = setting(0.15, "share of words that must be stopwords (0 = off)", ge=0, le=1)
    refusal_patterns: list[str] = setting(help="regular expressions of refusals", factory=lambda: list(REFUSALS))
    require_words: bool = setting(True, "reject stories missing a prompt word")
    near_duplicate_threshold: float = setting(0.8, "estimated Jaccard of word 3-grams above which a story is "
                                                   "a near duplicate (1 = off)", gt=0, le=1)
    minhash_perm: int = setting(64, "MinHash permutations", ge=8, le=1024)
    eval_prompts: str | None = setting(None, "story beginnings kept out of the data (YAML/JSON list or text "
                                             "file); none = the paper's 44")
    decontam_ngram: int = setting(8, "n-gram length of the decontamination check", ge=1)
    decontam_threshold: float = setting(0.5, "share of a beginning's n-grams found in a story that rejects it",
                                        gt=0, le=1)

    where = "filters"

    def check(self) -> None:
        if self.min_words > self.max_words:
            raise TinyStoriesError(f"filters: min_words ({self.min_words}) is above max_words ({self.max_words})")


def normalise(text: str) -> str:
    return text.translate(_NORMALISE).replace("\r\n", "\n").strip()


def words_of(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


def ngrams(words: list[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(words[i:i + n]) for i in range(max(1, len(words) - n + 1))}


class StoryFilter:
    def __init__(self, cfg: FilterConfig, vocabulary: Vocabulary):
        self.cfg = cfg
        self.vocabulary = vocabulary
        self.stopwords = set(cfg.stopwords)
        self.refusal = re.compile("|".join(cfg.refusal_patterns), re.IGNORECASE)
        self.near = BandIndex(cfg.near_duplicate_threshold, cfg.minhash_perm) \
            if cfg.near_duplicate_threshold < 1 else None
        # Band keys of stories accepted by `check` and not yet written by the run (`bands_of`).
        self._accepted_keys: dict[str, np.ndarray] = {}
        # Drawing the random permutations is most of a MinHash's cost: draw them once.
        self._minhash_template = MinHash(num_perm=cfg.minhash_perm, seed=1)
        self._contamination = self._eval_index()

    def _eval_index(self) -> list[tuple[int, set[tuple[str, ...]]]]:
        beginnings = load_beginnings(self.cfg.eval_prompts)
        out = []
        for text in beginnings:
            ws = words_of(text)
            n = min(self.cfg.decontam_ngram, len(ws))
            if n:
                out.append((n, ngrams(ws, n)))
        return out

    def check(self, story: str, words: dict[str, str], key: str) -> str | None:
        """None if `story` (already normalised) passes; else the reason. Accepted stories join the
        near-duplicate index under `key`."""
        ws = words_of(story)
        if self.refusal.search(story[:300]):
            return "refusal"
        if self.cfg.ascii_only and any(not (32 <= ord(c) < 127 or c in "\n\t") for c in story):
            return "non_ascii"
        if self.cfg.min_stopword_ratio and sum(w in self.stopwords for w in ws) < self.cfg.min_stopword_ratio * len(ws):
            return "non_english"
        if not self.cfg.min_words <= len(ws) <= self.cfg.max_words:
            return f"length ({len(ws)} words, allowed {self.cfg.min_words}-{self.cfg.max_words})"
        if self.cfg.require_words:
            present = set(ws)
            missing = [w for w in words.values() if not self.vocabulary.surface_forms(w) & present]
            if missing:
                return f"missing_words ({', '.join(missing)})"
        story_grams: dict[int, set[tuple[str, ...]]] = {}
        for n, grams in self._contamination:
            if n not in story_grams:
                story_grams[n] = ngrams(ws, n)
            if len(grams & story_grams[n]) >= self.cfg.decontam_threshold * len(grams):
                return "eval_contamination"
        if self.near is not None:
            keys = self.near.keys(self._minhash(ws).hashvalues)
            if self.near.contains_any(keys):
                return "near_duplicate"
            self.near.add(keys)
            self._accepted_keys[key] = keys
        return None

    def band_keys(self, story: str) -> np.ndarray | None:
        """The near-duplicate index keys of a (normalised) story; None when the check is off."""
        return None if self.near is None else self.near.keys(self._minhash(words_of(story)).hashvalues)

    def bands_of(self, key: str, story: str) -> np.ndarray | None:
        """The keys `check` indexed for the accepted story `key` (recomputed if it was checked
        in an earlier session), for the run's on-disk index; forgotten once asked for."""
        keys = self._accepted_keys.pop(key, None)
        return keys if keys is not None else self.band_keys(story)

    def remember(self, story: str, key: str) -> np.ndarray | None:
        """Add an already accepted story (from an earlier session) to the near-duplicate index;
        returns its keys."""
        keys = self.band_keys(story)
        if self.near is not None and keys is not None:
            self.near.add(keys)
        return keys

    def _minhash(self, ws: list[str]) -> MinHash:
        t = self._minhash_template
        m = MinHash(num_perm=self.cfg.minhash_perm, seed=1, permutations=t.permutations, scheme=t.scheme)
        m.update_batch([" ".join(g).encode() for g in ngrams(ws, 3)])
        return m


def reason_kind(reason: str) -> str:
    """`length (12 words, ...)` -> `length`, for counting rejections by kind."""
    return reason.split(" (")[0]
