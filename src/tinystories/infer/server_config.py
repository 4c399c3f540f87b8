"""The server's settings (`tinystories serve`), apart from the server so `--help` loads no web stack."""

from __future__ import annotations

from dataclasses import dataclass

from tinystories.config import Config, setting


@dataclass(frozen=True)
class Limits(Config):
    """What one request may ask for, and how the batch is shared (see docs/serving.md)."""

    max_batch: int = setting(64, "most rows decoded together per model", ge=1, le=65536)
    reserved_slots: int = setting(8, "extra batch slots beyond --max-batch, only for requests that don't "
                                     "already fill a batch: a newcomer starts at once beside a big request",
                                  ge=0, le=65536)
    max_prompts: int = setting(64, "prompts per completions request", ge=1)
    max_rows: int = setting(256, "rows per request (prompts x n)", ge=1)
    max_prompt_bytes: int = setting(65536, "UTF-8 bytes of prompt text per request", ge=1)
    max_body_bytes: int = setting(1 << 21, "bytes of a request body", ge=1024)
    shutdown_grace_s: float = setting(5.0, "on SIGTERM/Ctrl-C: seconds running requests get to finish", ge=0)

    where = "serve.limits"


@dataclass(frozen=True)
class ServeConfig(Config):
    models: list[str] = setting(help="models to serve: run or model folders (named after the run or folder), "
                                     "or NAME=PATH", factory=list, ge=1)
    host: str = setting("127.0.0.1", "address to listen on (default: loopback only)")
    port: int = setting(8000, "TCP port", ge=0, le=65535)
    api_key_env: str = setting("", "require 'Authorization: Bearer KEY', KEY being this environment "
                                   "variable's value")
    device: str = setting("cpu", "torch device for the models")
    threads: int = setting(0, "CPU threads for torch; 0 = one per core not busy with other work", ge=0, le=4096)
    directions: list[str] = setting(help="NAME=SPEC (repeatable): a direction requests may steer with, by name "
                                         "(SPEC: SAE_FOLDER:FEATURE, FILE.pt or FILE.npy@HOOK); one model only",
                                    factory=list, flag="direction")
    limits: Limits = setting(help="per-request limits and batch sharing", factory=Limits)

    where = "serve"
