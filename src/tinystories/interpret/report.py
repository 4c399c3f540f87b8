"""One self-contained HTML report per model: heads overview, head heatmaps, neurons vs random directions."""

from __future__ import annotations

import html
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from tinystories.data.corpus import read_stories
from tinystories.errors import TinyStoriesError
from tinystories.html import page
from tinystories.interpret.config import InterpretConfig
from tinystories.interpret.heads import CLASSES, HeadStats, head_stats
from tinystories.interpret.hooks import pattern_names, run_with_cache
from tinystories.interpret.lexicon import Lexicon
from tinystories.interpret.neurons import (
    Example,
    corpus_batches,
    random_directions,
    story_ids,
    token_texts,
    top_activations,
    unit_examples,
)
from tinystories.interpret.plots import (
    activation_color,
    display_token,
    plot_examples,
    plot_head,
    plot_head_grid,
    plot_head_scatter,
)
from tinystories.model.checkpoint import LoadedModel
from tinystories.render import img_tag
from tinystories.utils import atomic_write, write_json


def img_html(path: Path, alt: str) -> str:
    """The PNG at `path`, embedded as the evaluation report embeds its plots."""
    return img_tag(path.read_bytes(), alt)


def snippets_html(examples: list[Example]) -> str:
    """Top activations as an ordered list of highlighted snippets (red = positive, blue = negative; the
    top token bold and underlined; hover a token for its activation)."""
    scale = max((max(abs(a) for a in ex.acts) for ex in examples), default=0.0)
    items = []
    for ex in examples:
        spans = []
        for i, (tok, act) in enumerate(zip(ex.tokens, ex.acts, strict=True)):
            r, g, b, a = activation_color(act, scale)
            style = f"background:rgba({int(r * 255)},{int(g * 255)},{int(b * 255)},{a:.2f})"
            cls = ' class="focus"' if i == ex.focus else ""
            spans.append(f'<span{cls} style="{style}" title="{act:.4g}">{html.escape(display_token(tok))}</span>')
        items.append(f'<li><span class="ctx">{"".join(spans)}</span> <small>{ex.value:.4g}</small></li>')
    return "<ol>" + "\n".join(items) + "</ol>"


def _examples_html(units: dict[int, list[Example]], unit_name: str, distinct: torch.Tensor) -> str:
    return "\n".join(f"<h4>{unit_name} {u} <small>(distinct top tokens: {float(distinct[u]):.2f})</small></h4>"
                     + snippets_html(examples) for u, examples in units.items())


