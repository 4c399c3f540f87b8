"""The `tinystories` command line: one subcommand per pipeline stage.

Each stage lives in its own module, which exposes `add_commands(subparsers)`; this file
only collects them, so adding a stage never means editing another stage's code.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from tinystories.errors import TinyStoriesError

# Modules that register subcommands, in the order of the pipeline.
COMMAND_MODULES = [
    "tinystories.data.cli",
    "tinystories.data.gen_cli",
    "tinystories.model.cli",
    "tinystories.model.hf_cli",
    "tinystories.train.cli",
    "tinystories.infer.cli",
    "tinystories.infer.serve_cli",
    "tinystories.eval.cli",
    "tinystories.interpret.cli",
    "tinystories.demo",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tinystories",
        description="Train, sample, serve, evaluate and interpret tiny story-writing language models.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except TinyStoriesError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
