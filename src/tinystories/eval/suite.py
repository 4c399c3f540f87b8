"""Run any set of evaluations on one or several models and write the report.

Order of work: sample every completion the tasks need (local, seeded), show the cost of the
judge calls still missing from the cache, then judge, summarise and write the report. Every
`tinystories eval` subcommand is this pipeline with a fixed task list.
"""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tinystories.data.corpus import read_stories
from tinystories.errors import TinyStoriesError
from tinystories.eval import gpt_eval, instruct, probes, rouge
from tinystories.eval.bpb import evaluate_bpb
from tinystories.eval.judge import (
    CostPreview,
    JudgeConfig,
    JudgeRun,
    Judgment,
    JudgmentCache,
    Template,
    make_judge,
    parse_grade,
    parse_instruct,
    parse_pairwise,
    parse_probe,
)
from tinystories.eval.report import write_report
from tinystories.eval.stats import bootstrap_mean
from tinystories.infer.sampling import SamplingConfig
from tinystories.model.checkpoint import LoadedModel, load_any
from tinystories.utils import pick_device

JUDGE_TASKS = ("gpt-eval", "pairwise", "instruct", "probes")
TASKS = (*JUDGE_TASKS, "diversity", "bpb")
PARSERS = {"grade": parse_grade, "pairwise": parse_pairwise, "instruct": parse_instruct, "probe": parse_probe}


@dataclass
class SuiteConfig:
    models: list[str]
    tasks: list[str]
    out: str = "eval_report"
    prompts: str = ""  # GPT-Eval beginnings (YAML/JSON/text); "" = the paper's 44
    instructions: str = ""  # instruction headers (JSON list); "" = the bundled 50
    samples: int = 3  # completions per beginning
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(max_new_tokens=200, seed=0))
    batch_size: int = 32
    device: str = "auto"
    train: str = "bundled:train"  # training stories for the memorisation check
    workers: int = 1  # processes indexing the training stories
    data: str = "bundled:valid"  # stories for bits per byte
    max_stories: int = 0  # bits per byte on the first N stories; 0 = all
    stride: int = 0  # sliding-window stride for long stories; 0 = half the context
    seed: int = 0  # bootstrap
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    templates: dict[str, str] = field(default_factory=dict)  # kind -> template file, overriding the bundled one
    yes: bool = False
    dry_run: bool = False
    progress: bool = True

    def validate(self) -> None:
        unknown = set(self.tasks) - set(TASKS)
        if unknown:
            raise TinyStoriesError(f"unknown task(s) {sorted(unknown)}; choose from {', '.join(TASKS)}")
        if not self.models:
            raise TinyStoriesError("give at least one model folder")
        if "pairwise" in self.tasks and len(self.models) != 2:
            raise TinyStoriesError(f"pairwise compares exactly two models, got {len(self.models)}")
        if self.samples < 1:
            raise TinyStoriesError(f"--samples must be >= 1, got {self.samples}")
        if "pairwise" in self.tasks and self.sampling.seed is None:
            raise TinyStoriesError("pairwise needs a sampling seed")
        if any(t in JUDGE_TASKS for t in self.tasks):
            if not self.judge.base_url:
                raise TinyStoriesError("the judged tasks need --judge-url (an OpenAI-compatible endpoint)")
            # fail before sampling, not after
            if "api.openai.com" in self.judge.base_url and not os.environ.get(self.judge.api_key_env):
                raise TinyStoriesError(f"set the judge's API key in the environment variable "
                                       f"{self.judge.api_key_env} (or name another with --api-key-env)")


def model_names(paths: list[str]) -> list[str]:
    names = [Path(p).name for p in paths]
    return names if len(set(names)) == len(names) else [str(p) for p in paths]


def confirm(preview: CostPreview, cfg: SuiteConfig) -> bool:
    """Print the cost and ask before spending; False = stop here (dry run or declined)."""
    print(f"judge {cfg.judge.model} at {cfg.judge.base_url}: {preview}", file=sys.stderr)
    if cfg.dry_run:
        print("dry run: no judge calls made", file=sys.stderr)
        return False
    if preview.calls == 0 or cfg.yes:
        return True
    if not sys.stdin.isatty():
        raise TinyStoriesError("judge calls cost money: pass --yes to make them, or --dry-run to only count them")
    return input("proceed? [y/N] ").strip().lower() in ("y", "yes")


