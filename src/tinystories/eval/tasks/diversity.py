"""Diversity and memorisation (the paper's section 4.3): does a model copy its training stories?

For each completion, the highest Rouge-2 precision against every training story (through a
bigram index, `eval.rouge`), and the Rouge-2 F between completions of the same beginning.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from tinystories.eval.results import Finding, Result, Results
from tinystories.eval.sections import fmt, hist_plot
from tinystories.eval.stats import Estimate, bootstrap_mean
from tinystories.eval.task import AddPlot, Context, Pending, Task
from tinystories.render import Block, table


@dataclass(frozen=True)
class Overlap(Result):
    """One model's overlap: per completion, with its nearest training story; per pair of completions
    of one beginning."""
    key: ClassVar[str] = "diversity"
    max_precision: list[float]  # per completion: highest Rouge-2 precision against a training story
    nearest_story: list[int]  # that story's index (-1: no shared bigram)
    max_precision_mean: Estimate
    within_prompt_f: list[float]  # Rouge-2 F per pair of completions of the same beginning
    within_prompt_f_mean: Estimate


class Diversity(Task):
    name = "diversity"
    help = "Rouge-2 memorisation against the training set and within-prompt overlap"
    options = ("prompts", "samples", "sampling", "batch_size", "train", "workers", "encoding_errors")

    def summarize(self, ctx: Context, answered: Sequence[Pending]) -> list[Finding]:
        """One pass over the training set for all models' completions, streamed: memory is one
        chunk's index (`rouge.max_rouge_precision`) plus 8 bytes a story for the duplicate check."""
        from tinystories.data.corpus import iter_stories
        from tinystories.eval import rouge

        completions = {name: ctx.completions(name) for name in ctx.names}
        training = iter_stories(ctx.cfg.train, errors=ctx.cfg.encoding_errors)
        flat = [(name, c) for name, groups in completions.items() for group in groups for c in group]
        nearest = rouge.max_rouge_precision([c for _, c in flat], training, total=None,
                                            workers=ctx.cfg.workers, progress=ctx.cfg.progress)
        seed = ctx.cfg.seed
        found = []
        for name, groups in completions.items():
            mine = [x for (owner, _), x in zip(flat, nearest) if owner == name]
            within = rouge.within_prompt_overlap(groups)
            found.append(Finding((name,), Overlap(
                [x.precision for x in mine], [x.story for x in mine],
                bootstrap_mean([x.precision for x in mine], seed=seed), within, bootstrap_mean(within, seed=seed))))
        return found

    def report(self, results: Results, add_plot: AddPlot) -> list[Block]:
        diverse = results.of(Overlap)
        if not diverse:
            return []
        rows = [["model", "max precision vs training (mean)", "share > 0.5", "within-prompt F (mean)"]]
        for m, d in diverse.items():
            p = d.max_precision
            rows.append([m, fmt(d.max_precision_mean), f"{sum(x > 0.5 for x in p) / max(len(p), 1):.3f}",
                         fmt(d.within_prompt_f_mean)])
        train = add_plot("rouge_train.png", hist_plot({m: d.max_precision for m, d in diverse.items()},
                                                      "Highest Rouge-2 precision against the training set",
                                                      "max Rouge-2 precision", "completions"), "Memorisation")
        within = add_plot("rouge_within.png", hist_plot({m: d.within_prompt_f for m, d in diverse.items()},
                                                        "Rouge-2 F between completions of one prompt",
                                                        "Rouge-2 F", "pairs of completions"), "Diversity")
        notes = [Block("p", f"{m}: within-prompt overlap is n/a: it compares completions of the same prompt, so it "
                            "needs at least 2 per prompt (-n 2).")
                 for m, d in diverse.items() if not d.within_prompt_f]
        return [Block("h2", "Diversity and memorisation (Rouge-2)"), table(rows), *notes, train, within]
