"""`tinystories serve`: the OpenAI-compatible server and web playground."""

from __future__ import annotations

import argparse
import os

from tinystories.errors import TinyStoriesError


def _serve(args: argparse.Namespace) -> int:
    from tinystories.infer.server import serve

    key = None
    if args.api_key_env:
        key = os.environ.get(args.api_key_env)
        if not key:
            raise TinyStoriesError(f"--api-key-env {args.api_key_env}: that environment variable is empty or unset")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    print(f"playground: http://{args.host}:{args.port}/   API: http://{args.host}:{args.port}/v1")
    serve(args.model_dirs, args.host, args.port, key, args.device, args.max_batch)
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve", help="serve models over an OpenAI-compatible API with a web playground",
        description="Serve one or more model folders (tinystories or transformers GPT-Neo/Llama) at "
                    "/v1/completions, /v1/chat/completions and /v1/models, with streaming and "
                    "continuous batching, and a web playground at /. Models are named after their folders.")
    p.add_argument("model_dirs", nargs="+", metavar="MODEL_DIR", help="model folders to serve")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key-env", metavar="VAR",
                   help="require 'Authorization: Bearer KEY' where KEY is this environment variable's value")
    p.add_argument("--device", default="cpu", help="torch device for the models (default: cpu)")
    p.add_argument("--max-batch", type=int, default=64, help="most rows decoded together per model")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (default: torch's choice; 1 is best when cores are shared)")
    p.set_defaults(func=_serve)
