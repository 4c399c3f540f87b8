"""`tinystories presets`, `export-hf`, `import-hf`, `export-llama2c` and `export-gguf`: the model zoo, and
models to and from `transformers`, llama2.c and llama.cpp."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Literal

from tinystories.cli.options import add_config_flags, add_field, build_from_args
from tinystories.config import Config, setting
from tinystories.utils import cpu_model_and_flags


def setup_presets(p: argparse.ArgumentParser) -> None:
    p.description = ("The model shapes `tinystories train --preset NAME` accepts: the paper's GPT-Neo models "
                     "(1M-33M, and the 1-layer 21M), modern RoPE/RMSNorm/SwiGLU variants, llama2.c's 15M, and "
                     "the CPU demo, with exact parameter counts.\n\nExample:\n  tinystories presets")
    p.set_defaults(func=run_presets)


def preset_table() -> str:
    from tinystories.model.presets import PRESETS, count_params

    w = max(len(name) for name in PRESETS)
    head = f"{'preset':<{w}} {'arch':<7} {'layers':>6} {'d_model':>7} {'heads':>5} {'vocab':>6} {'context':>7} " \
           f"{'params':>8} {'non-emb':>8}"
    lines = [head, "-" * len(head)]
    for name, cfg in PRESETS.items():
        total, non_emb = count_params(cfg)
        lines.append(f"{name:<{w}} {cfg.arch:<7} {cfg.n_layer:>6} {cfg.d_model:>7} {cfg.n_head:>5} "
                     f"{cfg.vocab_size:>6} {cfg.context_length:>7} {total / 1e6:>7.2f}M {non_emb / 1e6:>7.2f}M")
    return "\n".join(lines)


def run_presets(args: argparse.Namespace) -> int:
    print(preset_table())
    return 0


@dataclass(frozen=True)
class ConvertConfig(Config):
    source: str = setting("", "a model folder (ours or transformers), or a Hub id in the local cache")
    out_dir: str = setting("", "where to write the converted folder")

    where = "convert"


def setup_export(p: argparse.ArgumentParser) -> None:
    p.description = ("Write a model as a transformers folder (GPTNeoForCausalLM for neo models, "
                     "LlamaForCausalLM for modern ones) with tokenizer and model card.\n\nExample:\n"
                     "  tinystories export-hf runs/demo/checkpoint hf/demo")
    add_field(p, ConvertConfig, "source", positional=True, metavar="MODEL")
    add_field(p, ConvertConfig, "out_dir", positional=True, metavar="OUT")
    add_config_flags(p)
    p.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    from tinystories.infer.params import PRESETS
    from tinystories.model.hf import export_hf
    from tinystories.model.loader import load_any

    cfg = build_from_args(ConvertConfig, args)
    out = export_hf(load_any(cfg.source), cfg.out_dir, PRESETS["story"])  # stories to read, as `sample` writes
    print(f"wrote a transformers model folder to {out} "
          "(AutoModelForCausalLM / AutoTokenizer .from_pretrained load it)")
    return 0


def setup_import(p: argparse.ArgumentParser) -> None:
    p.description = ("Convert a local transformers GPT-Neo or Llama folder, or a Hub id already in the local "
                     "Hugging Face cache (e.g. roneneldan/TinyStories-33M), into a tinystories model folder. "
                     "Nothing is downloaded.\n\nExample:\n"
                     "  tinystories import-hf roneneldan/TinyStories-33M models/33m")
    add_field(p, ConvertConfig, "source", positional=True, metavar="SOURCE")
    add_field(p, ConvertConfig, "out_dir", positional=True, metavar="OUT")
    add_config_flags(p)
    p.set_defaults(func=run_import)


def run_import(args: argparse.Namespace) -> int:
    from tinystories.model.checkpoint import save_model
    from tinystories.model.loader import load_any

    cfg = build_from_args(ConvertConfig, args)
    loaded = load_any(cfg.source)
    extra = {k: v for k, v in loaded.config.items() if k not in ("model", "tokenizer_fingerprint")}
    out = save_model(cfg.out_dir, loaded.model, loaded.tokenizer, extra)
    print(f"converted {cfg.source} ({loaded.model.num_params():,} parameters) into {out}")
    return 0


def setup_export_llama2c(p: argparse.ArgumentParser) -> None:
    p.description = ("Write a modern model as a llama2.c checkpoint (OUT, version 0, float32) and its tokenizer "
                     "(OUT with .tok.bin) so llama2.c's run.c runs it: ./run OUT -z OUT.tok.bin. Generate from an "
                     "empty prompt (-i ''): run.c's prompt encoder follows SentencePiece's conventions.\n\n"
                     "Example:\n  tinystories export-llama2c runs/demo demo.bin && ./run demo.bin -z demo.tok.bin")
    add_field(p, ConvertConfig, "source", positional=True, metavar="MODEL")
    add_field(p, ConvertConfig, "out_dir", positional=True, metavar="OUT")
    add_config_flags(p)
    p.set_defaults(func=run_export_llama2c)


def run_export_llama2c(args: argparse.Namespace) -> int:
    from tinystories.model.llama2c import export_llama2c, export_llama2c_tokenizer
    from tinystories.model.loader import load_any

    cfg = build_from_args(ConvertConfig, args)
    loaded = load_any(cfg.source)
    out = export_llama2c(loaded.model, cfg.out_dir, loaded.tokenizer.eos_id)
    tok = export_llama2c_tokenizer(loaded.tokenizer, out.with_suffix(".tok.bin"))
    print(f"wrote {out} and {tok} (run: ./run {out} -z {tok} -i '')")
    return 0


@dataclass(frozen=True)
class GGUFConfig(Config):
    source: str = setting("", "a model folder (ours or transformers), or a Hub id in the local cache")
    out: str = setting("", "the GGUF file to write (an Ollama Modelfile is written beside it)")
    dtype: Literal["f32", "f16", "q8_0"] = setting(
        "f16", "weight format: f32 (exact), f16, or q8_0 (8-bit, llama.cpp's near-lossless quantisation)")

    where = "gguf"


def setup_export_gguf(p: argparse.ArgumentParser) -> None:
    p.description = ("Write a modern model and its tokenizer as one GGUF file (llama.cpp's llama architecture, "
                     "byte-level BPE tokenizer) for llama.cpp and Ollama, with an Ollama Modelfile beside it "
                     "(OUT with .Modelfile). Prompts are plain story beginnings: llama.cpp puts <|endoftext|> "
                     "in front.\n\nExample:\n  tinystories export-gguf runs/demo demo.gguf --dtype q8_0 && "
                     "llama-completion -m demo.gguf -no-cnv -p 'Once upon a time'")
    add_field(p, GGUFConfig, "source", positional=True, metavar="MODEL")
    add_field(p, GGUFConfig, "out", positional=True, metavar="OUT.gguf")
    add_field(p, GGUFConfig, "dtype")
    add_config_flags(p)
    p.set_defaults(func=run_export_gguf)


def run_export_gguf(args: argparse.Namespace) -> int:
    from tinystories.infer.params import PRESETS
    from tinystories.model.gguf import export_gguf, write_modelfile
    from tinystories.model.loader import load_any

    cfg = build_from_args(GGUFConfig, args)
    loaded = load_any(cfg.source)
    out = export_gguf(loaded, cfg.out, cfg.dtype, PRESETS["api"])  # the whole distribution, as our API samples
    modelfile = write_modelfile(out, loaded.model.cfg.context_length, PRESETS["api"])
    print(f"wrote {out} ({cfg.dtype}, {out.stat().st_size / 1e6:.1f} MB) and {modelfile}\n"
          f"  llama.cpp: llama-completion -m {out} -no-cnv -p 'Once upon a time' -n 200\n"
          f"  Ollama:    ollama create {out.stem} -f {modelfile}")
    if cfg.dtype == "q8_0" and "amx_int8" in cpu_model_and_flags()[1]:
        print(AMX_WARNING, file=sys.stderr)
    return 0


AMX_WARNING = ("warning: this CPU has AMX, and llama.cpp built for it segfaults on q8_0 prompts (llama.cpp#20824): "
               "build it without AMX (python scripts/install_llama_cpp.py, docs/llama-cpp.md) or export --dtype f16")


SETUP = {"presets": setup_presets, "export-hf": setup_export, "import-hf": setup_import,
         "export-llama2c": setup_export_llama2c, "export-gguf": setup_export_gguf}
