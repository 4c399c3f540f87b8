"""`tinystories export-hf` and `tinystories import-hf`: move models to and from `transformers`."""

from __future__ import annotations

import argparse

from tinystories.model.checkpoint import load_any, save_model


def _export(args: argparse.Namespace) -> int:
    from tinystories.model.hf import export_hf

    out = export_hf(load_any(args.model_dir), args.out_dir)
    print(f"wrote a transformers model folder to {out} "
          "(AutoModelForCausalLM / AutoTokenizer .from_pretrained load it)")
    return 0


def _import(args: argparse.Namespace) -> int:
    from tinystories.model.hf import load_hf_model

    loaded = load_hf_model(args.source)
    extra = {k: v for k, v in loaded.config.items() if k not in ("model", "tokenizer_fingerprint")}
    out = save_model(args.out_dir, loaded.model, loaded.tokenizer, extra)
    print(f"converted {args.source} ({loaded.model.num_params():,} parameters) into {out}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export-hf", help="export a model folder as a Hugging Face transformers model",
                       description="Write MODEL_DIR as a transformers folder (GPTNeoForCausalLM for neo "
                                   "models, LlamaForCausalLM for modern ones) with tokenizer and model card.")
    p.add_argument("model_dir", help="a tinystories model folder")
    p.add_argument("out_dir", help="where to write the transformers folder")
    p.set_defaults(func=_export)
    p = sub.add_parser("import-hf", help="convert a transformers GPT-Neo/Llama model into a model folder",
                       description="Convert a local transformers folder, or a Hub id already in the local "
                                   "Hugging Face cache (e.g. roneneldan/TinyStories-33M), into a tinystories "
                                   "model folder. Nothing is downloaded.")
    p.add_argument("source", help="a transformers model folder or a cached Hub id")
    p.add_argument("out_dir", help="where to write the tinystories model folder")
    p.set_defaults(func=_import)
