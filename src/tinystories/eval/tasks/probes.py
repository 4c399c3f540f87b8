"""The paper's probes of factual knowledge, reasoning and context tracking (its Figures 10-12):
short beginnings whose continuation is right or wrong, judged as correct/incorrect/unclear."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from tinystories.data.beginnings import normalize_quotes
from tinystories.eval.judge import JudgeRun, Judgment, missing_summary
from tinystories.eval.report import Block, bar_plot, fmt, missing_block
from tinystories.eval.stats import bootstrap_mean
from tinystories.eval.task import AddPlot, Pending, Task, per_model, register
from tinystories.utils import resource_path

if TYPE_CHECKING:
    from tinystories.eval.suite import Suite

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


def summarize_probes(judgments: Sequence[Judgment], seed: int = 0) -> dict[str, Any]:
    """Per category: share judged correct (unclear counts as not correct), with its interval."""
    out: dict[str, Any] = {"missing_info": missing_summary(judgments, ["verdict"])}
    for cat in CATEGORIES:
        js = [j for j in judgments if j.meta["category"] == cat]
        if js:
            verdicts = [float(j.parsed["verdict"] == "correct") if j.parsed is not None else None for j in js]
            out[cat] = bootstrap_mean(verdicts, seed=seed).to_json()
    return out


@register
class Probes(Task):
    name = "probes"
    help = "the paper's factual knowledge, reasoning and context-tracking probes"
    judged = True
    options = ("samples", "sampling", "batch_size")

    def prepare(self, suite: Suite) -> list[Pending]:
        run = suite.judge_run("probe")
        probe_sets = load_probes()
        return [Pending(run, probe_requests(run, name, probe_sets,
                                            {cat: suite.completions(name, ps) for cat, ps in probe_sets.items()}),
                        name)
                for name in suite.names]

    def summarize(self, suite: Suite, pending: list[Pending]) -> None:
        for p in pending:
            suite.results["models"][p.model]["probes"] = summarize_probes(p.judgments, suite.cfg.seed)

    def report(self, results: dict[str, Any], add_plot: AddPlot) -> list[Block]:
        probed = per_model(results, "probes")
        if not probed:
            return []
        cats = [c for c in CATEGORIES if any(c in p for p in probed.values())]
        rows = [["model", *cats]] + [[m, *(fmt(p.get(c, {})) for c in cats)] for m, p in probed.items()]
        plot = add_plot("probes.png", bar_plot(probed, cats, "Share judged correct (95% CI)", "share"), "Probes")
        missing = [b for m, p in probed.items() for b in missing_block(p.get("missing_info"), m)]
        return [Block("h2", "Knowledge, reasoning and context-tracking probes"), Block("table", rows=rows),
                *missing, plot]
