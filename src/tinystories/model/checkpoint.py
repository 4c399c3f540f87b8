"""Model folders in the ``save_pretrained`` style: safetensors weights, JSON config, tokenizer.

    my-model/
      config.json          {"model": GPTConfig fields, "tokenizer_fingerprint": ..., ...}
      model.safetensors    weights (never pickle: safe to load from untrusted sources)
      tokenizer.json       the tokenizer the model was trained with

Every write goes to a temporary file first and is renamed into place, so an interrupted
save never destroys the previous good checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import nn

from tinystories import __version__
from tinystories.config import from_dict, read_structured
from tinystories.errors import TinyStoriesError
from tinystories.model.gpt import GPT, GPTConfig
from tinystories.tokenizer import Tokenizer
from tinystories.utils import atomic_write, write_json

CONFIG_NAME = "config.json"
CHECKPOINT_DIR = "checkpoint"  # a training run's model folder, inside the run folder
WEIGHTS_NAME = "model.safetensors"
TOKENIZER_NAME = "tokenizer.json"


class Sampling(Protocol):
    """The sampling settings an exported model recommends (`export_hf`'s generation_config.json,
    `export_gguf`'s general.sampling.*): an `infer.params.SamplingParams`, which the CLI passes
    in, as model/ comes before infer/ and never imports it."""
    @property
    def temperature(self) -> float: ...
    @property
    def top_k(self) -> int: ...
    @property
    def top_p(self) -> float: ...
    @property
    def min_p(self) -> float: ...
    @property
    def repetition_penalty(self) -> float: ...


def save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    data = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=metadata)
    with atomic_write(path, "wb") as f:
        f.write(data)


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.exists():
        raise TinyStoriesError(f"weights not found: {path}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise TinyStoriesError(f"{path}: corrupt or not a safetensors file ({exc})") from exc


def model_state(model: GPT) -> dict[str, torch.Tensor]:
    """State dict without the tied lm_head copy (safetensors refuses shared tensors)."""
    state = dict(model.state_dict())
    if model.cfg.tie_embeddings:
        state.pop("lm_head.weight", None)
    return state


def save_model(folder: str | Path, model: GPT, tokenizer: Tokenizer, extra: dict[str, Any] | None = None) -> Path:
    """Write a model folder (weights, config, tokenizer); `extra` goes into config.json."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if tokenizer.vocab_size > model.cfg.vocab_size:
        raise TinyStoriesError(f"tokenizer has {tokenizer.vocab_size} tokens but the model only "
                               f"{model.cfg.vocab_size}")
    save_tensors(model_state(model), folder / WEIGHTS_NAME, metadata={"format": "pt"})
    tokenizer.save(folder / TOKENIZER_NAME)
    write_json(folder / CONFIG_NAME, {
        "model": asdict(model.cfg),
        "tokenizer_fingerprint": tokenizer.fingerprint,
        "tinystories_version": __version__,
        **(extra or {}),
    })
    return folder


@dataclass
class LoadedModel:
    model: GPT
    tokenizer: Tokenizer
    config: dict[str, Any]
    path: Path
    name: str = ""  # what users call it (the run folder's name): in /v1/models, reports, cards

    def __post_init__(self) -> None:
        self.name = self.name or model_name(self.path)


def model_name(path: str | Path) -> str:
    """A model's name: its folder's, or its run's for `RUN/checkpoint` (every run's model is
    called `checkpoint`, which names nothing)."""
    p = Path(path)
    return p.parent.name if p.name == CHECKPOINT_DIR and p.parent.name else p.name


def read_config(folder: Path) -> dict[str, Any]:
    data = read_config_raw(folder)
    if "model" not in data:
        raise TinyStoriesError(f"{folder / CONFIG_NAME}: no 'model' section; was this folder written by tinystories?")
    return data


_INIT_FILLS = ("normal_", "uniform_", "kaiming_uniform_", "zeros_", "ones_")


def shapes_only(cfg: GPTConfig) -> GPT:
    """The model on the meta device, its parameters never initialised: for counting them, or for
    loading weights in with `load_state_dict(assign=True)`. torch.nn.init's fills are skipped
    meanwhile because on meta tensors they run Python decompositions that import torch._dynamo,
    1.2-1.5 s of `tinystories sample`'s 3 s start-up (Zen 4 AMD EPYC). The fills are swapped
    process-wide meanwhile, so they skip meta tensors only: a model another thread builds on a
    real device at that moment is initialised as ever."""
    saved = {name: getattr(nn.init, name) for name in _INIT_FILLS}

    def skipping_meta(fill: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        return lambda tensor, *args, **kwargs: tensor if tensor.is_meta else fill(tensor, *args, **kwargs)

    try:
        for name, fill in saved.items():
            setattr(nn.init, name, skipping_meta(fill))
        with torch.device("meta"):
            return GPT(cfg)
    finally:
        for name, fill in saved.items():
            setattr(nn.init, name, fill)


def load_model(folder: str | Path, device: str | torch.device = "cpu",
               tokenizer_path: str | Path | None = None) -> LoadedModel:
    """Load a model folder; a tokenizer other than the one it was trained with is refused."""
    folder = Path(folder)
    if not folder.exists():
        raise TinyStoriesError(f"model folder not found: {folder}")
    config = read_config(folder)
    cfg = from_dict(GPTConfig, config["model"], where=f"{folder / CONFIG_NAME}:model")
    tokenizer = Tokenizer.from_file(tokenizer_path or folder / TOKENIZER_NAME)
    expected = config.get("tokenizer_fingerprint")
    if expected and tokenizer.fingerprint != expected:
        raise TinyStoriesError(f"tokenizer {tokenizer_path or folder / TOKENIZER_NAME} does not match the "
                               f"model in {folder} (fingerprint {tokenizer.fingerprint}, model expects {expected})")
    if tokenizer.vocab_size > cfg.vocab_size:
        raise TinyStoriesError(f"tokenizer has {tokenizer.vocab_size} tokens, more than the model's "
                               f"vocabulary of {cfg.vocab_size}")
    model = shapes_only(cfg)
    state = load_tensors(folder / WEIGHTS_NAME)
    if cfg.tie_embeddings:
        state["lm_head.weight"] = state.get("tok_emb.weight", torch.empty(0))
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        raise TinyStoriesError(f"{folder / WEIGHTS_NAME} does not fit the config in {CONFIG_NAME}: {exc}") from exc
    if cfg.tie_embeddings:
        model.lm_head.weight = model.tok_emb.weight
    model.to(device).eval()
    return LoadedModel(model, tokenizer, config, folder)


def read_config_raw(folder: Path) -> dict[str, Any]:
    path = folder / CONFIG_NAME
    if not path.exists():
        raise TinyStoriesError(f"{folder} is not a model folder: {CONFIG_NAME} is missing")
    data = read_structured(path, "model config")
    if not isinstance(data, dict):
        raise TinyStoriesError(f"{path}: expected a JSON object")
    return data
