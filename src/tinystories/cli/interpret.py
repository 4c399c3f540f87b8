"""`tinystories interpret`: an HTML report on a model's attention heads and MLP neurons."""

from __future__ import annotations

import argparse
from pathlib import Path

from tinystories.cli.options import add_config_flags, add_field, add_fields, build_from_args
from tinystories.folder_lock import hold_folder
from tinystories.interpret.config import InterpretConfig


def setup_interpret(p: argparse.ArgumentParser) -> None:
    p.description = ("Classify every attention head (previous-token, positional-local, sink, semantic, "
                     "diffuse), draw heatmaps on a story, and show the top-activating tokens of MLP neurons next "
                     "to random directions of neuron space (the paper's baseline). Writes report.html "
                     "(self-contained), the PNGs, heads.json, neurons.json and interpret_config.json into "
                     "--out.\n\nExample:\n  tinystories interpret runs/demo/checkpoint --out reports/demo")
    add_field(p, InterpretConfig, "model", positional=True, metavar="MODEL")
    add_fields(p, InterpretConfig, ["out", "text", "corpus", "encoding_errors", "layer", "top_k", "n_units", "n_random",
                                    "head_stories", "max_stories", "max_text_tokens", "batch_size", "seed", "device",
                                    "threads"])
    add_field(p, InterpretConfig, "neuron_ids", repeat=True, metavar="N")
    add_field(p, InterpretConfig, "heads", repeat=True, metavar="L.H")
    add_config_flags(p)
    p.set_defaults(func=run_interpret)


def run_interpret(args: argparse.Namespace) -> int:
    from tinystories.interpret.report import build_report
    from tinystories.model.checkpoint import model_name
    from tinystories.model.loader import load_any
    from tinystories.utils import pick_device, set_threads

    cfg = build_from_args(InterpretConfig, args)
    source = Path(cfg.model).resolve() if Path(cfg.model).exists() else cfg.model
    out = Path(cfg.out or f"reports/interpret-{model_name(source)}")  # (load_any names the model so)
    with hold_folder(out):
        set_threads(cfg.threads)
        report = build_report(load_any(cfg.model, pick_device(cfg.device)), cfg, out)
    print(f"report: {report}")
    return 0


SETUP = {"interpret": setup_interpret}
