"""Label the 1,603 TinyStories instruction words as verb / noun / adjective, once, offline.

Writes `src/tinystories/resources/vocabulary.json`, which the product ships; nothing here is
needed at run time. Needs `lemminflect` (a dictionary of English lemmas, their parts of
speech and inflections, data bundled in the wheel, so it works offline):

    pip install --target /tmp/lemm lemminflect
    PYTHONPATH=/tmp/lemm python scripts/label_vocabulary.py

How a word gets its label, first rule that applies:
1. a manual override (the review of odd and close calls, below);
2. the real dataset: TinyStories-Instruct `Words:` lines list verb, noun, adjective in order;
3. the only verb/noun/adjective reading lemminflect knows for the word;
4. for ambiguous words, how the word is used in the bundled TinyStories text: after
   "to"/"will"/"can" or inflected with -ed/-ing it is a verb, after "a"/"the" and followed by
   punctuation or a verb it is a noun, after "very"/"so"/"was" it is an adjective.
Each word also gets its inflected forms (hang -> hangs, hanging, hung, hanged) so the
quality filter can accept irregular forms without a tagger at run time.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from pathlib import Path

import lemminflect

RES = Path(__file__).resolve().parents[1] / "src" / "tinystories" / "resources"
POS = {"VERB": "verb", "NOUN": "noun", "ADJ": "adjective"}

# Reviewed by hand: words lemminflect does not know, words whose context votes were close
# or wrong, and capitalisation artifacts of the source list. None means "not a
# verb/noun/adjective; left out".
OVERRIDES: dict[str, str | None] = {
    "bookcase": "noun", "cocoa": "noun", "cop": "noun", "fridge": "noun",
    "ice-cream": "noun", "igloo": "noun", "lab": "noun", "mole": "noun",
    "Sunday": "noun", "sunglasses": "noun", "trunk": "noun", "Tuesday": "noun",
    "TV": "noun", "Wednesday": "noun", "x-ray": "noun", "yummy": "adjective",
    "True": "adjective", "yet": None,
    # Close context votes reviewed by hand (the reading a children's story would use).
    "blink": "verb", "country": "noun", "fashion": "noun", "human": "noun", "mechanic": "noun",
    "motor": "noun", "number": "noun", "part": "noun", "pedal": "noun", "root": "noun",
    "salt": "noun", "shadow": "noun", "snap": "verb", "stranger": "noun", "vegetable": "noun",
    "wet": "adjective", "zero": "noun", "copper": "noun", "upset": "adjective", "smile": "verb",
    "walk": "verb", "frown": "verb", "sigh": "verb", "wink": "verb", "roar": "verb",
    "yield": "verb", "gift": "noun", "mail": "noun",
}

DETERMINERS = {"a", "an", "the", "his", "her", "my", "your", "their", "our", "its", "this",
               "that", "some", "every", "each", "no"}
VERB_CUES = {"to", "will", "would", "can", "could", "did", "didn't", "don't", "let's", "must",
             "should", "not", "please", "i", "we", "they", "you", "cannot", "can't", "won't"}
ADJ_CUES = {"very", "so", "too", "was", "is", "are", "were", "felt", "feel", "looked", "look",
            "seemed", "be", "became", "more", "most", "really"}
NOUN_NEXT = {".", ",", "!", "?", "was", "is", "and", "of", "in", "on", "with", "had", "said"}


def corpus_tokens() -> list[str]:
    text = (RES / "train_sample.txt").read_text()
    for line in (RES / "valid_dev.jsonl").read_text().splitlines():
        text += "\n" + json.loads(line)["text"]
    return re.findall(r"[a-z']+|[.,!?]", text.lower())


def context_votes(tokens: list[str]) -> dict[str, Counter]:
    """Count cues for each (lower-cased) token: what precedes and follows it."""
    votes: dict[str, Counter] = defaultdict(Counter)
    for i in range(1, len(tokens) - 1):
        prev, tok, nxt = tokens[i - 1], tokens[i], tokens[i + 1]
        if prev in VERB_CUES:
            votes[tok]["VERB"] += 1
        if prev in ADJ_CUES or (prev in DETERMINERS and nxt.isalpha() and nxt not in NOUN_NEXT):
            votes[tok]["ADJ"] += 1
        if prev in DETERMINERS and nxt in NOUN_NEXT:
            votes[tok]["NOUN"] += 1
    return votes


def gold_labels() -> dict[str, str]:
    headers = json.loads((RES / "instruct_valid_first50_headers.json").read_text())
    gold = {}
    for header in headers:
        for line in header.splitlines():
            if line.startswith("Words: "):
                verb, noun, adjective = line[len("Words: "):].split(", ")
                gold.update({verb: "verb", noun: "noun", adjective: "adjective"})
    return gold


def inflections(word: str, pos: str) -> list[str]:
    tags = {"verb": "V", "noun": "N", "adjective": "A"}[pos]
    forms = {f for tag, fs in lemminflect.getAllInflections(word.lower()).items()
             if tag.startswith(tags[0]) for f in fs}
    return sorted(forms - {word.lower()})


def main() -> None:
    words = (RES / "instruction_words.txt").read_text().split()
    gold, votes = gold_labels(), context_votes(corpus_tokens())
    labelled: dict[str, dict[str, str]] = {p: {} for p in POS.values()}
    close_calls = []
    for word in words:
        candidates = [p for p in lemminflect.getAllLemmas(word.lower()) if p in POS]
        if word in OVERRIDES:
            pos = OVERRIDES[word]
        elif word in gold:
            pos = gold[word]
        elif len(candidates) == 1:
            pos = POS[candidates[0]]
        else:
            v = votes[word.lower()]
            # Inflected verb forms in the corpus are strong verb evidence.
            v["VERB"] += sum(votes[f]["VERB"] + votes[f]["NOUN"] + votes[f]["ADJ"]
                             for f in lemminflect.getAllInflections(word.lower()).get("VBD", ()))
            ranked = sorted(candidates, key=lambda p: -v[p])
            pos = POS[ranked[0]]
            if v[ranked[0]] < 2 * v[ranked[1]] + 3:
                close_calls.append((word, {p: v[p] for p in candidates}, pos))
        if pos is not None:
            labelled[pos][word.lower() if word == "True" else word] = pos
    forms = {w: inflections(w, pos) for pos, ws in labelled.items() for w in ws}
    out = {
        "_provenance": (
            "TinyStories instruction words (resources/instruction_words.txt) labelled by "
            "scripts/label_vocabulary.py: TinyStories-Instruct 'Words:' lines (verb, noun, "
            "adjective order), lemminflect 0.2.3 parts of speech, context votes in the bundled "
            "corpus for ambiguous words, and a manual review of odd ones. 'yet' (an adverb) is "
            "left out. Forms are inflections from lemminflect."
        ),
        "words": {pos: sorted(ws) for pos, ws in labelled.items()},
        "forms": {w: f for w, f in sorted(forms.items()) if f},
    }
    (RES / "vocabulary.json").write_text(json.dumps(out, indent=1) + "\n")
    print({pos: len(ws) for pos, ws in labelled.items()}, f"{len(close_calls)} close calls:")
    for word, v, pos in close_calls:
        print(f"  {word:15s} -> {pos:9s} {v}")


if __name__ == "__main__":
    main()
