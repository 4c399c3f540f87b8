"""The `tinystories` command line: one subcommand per pipeline stage, one module per group.

The table below is the only list of commands. A command's module is imported only when
that command runs (or shows its help), so `tinystories --help` and argument errors never
import torch. Every command builds its settings one way (`cli.options`): dataclass
defaults <- --config FILE <- flags <- --set key=value.

Library packages hold no argparse, `print` or `input`: user interaction lives here.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from tinystories import __version__
from tinystories.errors import TinyStoriesError, disk_error

# command -> (module in tinystories.cli, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "corpus": ("data", "read a corpus, repair mojibake, report what was repaired or dropped"),
    "pretokenize": ("data", "train (or load) a tokenizer and write uint16 token files"),
    "generate": ("generate", "generate synthetic children's stories with a teacher LLM (OpenAI-compatible API)"),
    "vocab": ("generate", "inspect the word lists and sample prompts of the generator"),
    "presets": ("models", "list the model presets (the paper's zoo) with parameter counts"),
    "train": ("train", "train a tiny GPT on pretokenized data (resumable; torchrun for several GPUs)"),
    "sample": ("sample", "write stories with a model (streams to the terminal)"),
    "serve": ("serve", "serve models over an OpenAI-compatible API with a web playground"),
    "export-hf": ("models", "export a model folder as a Hugging Face transformers model"),
    "import-hf": ("models", "convert a transformers GPT-Neo/Llama model into a model folder"),
    "export-llama2c": ("models", "export a modern model for llama2.c's run.c (checkpoint and tokenizer)"),
    "export-gguf": ("models", "export a modern model as one GGUF file for llama.cpp and Ollama"),
    "eval": ("eval", "evaluate models: GPT-Eval, probes, diversity, bits per byte, reports"),
    "interpret": ("interpret", "heads and neurons as pictures; `interpret sae` / `features`: SAEs"),
    "demo": ("demo", "the whole pipeline on the bundled stories: train on the CPU, then sample"),
}


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and examples keep their line breaks."""


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; only the command named in `argv` (if any) gets its arguments, and its module."""
    argv = sys.argv[1:] if argv is None else argv
    chosen = next((a for a in argv if not a.startswith("-")), None)
    parser = argparse.ArgumentParser(
        prog="tinystories", formatter_class=HelpFormatter,
        description="Train, sample, serve, evaluate and interpret tiny story-writing language models "
                    "(TinyStories, Eldan & Li 2023).",
        epilog="Start with `tinystories demo`, then `tinystories COMMAND --help`.")
    parser.add_argument("--version", action="version", version=f"tinystories {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text, formatter_class=HelpFormatter)
        if name == chosen:
            setups = importlib.import_module(f"tinystories.cli.{module}").SETUP
            # A command's other forms ("interpret sae MODEL") are SETUP keys of two words.
            rest = argv[argv.index(name) + 1:]
            word = next((a for a in rest if not a.startswith("-")), None)
            setups.get(f"{name} {word}", setups[name])(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:  # `tinystories presets | head -2`: the reader left; nothing to say
        # Point stdout at nothing so the interpreter's final flush does not complain either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _main(argv: list[str] | None) -> int:
    args = build_parser(argv).parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log = logging.getLogger("tinystories")
    log.addHandler(handler)
    log.setLevel(logging.DEBUG if getattr(args, "verbose", False) else logging.INFO)
    try:
        result = args.func(args)
    except TinyStoriesError as exc:
        print("error: " + " ".join(str(exc).split()), file=sys.stderr)  # one line, however it was written
        return 2
    except OSError as exc:  # a full disk, a read-only folder: one line, not a traceback
        if (message := disk_error(exc)) is None:
            raise
        print("error: " + message, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        log.removeHandler(handler)
    return int(result or 0)
