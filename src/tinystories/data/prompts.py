"""The paper's generation prompt, and TinyStories-Instruct records.

Prompt `i` of a run is a pure function of (seed, i): its RNG is seeded from both, so a
restarted run, or a run asked for more stories, regenerates exactly the same prompts.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tinystories.config import Config, setting
from tinystories.data.vocabulary import Vocabulary, load_vocabulary
from tinystories.errors import TinyStoriesError
from tinystories.utils import resource_path

INSTRUCT_KINDS = ("Features", "Words", "Summary", "Random sentence")


@dataclass(frozen=True)
class PromptConfig(Config):
    vocabulary: str | None = setting(None, "YAML/JSON word lists; none = the shipped TinyStories words")
    features: dict[str, str] | None = setting(None, "feature name -> prompt phrase; none = the shipped ones")
    min_features: int = setting(0, "fewest story features per prompt", ge=0)
    max_features: int = setting(2, "most story features per prompt", ge=0)
    # Placeholders: {words} and {features} (the two clauses below, each may be empty).
    template: str = setting(
        "Write a short story (3-5 paragraphs) which only uses very simple words that a 3 year "
        "old child would understand. {words}{features}Remember to only use simple words!"
        "\n\nPossible story:", "the prompt; {words} and {features} are the clauses below"
    )
    # Placeholders: one per vocabulary category ({verb}, {noun}, {adjective} by default).
    words_template: str = setting(
        'The story should use the verb "{verb}", the noun "{noun}" and the adjective '
        '"{adjective}". ', "one placeholder per vocabulary category"
    )
    features_template: str = setting("The story has the following features: {features}. ", "the features clause")
    features_joiner: str = setting(", ", "between features")
    summary_template: str = setting(
        "Summarize the following story in one short sentence, using only simple words.\n\n"
        "{story}\n\nSummary:", "TinyStories-Instruct: how the summary is asked for"
    )

    where = "prompts"


@dataclass
class Prompt:
    index: int
    text: str
    words: dict[str, str]  # category -> word
    features: list[str]  # feature names

    def to_dict(self) -> dict:
        return asdict(self)


def load_features(cfg: PromptConfig) -> dict[str, str]:
    if cfg.features is not None:
        return dict(cfg.features)
    return json.loads(Path(resource_path("features.json")).read_text())["features"]


def _rng(seed: int, index: int, purpose: str) -> random.Random:
    # String seeds are hashed with SHA-512 by `random`, so this is stable across processes.
    return random.Random(f"{seed}:{index}:{purpose}")


@dataclass
class PromptBuilder:
    cfg: PromptConfig = field(default_factory=PromptConfig)
    seed: int = 0

    def __post_init__(self) -> None:
        self.vocabulary: Vocabulary = load_vocabulary(self.cfg.vocabulary)
        self.features = load_features(self.cfg)
        # max_features is capped by the number of features, so a short list needs no edit.
        self.max_features = min(self.cfg.max_features, len(self.features))
        if not 0 <= self.cfg.min_features <= self.max_features:
            raise TinyStoriesError(
                f"prompts: need 0 <= min_features <= max_features <= {len(self.features)} "
                f"(the number of features), got {self.cfg.min_features}..{self.cfg.max_features}"
            )
        self.prompt(0)  # fail now, with a clear message, on a template the words don't fit

    def prompt(self, index: int) -> Prompt:
        rng = _rng(self.seed, index, "prompt")
        words = {cat: rng.choice(ws) for cat, ws in self.vocabulary.words.items()}
        k = rng.randint(self.cfg.min_features, self.max_features)
        features = rng.sample(sorted(self.features), k)
        try:
            words_clause = self.cfg.words_template.format(**words)
            features_clause = (
                self.cfg.features_template.format(
                    features=self.cfg.features_joiner.join(self.features[f] for f in features)
                )
                if features
                else ""
            )
            text = self.cfg.template.format(words=words_clause, features=features_clause)
        except (KeyError, IndexError) as exc:
            raise TinyStoriesError(
                f"prompt template uses placeholder {exc}, which is not defined; the words "
                f"template may use {{{'}, {'.join(words)}}}, the template {{words}} and "
                "{features}"
            ) from exc
        return Prompt(index=index, text=text, words=words, features=features)

    def summary_request(self, story: str) -> str:
        return self.cfg.summary_template.format(story=story)


def split_sentences(text: str) -> list[str]:
    """Sentences ending in . ! or ? (closing quotes kept), for the `Random sentence:` line."""
    sentences, start = [], 0
    for i, ch in enumerate(text):
        if ch in ".!?" and (i + 1 == len(text) or text[i + 1] in " \n\"'"):
            end = i + 1
            while end < len(text) and text[end] in "\"'":
                end += 1
            sentence = text[start:end].strip()
            if len(sentence.split()) >= 3:
                sentences.append(sentence)
            start = end
    return sentences


def instruct_text(prompt: Prompt, story: str, summary: str, seed: int) -> tuple[str, dict]:
    """A TinyStories-Instruct record: a random non-empty subset of instruction lines, in
    random order, then `Story: `. Returns the text and the chosen header parts."""
    rng = _rng(seed, prompt.index, "instruct")
    sentences = split_sentences(story)
    kinds = [k for k in INSTRUCT_KINDS if k != "Features" or prompt.features]
    if not sentences:
        kinds.remove("Random sentence")
    chosen = rng.sample(kinds, rng.randint(1, len(kinds)))
    values = {
        "Features": ", ".join(prompt.features),
        "Words": ", ".join(prompt.words.values()),
        "Summary": summary,
        "Random sentence": rng.choice(sentences) if sentences else "",
    }
    header = "".join(f"{kind}: {values[kind]}\n" for kind in chosen)
    return f"{header}Story: {story}", {kind: values[kind] for kind in chosen}
