"""Validation bits per byte: exact, whole stories, comparable across tokenizers (`eval.bpb`)."""

from __future__ import annotations

from collections.abc import Sequence

from tinystories.eval.results import Finding, Results
from tinystories.eval.sections import size_plot
from tinystories.eval.task import AddPlot, Context, Pending, Task
from tinystories.render import Block, table


class BitsPerByte(Task):
    name = "bpb"
    help = "validation bits per byte (exact, per story, sliding window past the context)"
    options = ("data", "max_stories", "stride", "batch_size", "encoding_errors")

    def summarize(self, ctx: Context, answered: Sequence[Pending]) -> list[Finding]:
        from tinystories.data.corpus import read_stories
        from tinystories.eval.bpb import evaluate_bpb

        stories = read_stories(ctx.cfg.data, errors=ctx.cfg.encoding_errors)[0]
        stories = stories[:ctx.cfg.max_stories] if ctx.cfg.max_stories else stories
        found = []
        for name in ctx.names:
            loaded = ctx.model(name)
            found.append(Finding((name,), evaluate_bpb(loaded.model, loaded.tokenizer, stories, ctx.cfg.batch_size,
                                                       ctx.cfg.stride or None, ctx.cfg.progress)))
        return found

    def report(self, results: Results, add_plot: AddPlot) -> list[Block]:
        from tinystories.eval.bpb import BpbResult  # (torch: not imported when the CLI starts)

        scored = results.of(BpbResult)
        if not scored:
            return []
        params = results.params
        rows = [["model", "parameters", "bits per byte", "loss (nats/token)", "tokens", "bytes", "stories"]]
        rows += [[m, f"{params.get(m, 0):,}", f"{s.bpb:.4f}", f"{s.loss:.4f}", str(s.tokens), str(s.bytes),
                  str(s.stories)] for m, s in scored.items()]
        blocks = [Block("h2", "Validation loss"), table(rows)]
        sized = {m: (params[m], s.bpb) for m, s in scored.items() if params.get(m)}
        if sized:
            blocks.append(add_plot("bpb_vs_size.png", size_plot(sized, "Validation bits per byte vs model size",
                                                                "bits per byte"), "bpb vs size"))
        return blocks