def _head_table(stats: HeadStats) -> str:
    rows = stats.rows()
    cols = list(rows[0])
    head = "".join(f"<th>{c}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{r[c]}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def representative_heads(stats: HeadStats) -> list[tuple[int, int]]:
    """The clearest head of each class present: the one scoring highest on what defines it."""
    score = {"previous-token": stats.prev_token, "sink": stats.first_token, "semantic": stats.semantic,
             "positional-local": -stats.mean_distance, "diffuse": stats.entropy}
    labels = np.array(stats.labels)
    picks: list[tuple[int, int]] = []
    for cls, s in score.items():
        if (labels == cls).any():
            masked = np.where(labels == cls, s, -np.inf)
            layer, head = np.unravel_index(masked.argmax(), masked.shape)
            picks.append((int(layer), int(head)))
    return picks


def parse_heads(specs: list[str], n_layer: int, n_head: int) -> list[tuple[int, int]]:
    heads = []
    for spec in specs:
        try:
            layer, head = (int(p) for p in spec.split("."))
        except ValueError:
            raise TinyStoriesError(f"head {spec!r} should be written LAYER.HEAD, e.g. 1.3") from None
        if not (0 <= layer < n_layer and 0 <= head < n_head):
            raise TinyStoriesError(f"head {spec} does not exist: the model has layers 0..{n_layer - 1}, "
                             f"heads 0..{n_head - 1}")
        heads.append((layer, head))
    return heads


def build_report(loaded: LoadedModel, cfg: InterpretConfig, out: Path) -> Path:
    """Write report.html (images embedded), the PNGs, heads.json, neurons.json and the config into `out`."""
    model, tok = loaded.model.eval(), loaded.tokenizer
    mcfg = model.cfg
    if not 0 <= cfg.layer < mcfg.n_layer:
        raise TinyStoriesError(f"--layer {cfg.layer} does not exist: the model has layers 0..{mcfg.n_layer - 1}")
    if any(not 0 <= n < mcfg.ffn_dim for n in cfg.neuron_ids):
        raise TinyStoriesError(f"neuron ids must be in 0..{mcfg.ffn_dim - 1}")
    extra_heads = parse_heads(cfg.heads, mcfg.n_layer, mcfg.n_head)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "interpret_config.json", asdict(cfg))
    device = next(model.parameters()).device
    stories, _ = read_stories(cfg.corpus, errors=cfg.encoding_errors)
    if cfg.max_stories:
        stories = stories[:cfg.max_stories]
    if not stories:
        raise TinyStoriesError(f"corpus {cfg.corpus} has no stories")

    # Heads: measured on the text and some corpus stories, drawn on the text.
    head_texts = [cfg.text] + stories[:cfg.head_stories]
    seqs = [story_ids(tok, t, mcfg.context_length) for t in head_texts]
    stats = head_stats(model, seqs, [token_texts(tok, s) for s in seqs], Lexicon.build(head_texts), progress=True)
    write_json(out / "heads.json", stats.to_json())
    text_ids = seqs[0][:cfg.max_text_tokens]
    text_tokens = token_texts(tok, text_ids)
    _, cache = run_with_cache(model, torch.tensor([text_ids], device=device), names=pattern_names(model))
    patterns = cache.stack("attn")[:, 0].cpu().numpy()
    images = {"grid": plot_head_grid(patterns, stats, text_tokens, out / "heads_grid.png"),
              "scatter": plot_head_scatter(stats, out / "heads_scatter.png")}
    heatmaps = []
    for layer, head in dict.fromkeys(representative_heads(stats) + extra_heads):
        title = f"layer {layer} head {head}: {stats.labels[layer][head]}"
        heatmaps.append(((layer, head, title), plot_head(patterns[layer, head], text_tokens, title,
                                                         out / f"head_L{layer}H{head}.png")))

    # Neurons vs random directions of neuron space: two passes over the corpus, one bar each.
    gen = torch.Generator().manual_seed(cfg.seed)
    shown = cfg.neuron_ids or sorted(torch.randperm(mcfg.ffn_dim, generator=gen)[:cfg.n_units].tolist())
    directions = random_directions(mcfg.ffn_dim, max(cfg.n_random, cfg.n_units), cfg.seed)
    tops = {}
    for kind, dirs in (("neurons", None), ("random directions", directions)):
        with tqdm(total=len(stories), desc=f"layer {cfg.layer} {kind}", unit="story") as bar:
            tops[kind] = top_activations(model, corpus_batches(stories, tok, mcfg.context_length, cfg.batch_size),
                                         cfg.layer, cfg.top_k, directions=dirs, progress=bar)
    top_n, top_r = tops["neurons"], tops["random directions"]
    ex_n = unit_examples(model, tok, stories, top_n, cfg.layer, shown)
    ex_r = unit_examples(model, tok, stories, top_r, cfg.layer, list(range(cfg.n_units)), directions)
    distinct_n, distinct_r = top_n.distinct_tokens(), top_r.distinct_tokens()
    summary = {"layer": cfg.layer, "stories": len(stories), "top_k": cfg.top_k,
               "mean_distinct_top_tokens_neurons": round(float(distinct_n.mean()), 4),
               "mean_distinct_top_tokens_random": round(float(distinct_r.mean()), 4),
               "shown_neurons": shown,
               "neurons": {u: [asdict(e) for e in ex] for u, ex in ex_n.items()},
               "random_directions": {u: [asdict(e) for e in ex] for u, ex in ex_r.items()}}
    write_json(out / "neurons.json", summary)
    plot_examples(ex_n, f"Layer {cfg.layer}: top activations of MLP neurons", "neuron",
                  out / f"neurons_layer{cfg.layer}.png")
    plot_examples(ex_r, f"Layer {cfg.layer}: top activations of random directions (seed {cfg.seed})",
                  "direction", out / f"random_layer{cfg.layer}.png")

    name = html.escape(loaded.name)
    body = f"""<h1>Interpretability report: {name}</h1>
<p class="lead">{html.escape(cfg.model)} &middot; arch {mcfg.arch}, {mcfg.n_layer} layers &times; {mcfg.n_head} heads,
d_model {mcfg.d_model}, MLP width {mcfg.ffn_dim}, local window {mcfg.local_window or "none"}.
Corpus {html.escape(cfg.corpus)} ({len(stories)} stories). Settings: interpret_config.json; numbers: heads.json,
neurons.json.</p>
<h2>1. What the attention heads do</h2>
<p class="finding">{html.escape(heads_finding(stats))}</p>
<p>Measured on the text below and {len(head_texts) - 1} corpus stories. Classes (first rule that
matches): sink: weight on the first token &ge; {stats.thresholds.sink}; previous-token: weight on
t-1 &ge; {stats.thresholds.previous}; semantic: weight on related earlier words (pronoun &rarr;
name, same token) &ge; {stats.thresholds.semantic} and &ge; {stats.thresholds.semantic_lift}&times;
uniform; positional-local: mean distance &le; {stats.thresholds.local_distance} tokens; else diffuse.</p>
<p class="text">{html.escape(cfg.text)}</p>
<figure>{img_html(images["grid"], "all heads")}<figcaption>Every head on the text: row = the attending token,
column = the token attended to (labels on the outer axes). A bright sub-diagonal is a previous-token head, a bright
first column an attention sink; a faint even spread is a diffuse head.</figcaption></figure>
<figure>{img_html(images["scatter"], "distance vs entropy")}<figcaption>Each head's mean attention distance against
its normalised entropy (1 = uniform over everything visible). Specialised heads sit low (sharp); diffuse heads sit
near 1 whatever their distance.</figcaption></figure>
{_head_table(stats)}
<h2>2. The clearest head of each kind</h2>
{"".join(f"<h3>{html.escape(t)}</h3><p>{html.escape(head_sentence(stats, layer, head))}</p>{img_html(p, t)}"
         for (layer, head, t), p in heatmaps)}
<h2>3. Are MLP neurons more meaningful than random directions? (layer {cfg.layer})</h2>
<p class="finding">{html.escape(neurons_finding(summary))}</p>
<p>Top {cfg.top_k} activating tokens (bold) in context, red = positive, blue = negative activation.
Neurons and random directions (unit vectors of neuron space, the paper's baseline) are searched the same way over
the {len(stories)} corpus stories. Images of the same lists: neurons_layer{cfg.layer}.png, random_layer{cfg.layer}.png.</p>
<h3>Neurons</h3>
{_examples_html(ex_n, "neuron", distinct_n)}
<h3>Random directions (seed {cfg.seed})</h3>
{_examples_html(ex_r, "direction", distinct_r)}
"""
    report = out / "report.html"
    with atomic_write(report) as f:
        f.write(page(f"{loaded.name}: interpretability", body))
    return report


