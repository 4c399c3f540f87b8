"""Evaluation reports: one Markdown and one self-contained HTML file (plots embedded as base64
PNG), the raw judgments and the config, written into an output folder.

A report is a list of blocks (heading, paragraph, table, image) rendered twice, so the two
files always say the same thing.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from tinystories.eval.judge import AGE_GROUPS, SCORE_KEYS
from tinystories.utils import atomic_write, write_json


@dataclass
class Block:
    kind: str  # "h1" | "h2" | "p" | "table" | "img"
    text: str = ""
    rows: list[list[str]] | None = None  # table: the first row is the header
    png: bytes = b""


def _fmt(est: dict[str, Any]) -> str:
    if not est or est.get("n", 0) == 0:
        return "n/a"
    return f"{est['mean']:.2f} [{est['low']:.2f}, {est['high']:.2f}]"


def _png(fig: plt.Figure) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def bar_plot(groups: dict[str, dict[str, dict[str, Any]]], keys: list[str], title: str, ylabel: str) -> bytes:
    """Grouped bars (one group per key, one bar per model) with bootstrap-interval error bars."""
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


def build_blocks(results: dict[str, Any]) -> tuple[list[Block], dict[str, bytes]]:
    """The report's blocks and its plots (file name -> PNG)."""
    models: dict[str, dict[str, Any]] = results.get("models", {})
    blocks = [Block("h1", "TinyStories evaluation report")]
    plots: dict[str, bytes] = {}
    if judge := results.get("config", {}).get("judge"):
        blocks.append(Block("p", f"Judge: {judge.get('model')} at {judge.get('base_url')}. Intervals are "
                                 "bootstrap 95% intervals of the mean; missing judgments are left out, never "
                                 "counted as 0."))

    def add_plot(name: str, png: bytes, caption: str) -> None:
        plots[name] = png
        blocks.append(Block("img", caption, png=png))

    graded = {m: r["gpt_eval"] for m, r in models.items() if "gpt_eval" in r}
    if graded:
        blocks.append(Block("h2", "GPT-Eval"))
        rows = [["model", *SCORE_KEYS, "judged", "missing"]]
        rows += [[m, *(_fmt(g["scores"][k]) for k in SCORE_KEYS), str(g["judged"]), str(g["missing"])]
                 for m, g in graded.items()]
        blocks.append(Block("table", rows=rows))
        rows = [["model", *(f"{g} ({AGE_GROUPS[g]})" for g in AGE_GROUPS)]]
        rows += [[m, *(str(g["age_groups"][a]) for a in AGE_GROUPS)] for m, g in graded.items()]
        blocks.append(Block("p", "Age group the judge guessed for the writer:"))
        blocks.append(Block("table", rows=rows))
        add_plot("gpt_eval.png", bar_plot({m: g["scores"] for m, g in graded.items()}, list(SCORE_KEYS),
                                          "GPT-Eval scores (95% CI)", "score / 10"), "GPT-Eval scores")

    for pair in results.get("pairwise", []):
        a, b = pair["models"]
        blocks.append(Block("h2", f"Pairwise: {a} vs {b}"))
        blocks.append(Block("p", f"Win rate of {a} (tie = 1/2; each pair judged in both orders, a "
                                 f"disagreement counts as a tie): {_fmt(pair['win_rate'])}."))
        blocks.append(Block("table", rows=[["A wins", "B wins", "ties", "missing"],
                                           [str(pair["a"]), str(pair["b"]), str(pair["tie"]), str(pair["missing"])]]))

    instructed = {m: r["instruct"] for m, r in models.items() if "instruct" in r}
    if instructed:
        blocks.append(Block("h2", "Instruction following"))
        rows = [["model", "instructions (judge)", "grammar (judge)", "all words present", "words present"]]
        rows += [[m, _fmt(s["scores"]["instructions"]), _fmt(s["scores"]["grammar"]),
                  _fmt(s["all_words_present"]), _fmt(s["words_present"])] for m, s in instructed.items()]
        blocks.append(Block("table", rows=rows))

    probed = {m: r["probes"] for m, r in models.items() if "probes" in r}
    if probed:
        blocks.append(Block("h2", "Knowledge, reasoning and context-tracking probes"))
        cats = sorted({c for p in probed.values() for c in p})
        rows = [["model", *cats]] + [[m, *(_fmt(p.get(c, {})) for c in cats)] for m, p in probed.items()]
        blocks.append(Block("table", rows=rows))
        add_plot("probes.png", bar_plot(probed, cats, "Share judged correct (95% CI)", "share"), "Probes")

    diverse = {m: r["diversity"] for m, r in models.items() if "diversity" in r}
    if diverse:
        blocks.append(Block("h2", "Diversity and memorisation (Rouge-2)"))
        rows = [["model", "max precision vs training (mean)", "share > 0.5", "within-prompt F (mean)"]]
        for m, d in diverse.items():
            p = d["max_precision"]
            rows.append([m, _fmt(d["max_precision_mean"]), f"{sum(x > 0.5 for x in p) / max(len(p), 1):.3f}",
                         _fmt(d["within_prompt_f_mean"])])
        blocks.append(Block("table", rows=rows))
        add_plot("rouge_train.png", hist_plot({m: d["max_precision"] for m, d in diverse.items()},
                                              "Highest Rouge-2 precision against the training set",
                                              "max Rouge-2 precision", "completions"), "Memorisation")
        add_plot("rouge_within.png", hist_plot({m: d["within_prompt_f"] for m, d in diverse.items()},
                                               "Rouge-2 F between completions of one prompt",
                                               "Rouge-2 F", "pairs of completions"), "Diversity")

    scored = {m: r["bpb"] for m, r in models.items() if "bpb" in r}
    if scored:
        blocks.append(Block("h2", "Validation loss"))
        rows = [["model", "parameters", "bits per byte", "loss (nats/token)", "tokens", "bytes", "stories"]]
        rows += [[m, f"{models[m].get('params', 0):,}", f"{s['bpb']:.4f}", f"{s['loss']:.4f}",
                  str(s["tokens"]), str(s["bytes"]), str(s["stories"])] for m, s in scored.items()]
        blocks.append(Block("table", rows=rows))
        sized = {m: (models[m]["params"], s["bpb"]) for m, s in scored.items() if models[m].get("params")}
        if sized:
            add_plot("bpb_vs_size.png", size_plot(sized, "Validation bits per byte vs model size",
                                                  "bits per byte"), "bpb vs size")
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
    style = ("body{font-family:sans-serif;max-width:60em;margin:2em auto}table{border-collapse:collapse;"
             "margin:1em 0}td,th{border:1px solid #ccc;padding:.3em .6em}img{max-width:100%}")
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>TinyStories evaluation</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def write_report(out_dir: str | Path, results: dict[str, Any], judgments: list[dict[str, Any]]) -> Path:
    """report.md, report.html, results.json, judgments.json, config.json and plots/ in `out_dir`."""
    out = Path(out_dir)
    blocks, plots = build_blocks(results)
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
