"""What an evaluation is: the interface every task in `eval/tasks/` implements.

A task works in three moments, so that the suite can show the cost of every judge call
before spending anything: `prepare` samples or scores what it needs (local, seeded) and
returns the judgments it wants; the suite then asks the judge; `summarize` turns the
answers into numbers in the results; `report` renders its section of the report.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from tinystories.eval.config import SuiteConfig
from tinystories.eval.judge import JudgeRun, Judgment
from tinystories.eval.report import Block

if TYPE_CHECKING:
    from tinystories.eval.suite import Suite

AddPlot = Callable[[str, bytes, str], Block]  # (file name, PNG, caption) -> the plot's block in the report


@dataclass
class Pending:
    """Judgments a task wants, for one model (or None for a task across models)."""
    run: JudgeRun
    judgments: list[Judgment]
    model: str | None


class Task:
    name: ClassVar[str] = ""  # the `tinystories eval NAME` subcommand
    help: ClassVar[str] = ""
    judged: ClassVar[bool] = False  # needs a judge LLM
    options: ClassVar[tuple[str, ...]] = ()  # the SuiteConfig fields it reads (its command-line flags)

    def check(self, cfg: SuiteConfig) -> None:
        """Refuse settings this task cannot run with, before any work (raise TinyStoriesError)."""

    def prepare(self, suite: Suite) -> list[Pending]:
        """Sample or score (into `suite.results`); the judgments still to ask."""
        raise NotImplementedError

    def summarize(self, suite: Suite, pending: list[Pending]) -> None:
        """Answered judgments into `suite.results` (judged tasks only)."""

    def report(self, results: dict[str, Any], add_plot: AddPlot) -> list[Block]:
        """This task's section of the report."""
        return []


def per_model(results: dict[str, Any], key: str) -> dict[str, Any]:
    """{model: results[models][model][key]} for the models that have `key`."""
    return {m: r[key] for m, r in results.get("models", {}).items() if key in r}


TASKS: dict[str, Task] = {}  # filled by `@register` as `eval.tasks.registry()` imports each module


def register(cls: type[Task]) -> type[Task]:
    """Class decorator of a task module: the task joins the registry under its `name`."""
    TASKS[cls.name] = cls()
    return cls
