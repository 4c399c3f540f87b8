"""PNG figures: attention heatmaps, an all-heads overview, and neuron examples as highlighted text."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import PowerNorm

from tinystories.interpret.heads import CLASSES, HeadStats
from tinystories.interpret.neurons import Example
from tinystories.utils import naming

CLASS_COLORS = dict(zip(CLASSES, ("tab:blue", "tab:orange", "tab:gray", "tab:red", "tab:green"), strict=True))


def save(fig: plt.Figure, path: Path) -> Path:
    """Write `fig` to `path` and free it; a full disk's error names the file (`naming`)."""
    with naming(path):
        fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def display_token(tok: str) -> str:
    """A token as a readable label: the end-of-text marker shortened, newlines and tabs visible."""
    return tok.replace("<|endoftext|>", "<eos>").replace("\n", "\\n").replace("\t", "\\t").replace("$", r"\$")


def plot_head(pattern: np.ndarray, tokens: list[str], title: str, path: Path) -> Path:
    """Heatmap of one head on a text: queries (rows) attend to keys (columns)."""
    T = len(tokens)
    size = max(5.0, 0.22 * T + 1.5)
    fig, ax = plt.subplots(figsize=(size + 1.0, size))
    im = ax.imshow(pattern, cmap="viridis", vmin=0, vmax=1)
    labels = [display_token(t) for t in tokens]
    ax.set_xticks(range(T), labels, rotation=90, fontsize=8, family="monospace")
    ax.set_yticks(range(T), labels, fontsize=8, family="monospace")
    ax.set_xlabel("key (attended-to token)")
    ax.set_ylabel("query (attending token)")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02, label="attention probability")
    fig.tight_layout()
    return save(fig, path)


def plot_head_grid(patterns: np.ndarray, stats: HeadStats, tokens: list[str], path: Path) -> Path:
    """All heads on one page: patterns [n_layer, n_head, T, T] as small heatmaps, titled with their class;
    the text's tokens label the bottom row's columns and the first column's rows."""
    L, H = patterns.shape[:2]
    T = patterns.shape[-1]
    cell = max(1.9, min(3.2, 48 / H))  # 16-head models still fit a page, with room for labels
    fig, axes = plt.subplots(L, H, figsize=(cell * H + 1.2, (cell + 0.15) * L + 1.4), squeeze=False)
    norm = PowerNorm(gamma=0.5, vmin=0, vmax=1)  # square-root colours: weak spread-out attention stays visible
    labels = [display_token(t) for t in tokens[:T]]
    size = max(3.0, min(6.0, 220 / T / max(1, H / 4)))
    for layer in range(L):
        for head in range(H):
            ax = axes[layer, head]
            ax.imshow(patterns[layer, head], cmap="viridis", norm=norm)
            label = stats.labels[layer][head]
            ax.set_title(f"L{layer}H{head}: {label}", fontsize=8 if H <= 8 else 6, color=CLASS_COLORS[label])
            ax.set_xticks(range(T), labels if layer == L - 1 else [""] * T, rotation=90, fontsize=size,
                          family="monospace")
            ax.set_yticks(range(T), labels if head == 0 else [""] * T, fontsize=size, family="monospace")
            ax.tick_params(length=0, pad=1)
    fig.suptitle("Attention of every head on the text (rows: queries, columns: keys; square-root colour scale)",
                 fontsize=10)
    fig.tight_layout()
    return save(fig, path)


def plot_head_scatter(stats: HeadStats, path: Path) -> Path:
    """Mean attention distance vs normalised entropy, one dot per head coloured by class."""
    fig, ax = plt.subplots(figsize=(7, 5))
    L, H = stats.entropy.shape
    for cls in CLASSES:
        pts = [(stats.mean_distance[i, j], stats.entropy[i, j], f"L{i}H{j}")
               for i in range(L) for j in range(H) if stats.labels[i][j] == cls]
        if not pts:
            continue
        xs, ys, _ = zip(*pts, strict=True)
        ax.scatter(xs, ys, color=CLASS_COLORS[cls], label=f"{cls} ({len(pts)})", s=40)
        for x, y, name in pts:
            ax.annotate(name, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("symlog", linthresh=1.0, linscale=0.5)
    ax.set_xlim(left=0)
    ticks = [t for t in (0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512) if t <= max(2.0, stats.mean_distance.max() * 1.5)]
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.set_xlabel("mean attention distance (tokens, log scale above 1)")
    ax.set_ylabel("attention entropy / log(#visible keys)")
    ax.set_ylim(-0.03, 1.03)
    ax.set_title("Attention heads: distance vs entropy")
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save(fig, path)


def activation_color(value: float, scale: float) -> tuple[float, float, float, float]:
    """Red for positive, blue for negative activations, opacity by magnitude (as in the paper's figures)."""
    alpha = min(abs(value) / scale, 1.0) if scale > 0 else 0.0
    return (0.85, 0.1, 0.1, alpha) if value >= 0 else (0.1, 0.3, 0.85, alpha)


def plot_examples(units: dict[int, list[Example]], title: str, unit_name: str, path: Path) -> Path:
    """Top-activating contexts of several units as text, each token's background coloured by activation."""
    n_rows = sum(len(ex) + 1 for ex in units.values())
    height = 0.27 * n_rows + 0.8
    fig = plt.figure(figsize=(11, height))
    fig.text(0.5, 1.0 - 0.15 / height, title, fontsize=11, ha="center", va="top")
    renderer = cast(FigureCanvasAgg, fig.canvas).get_renderer()  # the Agg backend is forced above
    step = 0.27 / height
    y = 1.0 - 0.6 / height
    for unit, examples in units.items():
        top = examples[0].value if examples else 0.0
        fig.text(0.01, y, f"{unit_name} {unit} (top activation {top:.3g})", fontsize=9, weight="bold", va="center")
        y -= step
        scale = max((max(abs(a) for a in ex.acts) for ex in examples), default=0.0)
        for ex in examples:
            x = 0.03
            for i, (tok, act) in enumerate(zip(ex.tokens, ex.acts, strict=True)):
                text = fig.text(x, y, display_token(tok), fontsize=8, family="monospace", va="center",
                                weight="bold" if i == ex.focus else "normal",
                                bbox={"facecolor": activation_color(act, scale), "edgecolor": "none", "pad": 0.5})
                x += text.get_window_extent(renderer).width / fig.bbox.width
            fig.text(0.99, y, f"{ex.value:.3g}", fontsize=7, ha="right", va="center", color="0.4")
            y -= step
    return save(fig, path)


def plot_histogram(values: np.ndarray, title: str, path: Path) -> Path:
    """A small histogram of one feature's nonzero activations (log counts: the long tail stays visible)."""
    fig, ax = plt.subplots(figsize=(4.2, 1.9))
    if len(values):
        ax.hist(values, bins=40, color="#6c4ee3", log=True)
    ax.set_xlabel("activation (where active)", fontsize=8)
    ax.set_ylabel("tokens", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return save(fig, path)
