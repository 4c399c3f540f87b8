"""Instruction following (the paper's TinyStories-Instruct): stories from Features / Words /
Summary / Random sentence instructions, graded by a judge, plus a judge-free check that every
required word appears in the story (allowing simple inflections: jump -> jumped, jumping, jumps)."""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tinystories.config import read_structured
from tinystories.data.vocabulary import Vocabulary, load_vocabulary
from tinystories.errors import TinyStoriesError
from tinystories.eval.judge import JudgeRun, Judgment, missing_summary
from tinystories.eval.report import Block, fmt, missing_block
from tinystories.eval.stats import bootstrap_mean
from tinystories.eval.task import AddPlot, Pending, Task, per_model, register
from tinystories.utils import resource_path

if TYPE_CHECKING:
    from tinystories.eval.suite import Suite

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


def summarize_instruct(judgments: Sequence[Judgment], seed: int = 0) -> dict[str, Any]:
    with_words = [j.meta["word_check"] for j in judgments if j.meta["word_check"]["words"]]
    return {
        "scores": {key: bootstrap_mean([(j.parsed or {}).get(key) for j in judgments], seed=seed).to_json()
                   for key in ("instructions", "grammar")},
        # judge-free: share of stories with every required word, and share of required words present
        "all_words_present": bootstrap_mean([float(not c["missing"]) for c in with_words], seed=seed).to_json(),
        "words_present": bootstrap_mean([len(c["found"]) / len(c["words"]) for c in with_words],
                                        seed=seed).to_json(),
        "judged": sum(j.ok for j in judgments), "missing": sum(not j.ok for j in judgments),
        "missing_info": missing_summary(judgments, ["instructions", "grammar"]),
    }


@register
class Instruct(Task):
    name = "instruct"
    help = "instruction following of an Instruct model (judge + required-words check)"
    judged = True
    options = ("instructions", "samples", "sampling", "batch_size")

    def prepare(self, suite: Suite) -> list[Pending]:
        run = suite.judge_run("instruct")
        headers = load_instructions(suite.cfg.instructions or None)
        prompts = [model_prompt(h) for h in headers]
        return [Pending(run, instruct_requests(run, name, headers, suite.completions(name, prompts)), name)
                for name in suite.names]

    def summarize(self, suite: Suite, pending: list[Pending]) -> None:
        for p in pending:
            suite.results["models"][p.model]["instruct"] = summarize_instruct(p.judgments, suite.cfg.seed)

    def report(self, results: dict[str, Any], add_plot: AddPlot) -> list[Block]:
        instructed = per_model(results, "instruct")
        if not instructed:
            return []
        rows = [["model", "instructions (judge)", "grammar (judge)", "all words present", "words present"]]
        rows += [[m, fmt(s["scores"]["instructions"]), fmt(s["scores"]["grammar"]),
                  fmt(s["all_words_present"]), fmt(s["words_present"])] for m, s in instructed.items()]
        missing = [b for m, s in instructed.items() for b in missing_block(s.get("missing_info"), m)]
        return [Block("h2", "Instruction following"), Block("table", rows=rows), *missing]
