"""The boundary between the suite and its tasks: a task sees only a `Context` and returns frozen,
typed results; the run's results lay out results.json; the task list is one explicit tuple."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import pytest

import tinystories.eval.tasks
from tinystories.eval.config import SuiteConfig
from tinystories.eval.judge import JudgeRun, MissingInfo, Template, parse_grade, parse_pairwise
from tinystories.eval.results import Finding, Results
from tinystories.eval.stats import Estimate
from tinystories.eval.task import Context, Task
from tinystories.eval.tasks import TASKS, registry
from tinystories.eval.tasks.gpt_eval import GptEval, Grades
from tinystories.eval.tasks.pairwise import Pairwise, WinRate
from tinystories.render import Block, to_html, to_markdown

BEGINNINGS = ["Tom had a ball. He", "Lily saw a cat. She"]


def fake_context(names: tuple[str, ...]) -> tuple[Context, list[tuple[str, tuple[str, ...]]]]:
    """A context with scripted completions and no model: what a task asks for is recorded."""
    asked: list[tuple[str, tuple[str, ...]]] = []

    def sample(name: str, texts: Sequence[str]) -> list[list[str]]:
        asked.append((name, tuple(texts)))
        return [[f" {name} wrote {i}.{k}" for k in range(2)] for i, _ in enumerate(texts)]

    def no_model(name: str) -> NoReturn:
        raise AssertionError("a judged task loads no model itself: it asks for completions")

    runs = {"grade": JudgeRun(Template.load("grade"), parse_grade, "j"),
            "pairwise": JudgeRun(Template.load("pairwise"), parse_pairwise, "j")}
    cfg = SuiteConfig(models=list(names), tasks=["gpt-eval"], seed=3)
    return Context(cfg, names, no_model, lambda: list(BEGINNINGS), sample, runs.__getitem__), asked


def test_a_task_runs_on_a_context_and_returns_frozen_results() -> None:
    ctx, asked = fake_context(("m1", "m2"))
    task = GptEval()
    pending = task.prepare(ctx)
    assert [p.models for p in pending] == [("m1",), ("m2",)]
    assert asked == [("m1", tuple(BEGINNINGS)), ("m2", tuple(BEGINNINGS))]
    assert [j.meta["completion"] for j in pending[0].judgments] == [" m1 wrote 0.0", " m1 wrote 0.1",
                                                                    " m1 wrote 1.0", " m1 wrote 1.1"]
    for p in pending:  # the judge's answers: every score 7, one judgment missing
        for j in p.judgments[1:]:
            j.parsed = {"grammar": 7, "creativity": 7, "consistency": 7, "plot": 7, "age_group": "B"}
    found = task.summarize(ctx, pending)
    assert [f.models for f in found] == [("m1",), ("m2",)]
    grades = found[0].result
    assert isinstance(grades, Grades) and (grades.judged, grades.missing) == (3, 1)
    assert isinstance(grades.scores["plot"], Estimate) and grades.scores["plot"].mean == 7
    assert grades.age_groups["B"] == 3 and isinstance(grades.missing_info, MissingInfo)
    with pytest.raises(dataclasses.FrozenInstanceError):
        grades.judged = 4  # type: ignore[misc]


def test_results_lay_out_results_json() -> None:
    ctx, _ = fake_context(("a", "b"))
    pairwise = Pairwise()
    pending = pairwise.prepare(ctx)
    assert [p.models for p in pending] == [("a", "b")]
    for j in pending[0].judgments:
        j.parsed = {"winner": "1"}  # always the one shown first: every pair a tie
    found = pairwise.summarize(ctx, pending)
    assert isinstance(found[0].result, WinRate) and found[0].result.tie == len(BEGINNINGS) * 2
    grades = Grades({"grammar": Estimate(5.0, 4.0, 6.0, 2)}, {"A": 2}, 2, 0, MissingInfo(2, 0, {}, [], ""))
    results = Results({"seed": 3}, ("a", "b"), {"a": 10, "b": 20}, {"a": [["x"]]},
                      (Finding(("a",), grades), *found), {"model": "j", "base_url": "u"})
    data = results.to_json()
    assert list(data) == ["config", "models", "pairwise", "judge"]
    assert data["models"]["a"] == {"params": 10, "completions": [["x"]], "gpt_eval": grades.to_json()}
    assert data["models"]["b"] == {"params": 20}
    assert data["models"]["a"]["gpt_eval"]["scores"]["grammar"] == {"mean": 5.0, "low": 4.0, "high": 6.0, "n": 2,
                                                                    "missing": 0}
    assert data["pairwise"][0]["models"] == ["a", "b"] and data["pairwise"][0]["tie"] == 4
    assert results.of(Grades) == {"a": grades} and results.of(WinRate) == {}
    assert results.across(WinRate) == [(("a", "b"), found[0].result)]
    assert [what for what, _ in results.missing()] == ["a: gpt_eval", "a vs b"]
    assert Results({}, ("a",)).to_json() == {"config": {}, "models": {"a": {}}, "pairwise": []}


def test_the_task_list_is_one_explicit_tuple() -> None:
    assert [t.name for t in TASKS] == ["gpt-eval", "pairwise", "instruct", "probes", "diversity", "bpb"]
    assert list(registry()) == [t.name for t in TASKS] and all(isinstance(t, Task) for t in TASKS)
    files = {p.stem for p in Path(tinystories.eval.tasks.__file__).parent.glob("*.py")} - {"__init__"}
    assert {type(t).__module__.rsplit(".", 1)[1] for t in TASKS} == files  # each task file's task is listed


def test_blocks_render_to_markdown_and_html() -> None:
    blocks = [Block("h1", "T"), Block("p", "a < b"), Block("table", rows=(("x", "y|z"), ("1", "2"))),
              Block("img", "plot", png=b"\x89PNG")]
    assert to_markdown(blocks, {b"\x89PNG": "p.png"}) == (
        "# T\n\na < b\n\n| x | y\\|z |\n|---|---|\n| 1 | 2 |\n\n![plot](plots/p.png)\n")
    page = to_html(blocks, "title")
    assert "<p>a &lt; b</p>" in page and '<img alt="plot" src="data:image/png;base64,iVBORw==">' in page
