"""`tinystories interpret`: an HTML report on a model's attention heads and MLP neurons;
`interpret sae`: a sparse autoencoder on a hook point (SAELens); `interpret features`: its features."""

from __future__ import annotations

import argparse
from pathlib import Path

from tinystories.cli.options import add_config_flags, add_field, add_fields, build_from_args
from tinystories.errors import TinyStoriesError
from tinystories.folder_lock import hold_folder
from tinystories.interpret.config import FeaturesConfig, InterpretConfig, SAEConfig


def setup_interpret(p: argparse.ArgumentParser) -> None:
    p.description = ("Classify every attention head (previous-token, positional-local, sink, semantic, "
                     "diffuse), draw heatmaps on a story, and show the top-activating tokens of MLP neurons next "
                     "to random directions of neuron space (the paper's baseline). Writes report.html "
                     "(self-contained), the PNGs, heads.json, neurons.json and interpret_config.json into "
                     "--out.\n\nSparse autoencoders (needs pip install 'tinystories[interp]'): "
                     "tinystories interpret sae --help, tinystories interpret features --help."
                     "\n\nExample:\n  tinystories interpret runs/demo/checkpoint --out reports/demo")
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


def setup_sae(p: argparse.ArgumentParser) -> None:
    p.description = ("Train a TopK sparse autoencoder (SAELens's trainer) on a hook point's activations over a "
                     "corpus, save it in SAELens's format (SAE.load_from_disk reads --out), and measure it on "
                     "held-out stories: L0, fraction of variance explained, dead and dense features, CE-loss "
                     "score. Rerunning with the same --out resumes from its last checkpoint. Writes cfg.json, "
                     "sae_weights.safetensors, sae_config.json, sae_report.json. Needs pip install "
                     "'tinystories[interp]'.\n\nExample:\n  tinystories interpret sae runs/demo --hook "
                     "blocks.2.resid_post --expansion 16 --k 32")
    p.add_argument("form", choices=["sae"], help=argparse.SUPPRESS)
    add_field(p, SAEConfig, "model", positional=True, metavar="MODEL")
    add_fields(p, SAEConfig, ["hook", "out", "corpus", "eval_corpus", "encoding_errors", "expansion", "k", "tokens",
                              "batch_size", "lr", "context", "buffer", "eval_tokens", "dense", "checkpoints", "seed",
                              "device", "threads"])
    p.add_argument("--fresh", action="store_true", help="ignore checkpoints in --out and start over")
    add_config_flags(p)
    p.set_defaults(func=run_sae)


def run_sae(args: argparse.Namespace) -> int:
    from tinystories.interpret.sae import default_out, train_sae
    from tinystories.model.loader import load_any
    from tinystories.utils import pick_device, set_threads

    cfg = build_from_args(SAEConfig, args)
    set_threads(cfg.threads)
    device = pick_device(cfg.device)
    loaded = load_any(cfg.model, device)
    from tinystories.interpret.hooks import stream_hook

    try:  # the default folder is named by the resolved hook
        hook = stream_hook(cfg.hook or f"blocks.{loaded.model.cfg.n_layer // 2}.resid_post", loaded.model.cfg.n_layer)
    except ValueError as exc:
        raise TinyStoriesError(str(exc)) from None
    out = Path(cfg.out) if cfg.out else default_out(loaded.name, hook)
    with hold_folder(out):
        r = train_sae(loaded, cfg, out, device, resume=not args.fresh)
    print(f"SAE {r['d_sae']} features (k={r['k']}) on {r['hook']}, {r['training_tokens']} tokens: "
          f"L0 {r['l0']:.1f}, variance explained {r['explained_variance']:.3f}, CE-loss score "
          f"{r['ce_loss_score']:.3f}, dead {r['dead_fraction']:.1%}, dense {r['dense_features']}")
    print(f"saved in {out} (SAELens: SAE.load_from_disk({str(out)!r}); report: {out}/sae_report.json)")
    return 0


def setup_features(p: argparse.ArgumentParser) -> None:
    p.description = ("An HTML report on a sparse autoencoder's features (written by `tinystories interpret sae`): "
                     "for the most active and some random features, their top-activating story snippets with "
                     "per-token highlighting, an activation histogram, and the tokens each feature's decoder "
                     "direction promotes and suppresses through the unembedding. Writes report.html, "
                     "features.json and features_config.json into --out (default SAE/features).\n\nExample:\n"
                     "  tinystories interpret features reports/sae-demo-blocks.2.hook_resid_post")
    p.add_argument("form", choices=["features"], help=argparse.SUPPRESS)
    add_field(p, FeaturesConfig, "sae", positional=True, metavar="SAE")
    add_fields(p, FeaturesConfig, ["model", "out", "corpus", "encoding_errors", "max_stories", "top_features",
                                   "random_features", "top_k", "logit_tokens", "batch_size", "seed", "device",
                                   "threads"])
    add_config_flags(p)
    p.set_defaults(func=run_features)


def run_features(args: argparse.Namespace) -> int:
    from tinystories.interpret.features import build_feature_report
    from tinystories.utils import pick_device, set_threads

    cfg = build_from_args(FeaturesConfig, args)
    out = Path(cfg.out) if cfg.out else Path(cfg.sae) / "features"
    with hold_folder(out):
        set_threads(cfg.threads)
        report = build_feature_report(cfg, out, pick_device(cfg.device))
    print(f"report: {report}")
    return 0


SETUP = {"interpret": setup_interpret, "interpret sae": setup_sae, "interpret features": setup_features}
