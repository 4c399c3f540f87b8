"""What a task's report section is made of, besides text: its plots (PNG, drawn with matplotlib
when a report is written) and its numbers with their intervals, and a note on missing judgments."""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import TYPE_CHECKING

from tinystories.eval.judge import MissingInfo
from tinystories.eval.stats import Estimate
from tinystories.render import Block

if TYPE_CHECKING:
    import matplotlib.pyplot as plt


def fmt(est: Estimate | None) -> str:
    """A mean and its interval, "n/a" when nothing was measured."""
    return str(est) if est else "n/a"


def missing_block(info: MissingInfo | None, what: str) -> list[Block]:
    """A paragraph saying how many judgments (or fields) are missing and why, when any are."""
    if not info or (not info.missing and not any(info.field_missing.values())):
        return []
    fields = ", ".join(f"{f} {n}" for f, n in info.field_missing.items() if n)
    reasons = "; ".join(f"{r} ({n}x)" for r, n in info.reasons) or "the judge call failed"
    text = (f"{what}: {info.missing} of {info.total} judgments missing entirely"
            + (f"; fields missing: {fields}" if fields else "") + f". Commonest reasons: {reasons}. Missing "
            "values are left out of the means (never counted as 0); a mean shows n/a when no judgment had it.")
    blocks = [Block("p", text)]
    if info.sample_answer:
        blocks.append(Block("p", f"The end of one answer that was not usable: {info.sample_answer!r}"))
    return blocks


def _pyplot():  # type: ignore[no-untyped-def]
    """matplotlib, imported when a plot is drawn (not when the CLI starts)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig: plt.Figure) -> bytes:
    plt = _pyplot()
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def bar_plot(groups: Mapping[str, Mapping[str, Estimate]], keys: list[str], title: str, ylabel: str) -> bytes:
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
            if est and est.n:
                xs.append(k + m * width)
                means.append(est.mean)
                errs[0].append(est.mean - est.low)
                errs[1].append(est.high - est.mean)
        ax.bar(xs, means, width, yerr=errs, capsize=3, label=name)
    ax.set_xticks([k + width * (len(groups) - 1) / 2 for k in range(len(keys))], keys)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if len(groups) > 1:
        ax.legend(fontsize=8)
    return _png(fig)


def hist_plot(series: Mapping[str, list[float]], title: str, xlabel: str, ylabel: str) -> bytes:
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


def size_plot(points: Mapping[str, tuple[int, float]], title: str, ylabel: str) -> bytes:
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
