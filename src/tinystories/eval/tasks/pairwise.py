"""Pairwise judging: two models' completions of the same beginnings, judged against each other.

Each pair is judged in both orders; a disagreement between the two orders counts as a tie,
which cancels the judge's position bias.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from tinystories.errors import TinyStoriesError
from tinystories.eval.config import SuiteConfig
from tinystories.eval.judge import JudgeRun, Judgment, MissingInfo, missing_summary
from tinystories.eval.results import Finding, Result, Results
from tinystories.eval.sections import fmt, missing_block
from tinystories.eval.stats import Estimate, win_rate
from tinystories.eval.task import AddPlot, Context, Pending, Task
from tinystories.eval.tasks.gpt_eval import SAMPLING
from tinystories.render import Block, table


def pairwise_requests(run: JudgeRun, names: tuple[str, str], beginnings: Sequence[str],
                      a: Sequence[Sequence[str]], b: Sequence[Sequence[str]]) -> list[Judgment]:
    """Two judgments per (beginning, sample): A shown first, then B shown first."""
    items = []
    for i, beginning in enumerate(beginnings):
        for k, (ca, cb) in enumerate(zip(a[i], b[i])):
            meta = {"models": list(names), "prompt": i, "sample": k, "beginning": beginning,
                    "completion_a": ca, "completion_b": cb}
            items.append(({"beginning": beginning, "completion_1": ca, "completion_2": cb},
                          {**meta, "a_first": True}))
            items.append(({"beginning": beginning, "completion_1": cb, "completion_2": ca},
                          {**meta, "a_first": False}))
    return run.requests(items)


def pairwise_outcomes(judgments: Sequence[Judgment]) -> list[str | None]:
    """'a', 'b' or 'tie' per pair of judgments (both orders agree, else tie); None if one is missing."""
    outcomes: list[str | None] = []
    for first, second in zip(judgments[::2], judgments[1::2]):
        if first.parsed is None or second.parsed is None:
            outcomes.append(None)
            continue
        votes = []
        for parsed, meta in ((first.parsed, first.meta), (second.parsed, second.meta)):
            w = parsed["winner"]
            votes.append("tie" if w == "tie" else ("a" if (w == "1") == meta["a_first"] else "b"))
        outcomes.append(votes[0] if votes[0] == votes[1] else "tie")
    return outcomes


@dataclass(frozen=True)
class WinRate(Result):
    """Model A's win rate against model B (tie = 1/2), and the counts of each outcome."""
    key: ClassVar[str] = "pairwise"
    win_rate: Estimate
    a: int
    b: int
    tie: int
    missing: int
    missing_info: MissingInfo


def summarize_pairwise(judgments: Sequence[Judgment], seed: int = 0) -> WinRate:
    counts = win_rate(pairwise_outcomes(judgments), seed=seed)
    return WinRate(Estimate(**counts["win_rate"]), counts["a"], counts["b"], counts["tie"], counts["missing"],
                   missing_summary(judgments, ["winner"]))


class Pairwise(Task):
    name = "pairwise"
    help = "judge two models' completions against each other (win rate)"
    judged = True
    options = SAMPLING

    def check(self, cfg: SuiteConfig) -> None:
        if len(cfg.models) != 2:
            raise TinyStoriesError(f"pairwise compares exactly two models, got {len(cfg.models)}")
        if cfg.sampling.seed is None:
            raise TinyStoriesError("pairwise needs a sampling seed")

    def prepare(self, ctx: Context) -> list[Pending]:
        a, b = ctx.names
        run = ctx.judge("pairwise")
        return [Pending(run, pairwise_requests(run, (a, b), ctx.beginnings(), ctx.completions(a),
                                               ctx.completions(b)), (a, b))]

    def summarize(self, ctx: Context, answered: Sequence[Pending]) -> list[Finding]:
        return [Finding(p.models, summarize_pairwise(p.judgments, ctx.cfg.seed)) for p in answered]

    def report(self, results: Results, add_plot: AddPlot) -> list[Block]:
        blocks = []
        for (a, b), pair in results.across(WinRate):
            blocks += [Block("h2", f"Pairwise: {a} vs {b}"),
                       Block("p", f"Win rate of {a} (tie = 1/2; each pair judged in both orders, a "
                                  f"disagreement counts as a tie): {fmt(pair.win_rate)}."),
                       table([["A wins", "B wins", "ties", "missing"],
                              [str(pair.a), str(pair.b), str(pair.tie), str(pair.missing)]]),
                       *missing_block(pair.missing_info, f"{a} vs {b}")]
        return blocks
