"""`tinystories serve`: the OpenAI-compatible server and web playground."""

from __future__ import annotations

import argparse
import os

from tinystories.cli.options import add_config_flags, add_field, add_fields, build_from_args
from tinystories.errors import TinyStoriesError
from tinystories.infer.server_config import ServeConfig


def setup_serve(p: argparse.ArgumentParser) -> None:
    p.description = ("Serve one or more model folders (tinystories or transformers GPT-Neo/Llama) at "
                     "/v1/completions, /v1/chat/completions and /v1/models, with streaming and continuous "
                     "batching, and a web playground at /.\n\nExample:\n"
                     "  tinystories serve runs/demo/checkpoint --port 8000")
    add_field(p, ServeConfig, "models", positional=True, metavar="MODEL")
    add_fields(p, ServeConfig, ["host", "port", "api_key_env", "device", "threads"])
    add_field(p, ServeConfig, "directions", repeat=True)
    add_fields(p.add_argument_group("limits"), ServeConfig,
               ["limits.max_batch", "limits.reserved_slots", "limits.max_prompts", "limits.max_rows",
                "limits.max_prompt_bytes", "limits.max_body_bytes", "limits.shutdown_grace_s"])
    add_config_flags(p)
    p.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    from tinystories.errors import SteeringError
    from tinystories.infer.engine import check_adds
    from tinystories.infer.server import create_app, load_models, serve
    from tinystories.interpret import attention_api
    from tinystories.interpret.steering import steering_direction
    from tinystories.utils import set_threads

    cfg = build_from_args(ServeConfig, args)
    key = None
    if cfg.api_key_env:
        key = os.environ.get(cfg.api_key_env)
        if not key:
            raise TinyStoriesError(f"--api-key-env {cfg.api_key_env}: that environment variable is empty or unset")
    set_threads(cfg.threads)
    models = load_models(cfg.models, cfg.device)
    directions = {}
    for item in cfg.directions:
        name, sep, spec = item.partition("=")
        if not sep or not name or len(models) != 1:
            raise TinyStoriesError(f"--direction {item!r}: expected NAME=SPEC, with one MODEL served")
        directions[name] = steering_direction(spec)
        (loaded,) = models.values()
        try:
            check_adds(loaded.model, {directions[name][0]: directions[name][1]})
        except SteeringError as exc:
            raise TinyStoriesError(f"--direction {name}: {exc}") from exc
    app = create_app(models, key, cfg.limits, extensions=[attention_api.install],
                     directions={name: directions for name in models})
    print(f"playground: http://{cfg.host}:{cfg.port}/   API: http://{cfg.host}:{cfg.port}/v1", flush=True)
    serve(app, cfg.host, cfg.port, cfg.limits.shutdown_grace_s)
    return 0


SETUP = {"serve": setup_serve}
