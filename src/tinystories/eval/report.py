"""Evaluation reports: one Markdown and one self-contained HTML file (plots embedded as base64
PNG), the raw results, judgments and config, written into an output folder.

The report is the run's blocks (`render.Block`): a header, then each task's section in turn
(`Task.report`), rendered twice by `render` so the two files always say the same thing.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tinystories.eval.results import Results
from tinystories.eval.task import Task
from tinystories.render import Block, to_html, to_markdown
from tinystories.utils import atomic_write, write_json


def build_blocks(results: Results, tasks: Sequence[Task]) -> tuple[list[Block], dict[str, bytes]]:
    """The report's blocks, each task's section in turn, and its plots (file name -> PNG)."""
    blocks = [Block("h1", "TinyStories evaluation report")]
    plots: dict[str, bytes] = {}
    if judge := results.judge:
        blocks.append(Block("p", f"Judge: {judge.get('model')} at {judge.get('base_url')}. Intervals are "
                                 "bootstrap 95% intervals of the mean; missing judgments are left out, never "
                                 "counted as 0."))

    def add_plot(name: str, png: bytes, caption: str) -> Block:
        plots[name] = png
        return Block("img", caption, png=png)

    for task in tasks:
        blocks += task.report(results, add_plot)
    return blocks, plots


def write_report(out_dir: str | Path, results: Results, judgments: list[dict[str, Any]],
                 tasks: Sequence[Task]) -> Path:
    """report.md, report.html, results.json, judgments.json, config.json and plots/ in `out_dir`."""
    out = Path(out_dir)
    blocks, plots = build_blocks(results, tasks)
    for name, png in plots.items():
        with atomic_write(out / "plots" / name, "wb") as f:
            f.write(png)
    with atomic_write(out / "report.md", encoding="utf-8") as f:
        f.write(to_markdown(blocks, {png: name for name, png in plots.items()}))
    with atomic_write(out / "report.html", encoding="utf-8") as f:
        f.write(to_html(blocks, "TinyStories evaluation"))
    write_json(out / "results.json", results.to_json())
    write_json(out / "judgments.json", judgments)
    write_json(out / "config.json", results.config)
    return out
