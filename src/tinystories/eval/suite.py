"""Run any set of evaluation tasks on one or several models and write the report.

Order of work: every task prepares (samples locally, seeded, and lists the judgments it
wants), the cost of the judge calls still missing from the cache is shown, then the judge
answers, every task summarises (a task without a judge scores here), and the report is
written. Every `tinystories eval` subcommand is this pipeline with a fixed task list. The
tasks themselves live in `eval/tasks/`, one file each, listed in `eval.tasks.TASKS`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

from tinystories.errors import TinyStoriesError
from tinystories.eval.config import SuiteConfig
from tinystories.eval.judge import (
    CostPreview,
    JudgeRun,
    JudgmentCache,
    Template,
    make_judge,
    parse_grade,
    parse_instruct,
    parse_pairwise,
    parse_probe,
)
from tinystories.eval.report import write_report
from tinystories.eval.results import Finding, Results
from tinystories.eval.task import Context, Pending
from tinystories.eval.tasks import registry
from tinystories.llm_client import api_key
from tinystories.model.checkpoint import LoadedModel, model_name

Confirm = Callable[[CostPreview], bool]
PARSERS = {"grade": parse_grade, "pairwise": parse_pairwise, "instruct": parse_instruct, "probe": parse_probe}


def model_names(paths: list[str]) -> list[str]:
    """Each model's name (its run's or folder's); the whole path where two would be the same."""
    names = [model_name(Path(p).resolve()) if Path(p).exists() else model_name(p) for p in paths]
    return names if len(set(names)) == len(names) else [str(p) for p in paths]


class Suite:
    """The work tasks share (loaded models, sampled completions, judge runs), handed to each task
    as a `Context`, and the findings the tasks return."""

    def __init__(self, cfg: SuiteConfig):
        tasks = registry()
        unknown = [t for t in cfg.tasks if t not in tasks]
        if unknown:
            raise TinyStoriesError(f"unknown task(s) {unknown}; choose from {', '.join(tasks)}")
        if not cfg.models:
            raise TinyStoriesError("give at least one model folder")
        self.tasks = [tasks[t] for t in cfg.tasks]
        for task in self.tasks:
            task.check(cfg)
        if any(t.judged for t in self.tasks):
            if not cfg.judge.base_url:
                raise TinyStoriesError("the judged tasks need --judge-url (an OpenAI-compatible endpoint)")
            api_key(cfg.judge)  # fail before sampling, not after
        self.cfg = cfg
        self.names = tuple(model_names(cfg.models))
        self.paths = dict(zip(self.names, cfg.models))
        self.cache = JudgmentCache(cfg.cache_path)
        self.context = Context(cfg, self.names, self.model, self.beginnings, self.sample, self.judge_run)
        self._models: dict[str, LoadedModel] = {}
        self._completions: dict[tuple[str, tuple[str, ...]], list[list[str]]] = {}
        self._runs: dict[str, JudgeRun] = {}
        self._findings: list[Finding] = []
        self._judge: dict[str, str] | None = None

    @property
    def results(self) -> Results:
        """What the run has found so far (all of it once `run` returns)."""
        beginnings = tuple(self.beginnings()) if self._completions else ()
        return Results(asdict(self.cfg), self.names, {n: m.model.num_params() for n, m in self._models.items()},
                       {n: c for (n, texts), c in self._completions.items() if texts == beginnings},
                       tuple(self._findings), self._judge)

    # ---- what tasks share (the Context's functions) -----------------------------------

    def model(self, name: str) -> LoadedModel:
        if name not in self._models:
            from tinystories.model.loader import load_any
            from tinystories.utils import pick_device

            self._models[name] = load_any(self.paths[name], pick_device(self.cfg.device))
        return self._models[name]

    def beginnings(self) -> list[str]:
        from tinystories.data.beginnings import load_beginnings

        return load_beginnings(self.cfg.prompts or None)

    def sample(self, name: str, texts: Sequence[str]) -> list[list[str]]:
        """`samples` seeded completions per text, [text][sample]; sampled once per model and texts,
        whichever tasks ask (GPT-Eval, pairwise and diversity share those of the beginnings)."""
        key = (name, tuple(texts))
        if key not in self._completions:
            from tinystories.eval.sample import sample_completions

            self._completions[key] = sample_completions(self.model(name), texts, self.cfg.samples,
                                                        self.cfg.sampling, self.cfg.batch_size, self.cfg.progress,
                                                        name)
        return self._completions[key]

    def judge_run(self, kind: str) -> JudgeRun:
        if kind not in self._runs:
            template = Template.load(self.cfg.templates.get(kind) or kind)
            self._runs[kind] = JudgeRun(template, PARSERS[kind], self.cfg.judge.model, self.cache)
        return self._runs[kind]

    # ---- the run ---------------------------------------------------------------------

    def run(self, confirm: Confirm) -> Path | None:
        """Evaluate every model; the report folder, or None if judging was declined or a dry run.

        `confirm(preview)` is asked before any judge call is made (the CLI shows the cost and
        asks the user); False stops the run there.
        """
        pending = {task.name: task.prepare(self.context) for task in self.tasks}
        flat = [p for ps in pending.values() for p in ps]
        if flat:
            if not self.judge_all(flat, confirm):
                return None
            self._judge = {"model": self.cfg.judge.model, "base_url": self.cfg.judge.base_url}
        for task in self.tasks:
            self._findings += task.summarize(self.context, pending[task.name])
        judgments = [j.to_json() for p in flat for j in p.judgments]
        return write_report(self.cfg.out, self.results, judgments, self.tasks)

    def judge_all(self, pending: list[Pending], confirm: Confirm) -> bool:
        previews = [p.run.preview(p.judgments, self.cfg.judge.max_tokens) for p in pending]
        total = CostPreview(*(sum(getattr(p, f) for p in previews)
                              for f in ("calls", "cached", "prompt_tokens", "max_completion_tokens")))
        if not confirm(total):
            return False
        if total.calls == 0:
            return True

        async def go() -> None:
            async with make_judge(self.cfg.judge)() as complete:
                for p in pending:
                    await p.run.run(p.judgments, complete, self.cfg.judge.concurrency,
                                    self.cfg.judge_parse_attempts, self.cfg.progress)

        asyncio.run(go())
        return True
