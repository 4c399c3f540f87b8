"""`tinystories interpret`: an HTML report on a model's attention heads and MLP neurons."""

from __future__ import annotations

import argparse
from pathlib import Path

from tinystories.interpret.report import DEFAULT_TEXT, InterpretConfig, build_report
from tinystories.model.checkpoint import load_any
from tinystories.utils import pick_device


def add_commands(sub: argparse._SubParsersAction) -> None:
    d = InterpretConfig()
    p = sub.add_parser(
        "interpret", help="report on a model's attention heads and MLP neurons (HTML + PNG)",
        description="Classify every attention head (previous-token, positional-local, sink, semantic, "
                    "diffuse), draw heatmaps on a story, and show the top-activating tokens of MLP "
                    "neurons next to random directions of neuron space (the paper's baseline). Writes "
                    "report.html (self-contained), the PNGs, heads.json, neurons.json and "
                    "interpret_config.json into --out.")
    p.add_argument("model", help="model folder (ours, or a Hugging Face GPT-Neo/Llama folder)")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--text", default=DEFAULT_TEXT, help="story drawn in the attention heatmaps")
    p.add_argument("--corpus", default=d.corpus, help="stories searched for neuron activations and "
                   "averaged over for head measures (file, folder, hf:NAME, bundled:train|valid)")
    p.add_argument("--layer", type=int, default=d.layer, help="MLP layer whose neurons are searched")
    p.add_argument("--top-k", type=int, default=d.top_k, help="top activations shown per neuron")
    p.add_argument("--units", type=int, default=d.n_units, help="neurons and random directions shown")
    p.add_argument("--neuron", type=int, action="append", default=[], dest="neuron_ids", metavar="N",
                   help="show this neuron (repeatable); default: --units neurons drawn with --seed")
    p.add_argument("--random-directions", type=int, default=d.n_random, dest="n_random", metavar="N",
                   help="random directions searched for the baseline statistics")
    p.add_argument("--head", action="append", default=[], dest="heads", metavar="L.H",
                   help="also draw this head, as LAYER.HEAD (repeatable)")
    p.add_argument("--head-stories", type=int, default=d.head_stories,
                   help="corpus stories the head measures average over (besides --text)")
    p.add_argument("--max-stories", type=int, default=d.max_stories,
                   help="corpus stories searched for neurons (0 = all)")
    p.add_argument("--max-text-tokens", type=int, default=d.max_text_tokens,
                   help="tokens of --text shown in the heatmaps")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the shown neurons and random directions")
    p.add_argument("--device", default=d.device)
    p.set_defaults(func=run_interpret)


def run_interpret(args: argparse.Namespace) -> int:
    cfg = InterpretConfig(
        model=str(args.model), text=args.text, corpus=args.corpus, layer=args.layer, top_k=args.top_k,
        n_units=args.units, neuron_ids=args.neuron_ids, n_random=args.n_random, heads=args.heads,
        head_stories=args.head_stories, max_stories=args.max_stories,
        max_text_tokens=args.max_text_tokens, batch_size=args.batch_size, seed=args.seed, device=args.device)
    loaded = load_any(args.model, pick_device(args.device))
    report = build_report(loaded, cfg, args.out)
    print(f"report: {report}")
    return 0