def heads_finding(stats: HeadStats) -> str:
    """One sentence on the heads, against the baseline of uniform attention."""
    labels = [label for row in stats.labels for label in row]
    counts = {c: labels.count(c) for c in CLASSES if labels.count(c)}
    listing = ", ".join(f"{n} {c}" for c, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    mean_entropy = float(stats.entropy.mean())
    if counts.get("diffuse", 0) == len(labels):
        return (f"All {len(labels)} heads are diffuse (mean normalised entropy {mean_entropy:.2f}; 1.0 is uniform "
                "attention): none attends sharply to the previous token, the first token or related words. The "
                "model has not learned specialised heads, which is what a model trained for minutes usually "
                "shows; the paper's trained models have previous-token and name-tracking heads. Train longer, "
                "then look again.")
    special = len(labels) - counts.get("diffuse", 0)
    return (f"{special} of {len(labels)} heads are specialised ({listing}); mean normalised entropy "
            f"{mean_entropy:.2f} (1.0 = uniform attention). " + (
                f"{counts['semantic']} head(s) put extra weight on related earlier words (a pronoun's name, an "
                "earlier copy of a word), the kind the paper calls semantic. " if counts.get("semantic") else "")
            + "The heatmaps below show the clearest head of each kind on the text.")


def head_sentence(stats: HeadStats, layer: int, head: int) -> str:
    """What one head does, in numbers a reader can check against the heatmap."""
    label = stats.labels[layer][head]
    m = {k: float(getattr(stats, k)[layer, head]) for k in ("prev_token", "first_token", "semantic",
                                                          "semantic_lift", "mean_distance", "entropy")}
    return {"previous-token": f"It puts {m['prev_token']:.0%} of its attention on the token just before.",
            "sink": f"It parks {m['first_token']:.0%} of its attention on the story's first token (an attention "
                    "sink: a place to put attention that should go nowhere).",
            "semantic": f"It puts {m['semantic']:.0%} of its attention on related earlier words, "
                        f"{m['semantic_lift']:.1f}x what uniform attention would.",
            "positional-local": f"It attends on average {m['mean_distance']:.1f} tokens back: a local window.",
            "diffuse": f"Its attention is spread out (normalised entropy {m['entropy']:.2f}, mean distance "
                       f"{m['mean_distance']:.1f} tokens): no single pattern."}.get(label, label)


def neurons_finding(summary: dict[str, object]) -> str:
    """Neurons against random directions, in the terms of the paper's baseline."""
    n = float(summary["mean_distinct_top_tokens_neurons"])  # type: ignore[arg-type]
    r = float(summary["mean_distinct_top_tokens_random"])  # type: ignore[arg-type]
    k = summary["top_k"]
    if n < r - 0.05:
        return (f"Neurons are more token-selective than random directions: on average {n:.0%} of a neuron's top {k} "
                f"tokens are distinct, against {r:.0%} for random directions. Individual neurons pick out "
                "specific tokens or roles, as the paper found for its models: reading them one by one is worthwhile.")
    if n > r + 0.05:
        return (f"Neurons are less token-selective than random directions ({n:.0%} distinct top-{k} tokens against "
                f"{r:.0%}): their top activations are spread over more tokens than arbitrary mixtures of neurons.")
    return (f"Neurons are no more token-selective than random directions ({n:.0%} distinct top-{k} tokens against "
            f"{r:.0%}): in this model a single neuron is no more interpretable than an arbitrary mixture of "
            "neurons, so its top tokens below are not evidence of meaning. This is typical of briefly trained "
            "models; the paper's finding (neurons more meaningful than random directions) is for trained ones.")
