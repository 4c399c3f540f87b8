"""Validation bits per byte: exact, whole stories, comparable across tokenizers (`eval.bpb`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tinystories.eval.report import Block, size_plot
from tinystories.eval.task import AddPlot, Pending, Task, per_model, register

if TYPE_CHECKING:
    from tinystories.eval.suite import Suite


@register
class BitsPerByte(Task):
    name = "bpb"
    help = "validation bits per byte (exact, per story, sliding window past the context)"
    options = ("data", "max_stories", "stride", "batch_size", "encoding_errors")

    def prepare(self, suite: Suite) -> list[Pending]:
        from tinystories.data.corpus import read_stories
        from tinystories.eval.bpb import evaluate_bpb

        stories = read_stories(suite.cfg.data, errors=suite.cfg.encoding_errors)[0]
        stories = stories[:suite.cfg.max_stories] if suite.cfg.max_stories else stories
        for name in suite.names:
            loaded = suite.model(name)
            suite.results["models"][name]["bpb"] = evaluate_bpb(
                loaded.model, loaded.tokenizer, stories, suite.cfg.batch_size, suite.cfg.stride or None,
                suite.cfg.progress).to_json()
        return []

    def report(self, results: dict[str, Any], add_plot: AddPlot) -> list[Block]:
        scored = per_model(results, "bpb")
        if not scored:
            return []
        models = results["models"]
        rows = [["model", "parameters", "bits per byte", "loss (nats/token)", "tokens", "bytes", "stories"]]
        rows += [[m, f"{models[m].get('params', 0):,}", f"{s['bpb']:.4f}", f"{s['loss']:.4f}",
                  str(s["tokens"]), str(s["bytes"]), str(s["stories"])] for m, s in scored.items()]
        blocks = [Block("h2", "Validation loss"), Block("table", rows=rows)]
        sized = {m: (models[m]["params"], s["bpb"]) for m, s in scored.items() if models[m].get("params")}
        if sized:
            blocks.append(add_plot("bpb_vs_size.png", size_plot(sized, "Validation bits per byte vs model size",
                                                                "bits per byte"), "bpb vs size"))
        return blocks
