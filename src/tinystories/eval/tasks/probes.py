"""The paper's probes of factual knowledge, reasoning and context tracking (its Figures 10-12):
short beginnings whose continuation is right or wrong, judged as correct/incorrect/unclear."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from tinystories.data.beginnings import normalize_quotes
from tinystories.eval.judge import JudgeRun, Judgment, MissingInfo, missing_summary
from tinystories.eval.results import Finding, Result, Results
from tinystories.eval.sections import bar_plot, fmt, missing_block
from tinystories.eval.stats import Estimate, bootstrap_mean
from tinystories.eval.task import AddPlot, Context, Pending, Task
from tinystories.render import Block, table
from tinystories.utils import resource_path

CATEGORIES = {
    "factual": "factual knowledge",
    "reasoning": "reasoning",
    "context_tracking": "context tracking",
}


def load_probes() -> dict[str, list[str]]:
    """Category -> prompts, curly quotes from the PDF made straight."""
    return {cat: [normalize_quotes(p) for p in json.loads(resource_path(f"paper_{cat}_prompts.json").read_text())]
            for cat in CATEGORIES}


def probe_requests(run: JudgeRun, model_name: str, probes: dict[str, list[str]],
                   completions: Mapping[str, Sequence[Sequence[str]]]) -> list[Judgment]:
    return run.requests([
        ({"category": CATEGORIES[cat], "beginning": prompt.rstrip(), "completion": completion.strip()},
         {"model": model_name, "category": cat, "prompt": i, "sample": k, "beginning": prompt,
          "completion": completion})
        for cat, prompts in probes.items()
        for i, (prompt, samples) in enumerate(zip(prompts, completions[cat]))
        for k, completion in enumerate(samples)
    ])


@dataclass(frozen=True)
class ProbeScores(Result):
    """One model's share judged correct per category probed."""
    key: ClassVar[str] = "probes"
    missing_info: MissingInfo
    correct: dict[str, Estimate]  # CATEGORIES (those probed)

    def to_json(self) -> dict[str, Any]:  # (the categories beside missing_info, not under a key)
        return {"missing_info": asdict(self.missing_info), **{c: e.to_json() for c, e in self.correct.items()}}


def summarize_probes(judgments: Sequence[Judgment], seed: int = 0) -> ProbeScores:
    """Per category: share judged correct (unclear counts as not correct), with its interval."""
    correct = {}
    for cat in CATEGORIES:
        js = [j for j in judgments if j.meta["category"] == cat]
        if js:
            verdicts = [float(j.parsed["verdict"] == "correct") if j.parsed is not None else None for j in js]
            correct[cat] = bootstrap_mean(verdicts, seed=seed)
    return ProbeScores(missing_summary(judgments, ["verdict"]), correct)


class Probes(Task):
    name = "probes"
    help = "the paper's factual knowledge, reasoning and context-tracking probes"
    judged = True
    options = ("samples", "sampling", "batch_size")

    def prepare(self, ctx: Context) -> list[Pending]:
        run = ctx.judge("probe")
        probe_sets = load_probes()
        return [Pending(run, probe_requests(run, name, probe_sets,
                                            {cat: ctx.completions(name, ps) for cat, ps in probe_sets.items()}),
                        (name,))
                for name in ctx.names]

    def summarize(self, ctx: Context, answered: Sequence[Pending]) -> list[Finding]:
        return [Finding(p.models, summarize_probes(p.judgments, ctx.cfg.seed)) for p in answered]

    def report(self, results: Results, add_plot: AddPlot) -> list[Block]:
        probed = {m: p.correct for m, p in results.of(ProbeScores).items()}
        if not probed:
            return []
        cats = [c for c in CATEGORIES if any(c in p for p in probed.values())]
        rows = [["model", *cats]] + [[m, *(fmt(p.get(c)) for c in cats)] for m, p in probed.items()]
        plot = add_plot("probes.png", bar_plot(probed, cats, "Share judged correct (95% CI)", "share"), "Probes")
        missing = [b for m, p in results.of(ProbeScores).items() for b in missing_block(p.missing_info, m)]
        return [Block("h2", "Knowledge, reasoning and context-tracking probes"), table(rows), *missing, plot]
