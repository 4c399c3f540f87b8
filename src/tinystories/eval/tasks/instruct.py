"""Instruction following (the paper's TinyStories-Instruct): stories from Features / Words /
Summary / Random sentence instructions, graded by a judge, plus a judge-free check that every
required word appears in the story (allowing simple inflections: jump -> jumped, jumping, jumps)."""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from tinystories.config import read_structured
from tinystories.data.vocabulary import Vocabulary, load_vocabulary
from tinystories.errors import TinyStoriesError
from tinystories.eval.judge import JudgeRun, Judgment, MissingInfo, missing_summary
from tinystories.eval.results import Finding, Result, Results
from tinystories.eval.sections import fmt, missing_block
from tinystories.eval.stats import Estimate, bootstrap_mean
from tinystories.eval.task import AddPlot, Context, Pending, Task
from tinystories.render import Block, table
from tinystories.utils import resource_path

STORY_MARK = "Story: "
_WORD = re.compile(r"[a-z]+")


def load_instructions(path: str | Path | None = None) -> list[str]:
    """Instruction headers, each ending with 'Story: ' (the format of TinyStories-Instruct)."""
    path = Path(path) if path else resource_path("instruct_valid_first50_headers.json")
    items = read_structured(path, "instructions", fmt="json")
    if not isinstance(items, list) or not all(isinstance(x, str) for x in items):
        raise TinyStoriesError(f"{path}: expected a JSON list of instruction strings")
    # the model continues after 'Story: ', so every header must end with it
    return [x if x.endswith(STORY_MARK) else x.rstrip() + "\n" + STORY_MARK for x in items]


def model_prompt(header: str) -> str:
    """What the model continues: the header up to 'Story:'. The space after it is left to the
    model, because BPE tokenizers merge it into the story's first word (' Once')."""
    return header.rstrip(" ")


def instruction_text(header: str) -> str:
    """The instructions shown to the judge: the header without its 'Story:' line."""
    return header[: header.rfind(STORY_MARK)].strip() if STORY_MARK in header else header.strip()


def required_words(header: str) -> list[str]:
    words = []
    for line in header.splitlines():
        if line.startswith("Words:"):
            words += [w.strip().lower() for w in line[len("Words:"):].split(",") if w.strip()]
    return words


@functools.cache
def _vocabulary() -> Vocabulary:
    return load_vocabulary()


def inflections(word: str) -> set[str]:
    """The forms that count as using `word`: the shipped vocabulary's forms (the instruction
    words come from it) and the regular inflections, the same rule `generate` filters with."""
    return _vocabulary().surface_forms(word)


def word_check(header: str, story: str) -> dict[str, Any]:
    """Which of the required words the story contains (in some simple inflected form)."""
    present = set(_WORD.findall(story.lower()))
    words = required_words(header)
    found = [w for w in words if inflections(w) & present]
    return {"words": words, "found": found, "missing": [w for w in words if w not in found]}


def instruct_requests(run: JudgeRun, model_name: str, headers: Sequence[str],
                      stories: Sequence[Sequence[str]]) -> list[Judgment]:
    return run.requests([
        ({"instructions": instruction_text(h), "completion": story},
         {"model": model_name, "prompt": i, "sample": k, "instructions": instruction_text(h),
          "completion": story, "word_check": word_check(h, story)})
        for i, (h, samples) in enumerate(zip(headers, stories)) for k, story in enumerate(samples)
    ])


@dataclass(frozen=True)
class InstructScores(Result):
    """One model's instruction following: the judge's scores, and the judge-free word check."""
    key: ClassVar[str] = "instruct"
    scores: dict[str, Estimate]  # instructions, grammar
    all_words_present: Estimate  # share of stories with every required word
    words_present: Estimate  # share of required words present
    judged: int
    missing: int
    missing_info: MissingInfo


def summarize_instruct(judgments: Sequence[Judgment], seed: int = 0) -> InstructScores:
    with_words = [j.meta["word_check"] for j in judgments if j.meta["word_check"]["words"]]
    return InstructScores(
        {key: bootstrap_mean([(j.parsed or {}).get(key) for j in judgments], seed=seed)
         for key in ("instructions", "grammar")},
        bootstrap_mean([float(not c["missing"]) for c in with_words], seed=seed),
        bootstrap_mean([len(c["found"]) / len(c["words"]) for c in with_words], seed=seed),
        sum(j.ok for j in judgments), sum(not j.ok for j in judgments),
        missing_summary(judgments, ["instructions", "grammar"]))


class Instruct(Task):
    name = "instruct"
    help = "instruction following of an Instruct model (judge + required-words check)"
    judged = True
    options = ("instructions", "samples", "sampling", "batch_size")

    def prepare(self, ctx: Context) -> list[Pending]:
        run = ctx.judge("instruct")
        headers = load_instructions(ctx.cfg.instructions or None)
        prompts = [model_prompt(h) for h in headers]
        return [Pending(run, instruct_requests(run, name, headers, ctx.completions(name, prompts)), (name,))
                for name in ctx.names]

    def summarize(self, ctx: Context, answered: Sequence[Pending]) -> list[Finding]:
        return [Finding(p.models, summarize_instruct(p.judgments, ctx.cfg.seed)) for p in answered]

    def report(self, results: Results, add_plot: AddPlot) -> list[Block]:
        instructed = results.of(InstructScores)
        if not instructed:
            return []
        rows = [["model", "instructions (judge)", "grammar (judge)", "all words present", "words present"]]
        rows += [[m, fmt(s.scores["instructions"]), fmt(s.scores["grammar"]), fmt(s.all_words_present),
                  fmt(s.words_present)] for m, s in instructed.items()]
        missing = [b for m, s in instructed.items() for b in missing_block(s.missing_info, m)]
        return [Block("h2", "Instruction following"), table(rows), *missing]
