"""GPT-Eval (the paper's section 3): sample completions of story beginnings, have a judge grade them.

Each completion gets a written assessment, then scores out of 10 for grammar, creativity,
consistency with the beginning and plot, and a guess of the writer's age group (A-F).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from tinystories.eval.judge import (
    AGE_GROUPS,
    SCORE_KEYS,
    JudgeRun,
    Judgment,
    MissingInfo,
    missing_summary,
)
from tinystories.eval.results import Finding, Result, Results
from tinystories.eval.sections import bar_plot, fmt, missing_block
from tinystories.eval.stats import Estimate, bootstrap_mean
from tinystories.eval.task import AddPlot, Context, Pending, Task
from tinystories.render import Block, table

SAMPLING = ("prompts", "samples", "sampling", "batch_size")


def grade_requests(run: JudgeRun, model_name: str, beginnings: Sequence[str],
                   completions: Sequence[Sequence[str]]) -> list[Judgment]:
    return run.requests([
        # the paper's layout: "... a bunny heard the guitar from a distance and *** asked, ..."
        ({"beginning": beginning.rstrip(), "completion": completion.strip()},
         {"model": model_name, "prompt": i, "sample": k, "beginning": beginning, "completion": completion})
        for i, (beginning, samples) in enumerate(zip(beginnings, completions))
        for k, completion in enumerate(samples)
    ])


@dataclass(frozen=True)
class Grades(Result):
    """One model's grades: per dimension the mean and its interval; the guessed age groups."""
    key: ClassVar[str] = "gpt_eval"
    scores: dict[str, Estimate]  # SCORE_KEYS
    age_groups: dict[str, int]  # AGE_GROUPS -> judgments that guessed it
    judged: int
    missing: int
    missing_info: MissingInfo


def summarize_grades(judgments: Sequence[Judgment], seed: int = 0) -> Grades:
    """Per dimension: mean and bootstrap 95% interval over the judgments that have it; age groups."""
    scores = {key: bootstrap_mean([(j.parsed or {}).get(key) for j in judgments], seed=seed) for key in SCORE_KEYS}
    ages = Counter((j.parsed or {}).get("age_group") for j in judgments)
    return Grades(scores, {g: ages.get(g, 0) for g in AGE_GROUPS}, sum(j.ok for j in judgments),
                  sum(not j.ok for j in judgments), missing_summary(judgments, [*SCORE_KEYS, "age_group"]))


class GptEval(Task):
    name = "gpt-eval"
    help = "grade completions of the paper's 44 story beginnings with a judge LLM"
    judged = True
    options = SAMPLING

    def prepare(self, ctx: Context) -> list[Pending]:
        run = ctx.judge("grade")
        return [Pending(run, grade_requests(run, name, ctx.beginnings(), ctx.completions(name)), (name,))
                for name in ctx.names]

    def summarize(self, ctx: Context, answered: Sequence[Pending]) -> list[Finding]:
        return [Finding(p.models, summarize_grades(p.judgments, ctx.cfg.seed)) for p in answered]

    def report(self, results: Results, add_plot: AddPlot) -> list[Block]:
        graded = results.of(Grades)
        if not graded:
            return []
        rows = [["model", *SCORE_KEYS, "judged", "missing"]]
        rows += [[m, *(fmt(g.scores[k]) for k in SCORE_KEYS), str(g.judged), str(g.missing)]
                 for m, g in graded.items()]
        ages = [["model", *(f"{g} ({AGE_GROUPS[g]})" for g in AGE_GROUPS)]]
        ages += [[m, *(str(g.age_groups[a]) for a in AGE_GROUPS)] for m, g in graded.items()]
        plot = add_plot("gpt_eval.png", bar_plot({m: g.scores for m, g in graded.items()}, list(SCORE_KEYS),
                                                 "GPT-Eval scores (95% CI)", "score / 10"), "GPT-Eval scores")
        missing = [b for m, g in graded.items() for b in missing_block(g.missing_info, m)]
        return [Block("h2", "GPT-Eval"), table(rows), *missing,
                Block("p", "Age group the judge guessed for the writer:"), table(ages), plot]