class Suite:
    def __init__(self, cfg: SuiteConfig):
        cfg.validate()
        self.cfg = cfg
        self.device = pick_device(cfg.device)
        self.names = model_names(cfg.models)
        self.cache = JudgmentCache(cfg.judge.cache or None)
        self.results: dict[str, Any] = {"config": asdict(cfg), "models": {n: {} for n in self.names}, "pairwise": []}
        self.runs: dict[str, JudgeRun] = {}
        self.pending: list[tuple[JudgeRun, list[Judgment], str, str]] = []  # run, judgments, task, model

    def run_for(self, kind: str) -> JudgeRun:
        if kind not in self.runs:
            template = Template.load(self.cfg.templates.get(kind) or kind)
            self.runs[kind] = JudgeRun(template, PARSERS[kind], self.cfg.judge.model, self.cache)
        return self.runs[kind]

    def sample(self, loaded: LoadedModel, texts: list[str], n: int | None = None) -> list[list[str]]:
        return gpt_eval.sample_completions(loaded, texts, n or self.cfg.samples, self.cfg.sampling,
                                           self.cfg.batch_size, self.cfg.progress)

    def run(self) -> Path | None:
        """Evaluate every model; the report folder, or None if judging was declined or a dry run."""
        cfg, tasks = self.cfg, set(self.cfg.tasks)
        beginnings = gpt_eval.load_prompts(cfg.prompts or None) if tasks & {"gpt-eval", "pairwise", "diversity"} else []
        stories = read_stories(cfg.data)[0] if "bpb" in tasks else []
        stories = stories[:cfg.max_stories] if cfg.max_stories else stories
        completions = {name: self.evaluate_model(load_any(path, self.device), name, beginnings, stories)
                       for path, name in zip(cfg.models, self.names)}
        if "pairwise" in tasks:
            a, b = self.names
            self.pending.append((self.run_for("pairwise"), gpt_eval.pairwise_requests(
                self.run_for("pairwise"), (a, b), beginnings, completions[a], completions[b]), "pairwise", ""))
        if "diversity" in tasks:
            self.diversity(completions)
        if self.pending and not self.judge_all():
            return None
        self.summarize()
        judgments = [j.to_json() for _, js, _, _ in self.pending for j in js]
        return write_report(cfg.out, self.results, judgments)

    def evaluate_model(self, loaded: LoadedModel, name: str, beginnings: list[str],
                       stories: list[str]) -> list[list[str]]:
        """Sample what the tasks need, queue its judgments, score bpb; the beginnings' completions."""
        tasks, entry = set(self.cfg.tasks), self.results["models"][name]
        entry["params"] = sum(p.numel() for p in loaded.model.parameters())
        completions = self.sample(loaded, beginnings) if beginnings else []
        entry["completions"] = completions
        if "gpt-eval" in tasks:
            run = self.run_for("grade")
            self.pending.append((run, gpt_eval.grade_requests(run, name, beginnings, completions), "gpt_eval", name))
        if "instruct" in tasks:
            run = self.run_for("instruct")
            headers = instruct.load_instructions(self.cfg.instructions or None)
            stories_written = self.sample(loaded, [instruct.model_prompt(h) for h in headers])
            self.pending.append((run, instruct.instruct_requests(run, name, headers, stories_written),
                                 "instruct", name))
        if "probes" in tasks:
            run = self.run_for("probe")
            probe_sets = probes.load_probes()
            written = {cat: self.sample(loaded, ps) for cat, ps in probe_sets.items()}
            self.pending.append((run, probes.probe_requests(run, name, probe_sets, written), "probes", name))
        if "bpb" in tasks:
            entry["bpb"] = evaluate_bpb(loaded.model, loaded.tokenizer, stories, self.cfg.batch_size,
                                        self.cfg.stride or None, self.cfg.progress).to_json()
        return completions

    def diversity(self, completions: dict[str, list[list[str]]]) -> None:
        """Rouge-2 of every model's completions: one pass over the training set for all models."""
        training, _ = read_stories(self.cfg.train)
        flat = [(name, c) for name, groups in completions.items() for group in groups for c in group]
        nearest = rouge.max_rouge_precision([c for _, c in flat], training, total=len(training),
                                            workers=self.cfg.workers, progress=self.cfg.progress)
        for name, groups in completions.items():
            mine = [x for (owner, _), x in zip(flat, nearest) if owner == name]
            within = rouge.within_prompt_overlap(groups)
            self.results["models"][name]["diversity"] = {
                "max_precision": [x.precision for x in mine],
                "nearest_story": [x.story for x in mine],
                "max_precision_mean": bootstrap_mean([x.precision for x in mine], seed=self.cfg.seed).to_json(),
                "within_prompt_f": within,
                "within_prompt_f_mean": bootstrap_mean(within, seed=self.cfg.seed).to_json(),
            }

    def judge_all(self) -> bool:
        previews = [run.preview(js, self.cfg.judge.max_tokens) for run, js, _, _ in self.pending]
        total = CostPreview(*(sum(getattr(p, f) for p in previews)
                              for f in ("calls", "cached", "prompt_tokens", "max_completion_tokens")))
        if not confirm(total, self.cfg):
            return False
        if total.calls == 0:
            return True

        async def go() -> None:
            async with make_judge(self.cfg.judge)() as complete:
                for run, js, _, _ in self.pending:
                    await run.run(js, complete, self.cfg.judge.concurrency, self.cfg.judge.parse_attempts,
                                  self.cfg.progress)

        asyncio.run(go())
        return True

    def summarize(self) -> None:
        seed = self.cfg.seed
        for _, js, task, name in self.pending:
            if task == "gpt_eval":
                self.results["models"][name][task] = gpt_eval.summarize_grades(js, seed)
            elif task == "instruct":
                self.results["models"][name][task] = instruct.summarize_instruct(js, seed)
            elif task == "probes":
                self.results["models"][name][task] = probes.summarize_probes(js, seed)
            else:
                self.results["pairwise"].append({"models": self.names, **gpt_eval.summarize_pairwise(js, seed)})
