"""What an evaluation is: the interface every task in `eval/tasks/` implements, and what a task is given.

A task works in two moments, so that the suite can show the cost of every judge call before
spending anything: `prepare` samples what it needs (local, seeded) and returns the judgments it
wants; the suite then asks the judge; `summarize` turns the answers (or, for a task without a
judge, its own scoring) into frozen results. `report` renders its section of the report from
the run's results. A task sees a `Context`, never the suite: the settings, the models' names,
and the work tasks share (loaded models, completions sampled once, judge runs).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from tinystories.eval.config import SuiteConfig
from tinystories.eval.judge import JudgeRun, Judgment
from tinystories.eval.results import Finding, Results
from tinystories.render import Block

if TYPE_CHECKING:  # (torch: not imported when the CLI starts)
    from tinystories.model.checkpoint import LoadedModel

AddPlot = Callable[[str, bytes, str], Block]  # (file name, PNG, caption) -> the plot's block in the report


@dataclass(frozen=True)
class Context:
    """What a task may use: each call is cached across tasks (a model loads once, GPT-Eval,
    pairwise and diversity share the completions of the beginnings)."""
    cfg: SuiteConfig
    names: tuple[str, ...]  # the models, in the order given
    model: Callable[[str], LoadedModel]  # name -> the loaded model
    beginnings: Callable[[], list[str]]  # the story beginnings (`cfg.prompts`, default: the paper's 44)
    sample: Callable[[str, Sequence[str]], list[list[str]]]  # (name, texts) -> `cfg.samples` seeded completions, [text][sample]
    judge: Callable[[str], JudgeRun]  # template kind (grade, pairwise, instruct, probe) -> its run

    def completions(self, name: str, texts: Sequence[str] | None = None) -> list[list[str]]:
        """`sample` of `texts`, by default of the beginnings. Row j of a model's job list has
        seed `sampling.seed + j`."""
        return self.sample(name, self.beginnings() if texts is None else texts)


@dataclass(frozen=True)
class Pending:
    """Judgments a task wants, about one model or (a comparison) several."""
    run: JudgeRun
    judgments: list[Judgment]
    models: tuple[str, ...]


class Task:
    name: ClassVar[str] = ""  # the `tinystories eval NAME` subcommand
    help: ClassVar[str] = ""
    judged: ClassVar[bool] = False  # needs a judge LLM
    options: ClassVar[tuple[str, ...]] = ()  # the SuiteConfig fields it reads (its command-line flags)

    def check(self, cfg: SuiteConfig) -> None:
        """Refuse settings this task cannot run with, before any work (raise TinyStoriesError)."""

    def prepare(self, ctx: Context) -> list[Pending]:
        """Sample what the judge will see; the judgments to ask (none for a task without a judge)."""
        return []

    def summarize(self, ctx: Context, answered: Sequence[Pending]) -> list[Finding]:
        """This task's results: from the answered judgments, or scored here."""
        raise NotImplementedError

    def report(self, results: Results, add_plot: AddPlot) -> list[Block]:
        """This task's section of the report."""
        return []
