"""Evaluation reports: one Markdown and one self-contained HTML file (plots embedded as base64
PNG), the raw judgments and the config, written into an output folder.

A report is a list of blocks (heading, paragraph, table, image) rendered twice, so the two
files always say the same thing. Each evaluation task writes its own section
(`Task.report`); this module only renders.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tinystories.html import page
from tinystories.utils import atomic_write, write_json

if TYPE_CHECKING:
    import matplotlib.pyplot as plt

    from tinystories.eval.task import Task


def _pyplot():  # type: ignore[no-untyped-def]
    """matplotlib, imported when a plot is drawn (not when the CLI starts)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@dataclass
class Block:
    kind: str  # "h1" | "h2" | "p" | "table" | "img"
    text: str = ""
    rows: list[list[str]] | None = None  # table: the first row is the header
    png: bytes = b""


def missing_block(info: dict[str, Any] | None, what: str) -> list[Block]:
    """A paragraph saying how many judgments (or fields) are missing and why, when any are."""
    if not info or (not info["missing"] and not any(info["field_missing"].values())):
        return []
    fields = ", ".join(f"{f} {n}" for f, n in info["field_missing"].items() if n)
    reasons = "; ".join(f"{r} ({n}x)" for r, n in info["reasons"]) or "the judge call failed"
    text = (f"{what}: {info['missing']} of {info['total']} judgments missing entirely"
            + (f"; fields missing: {fields}" if fields else "") + f". Commonest reasons: {reasons}. Missing "
            "values are left out of the means (never counted as 0); a mean shows n/a when no judgment had it.")
    blocks = [Block("p", text)]
    if info.get("sample_answer"):
        blocks.append(Block("p", f"The end of one answer that was not usable: {info['sample_answer']!r}"))
    return blocks


def fmt(est: dict[str, Any]) -> str:
    if not est or est.get("n", 0) == 0:
        return "n/a"
    return f"{est['mean']:.2f} [{est['low']:.2f}, {est['high']:.2f}]"


def _png(fig: plt.Figure) -> bytes:
    plt = _pyplot()
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def bar_plot(groups: dict[str, dict[str, dict[str, Any]]], keys: list[str], title: str, ylabel: str) -> bytes:
    """Grouped bars (one group per key, one bar per model) with bootstrap-interval error bars."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(5.0, 1.4 * len(keys) * max(1, len(groups)) ** 0.5), 3.6))
    width = 0.8 / max(1, len(groups))
    for m, (name, scores) in enumerate(groups.items()):
        xs: list[float] = []
        means: list[float] = []
        errs: list[list[float]] = [[], []]
        for k, key in enumerate(keys):
            est = scores.get(key)
            if est and est["n"]:
                xs.append(k + m * width)
                means.append(est["mean"])
                errs[0].append(est["mean"] - est["low"])
                errs[1].append(est["high"] - est["mean"])
        ax.bar(xs, means, width, yerr=errs, capsize=3, label=name)
    ax.set_xticks([k + width * (len(groups) - 1) / 2 for k in range(len(keys))], keys)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if len(groups) > 1:
        ax.legend(fontsize=8)
    return _png(fig)


def hist_plot(series: dict[str, list[float]], title: str, xlabel: str, ylabel: str) -> bytes:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for name, values in series.items():
        if values:
            ax.hist(values, bins=20, range=(0, 1), alpha=0.55, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if len(series) > 1:
        ax.legend(fontsize=8)
    return _png(fig)


def size_plot(points: dict[str, tuple[int, float]], title: str, ylabel: str) -> bytes:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for name, (params, value) in sorted(points.items(), key=lambda kv: kv[1][0]):
        ax.scatter(params, value)
        ax.annotate(name, (params, value), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ordered = sorted(points.values())
    ax.plot([p for p, _ in ordered], [v for _, v in ordered], alpha=0.4)
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return _png(fig)


def build_blocks(results: dict[str, Any], tasks: Sequence[Task]) -> tuple[list[Block], dict[str, bytes]]:
    """The report's blocks, each task's section in turn, and its plots (file name -> PNG)."""
    blocks = [Block("h1", "TinyStories evaluation report")]
    plots: dict[str, bytes] = {}
    if judge := results.get("judge"):
        blocks.append(Block("p", f"Judge: {judge.get('model')} at {judge.get('base_url')}. Intervals are "
                                 "bootstrap 95% intervals of the mean; missing judgments are left out, never "
                                 "counted as 0."))

    def add_plot(name: str, png: bytes, caption: str) -> Block:
        plots[name] = png
        return Block("img", caption, png=png)

    for task in tasks:
        blocks += task.report(results, add_plot)
    return blocks, plots


def to_markdown(blocks: list[Block], plot_names: dict[bytes, str]) -> str:
    out = []
    for b in blocks:
        if b.kind in ("h1", "h2"):
            out.append(("# " if b.kind == "h1" else "## ") + b.text)
        elif b.kind == "p":
            out.append(b.text)
        elif b.kind == "table" and b.rows:
            cells = [[c.replace("|", "\\|") for c in row] for row in b.rows]
            out.append("\n".join(["| " + " | ".join(cells[0]) + " |", "|" + "---|" * len(cells[0]),
                                  *("| " + " | ".join(r) + " |" for r in cells[1:])]))
        elif b.kind == "img":
            out.append(f"![{b.text}](plots/{plot_names[b.png]})")
    return "\n\n".join(out) + "\n"


def to_html(blocks: list[Block]) -> str:
    body = []
    for b in blocks:
        if b.kind in ("h1", "h2", "p"):
            body.append(f"<{b.kind}>{html.escape(b.text)}</{b.kind}>")
        elif b.kind == "table" and b.rows:
            head = "".join(f"<th>{html.escape(c)}</th>" for c in b.rows[0])
            rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in b.rows[1:])
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif b.kind == "img":
            data = base64.b64encode(b.png).decode()
            body.append(f'<img alt="{html.escape(b.text)}" src="data:image/png;base64,{data}">')
    return page("TinyStories evaluation", "\n".join(body))


def write_report(out_dir: str | Path, results: dict[str, Any], judgments: list[dict[str, Any]],
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
        f.write(to_html(blocks))
    write_json(out / "results.json", results)
    write_json(out / "judgments.json", judgments)
    write_json(out / "config.json", results.get("config", {}))
    return out
