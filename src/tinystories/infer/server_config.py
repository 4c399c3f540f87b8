"""The server's settings (`tinystories serve`), apart from the server so `--help` loads no web stack."""

from __future__ import annotations

from dataclasses import dataclass

from tinystories.config import Config, setting


@dataclass(frozen=True)
class ServeConfig(Config):
    models: list[str] = setting(help="model folders to serve (named after their folders)", factory=list, ge=1)
    host: str = setting("127.0.0.1", "address to listen on (default: loopback only)")
    port: int = setting(8000, "TCP port", ge=0, le=65535)
    api_key_env: str = setting("", "require 'Authorization: Bearer KEY', KEY being this environment "
                                   "variable's value")
    device: str = setting("cpu", "torch device for the models")
    max_batch: int = setting(64, "most rows decoded together per model", ge=1, le=65536)
    threads: int = setting(0, "torch CPU threads (0 = torch's choice; 1 is best when cores are shared)",
                           ge=0, le=4096)

    where = "serve"
