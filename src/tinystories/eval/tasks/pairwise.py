"""Pairwise judging: two models' completions of the same beginnings, judged against each other.

Each pair is judged in both orders; a disagreement between the two orders counts as a tie,
which cancels the judge's position bias.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from tinystories.errors import TinyStoriesError
from tinystories.eval.config import SuiteConfig
from tinystories.eval.judge import JudgeRun, Judgment, missing_summary
from tinystories.eval.report import Block, fmt, missing_block
from tinystories.eval.stats import win_rate
from tinystories.eval.task import AddPlot, Pending, Task, register
from tinystories.eval.tasks.gpt_eval import SAMPLING

if TYPE_CHECKING:
    from tinystories.eval.suite import Suite


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


def summarize_pairwise(judgments: Sequence[Judgment], seed: int = 0) -> dict[str, Any]:
    return {**win_rate(pairwise_outcomes(judgments), seed=seed),
            "missing_info": missing_summary(judgments, ["winner"])}


@register
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

    def prepare(self, suite: Suite) -> list[Pending]:
        a, b = suite.names
        run = suite.judge_run("pairwise")
        return [Pending(run, pairwise_requests(run, (a, b), suite.beginnings(), suite.completions(a),
                                               suite.completions(b)), None)]

    def summarize(self, suite: Suite, pending: list[Pending]) -> None:
        for p in pending:
            suite.results["pairwise"].append({"models": suite.names,
                                              **summarize_pairwise(p.judgments, suite.cfg.seed)})

    def report(self, results: dict[str, Any], add_plot: AddPlot) -> list[Block]:
        blocks = []
        for pair in results.get("pairwise", []):
            a, b = pair["models"]
            blocks += [Block("h2", f"Pairwise: {a} vs {b}"),
                       Block("p", f"Win rate of {a} (tie = 1/2; each pair judged in both orders, a "
                                  f"disagreement counts as a tie): {fmt(pair['win_rate'])}."),
                       Block("table", rows=[["A wins", "B wins", "ties", "missing"],
                                            [str(pair["a"]), str(pair["b"]), str(pair["tie"]),
                                             str(pair["missing"])]]),
                       *missing_block(pair.get("missing_info"), f"{a} vs {b}")]
        return blocks
