"""The training run's typed config, saved as `config.yaml` beside every checkpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from tinystories.config import apply_overrides, from_dict, load_file
from tinystories.errors import TinyStoriesError
from tinystories.model.gpt import GPTConfig
from tinystories.model.presets import PRESETS, get_preset


@dataclass
class OptimConfig:
    lr: float = 2e-3
    min_lr: float = 2e-4  # the cosine schedule decays to this
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # 0 = off


@dataclass
class TrainConfig:
    data_dir: str = ""  # folder from `tinystories pretokenize`: train.bin, valid.bin, tokenizer.json
    out_dir: str = "runs/default"
    preset: str = "demo"  # starting point for `model`; fields given under `model` override it
    model: GPTConfig = field(default_factory=GPTConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    batch_size: int = 32  # sequences per micro-batch (per process)
    grad_accum: int = 1  # micro-batches per optimizer step
    max_steps: int = 2000
    max_minutes: float = 0.0  # stop early after this much training time; 0 = no limit
    eval_interval: int = 200
    eval_batches: int = 20
    log_interval: int = 10
    checkpoint_interval: int = 500
    seed: int = 1337
    device: str = "auto"  # auto = cuda, then mps, then cpu
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto = bf16 on GPU, fp32 on CPU
    compile: Literal["auto", "on", "off"] = "auto"  # auto = torch.compile on GPU only
    threads: int = 0  # CPU threads for torch; 0 = torch's default
    progress: bool = True

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.grad_accum * self.model.context_length


def build_train_config(path: str | Path | None = None, overrides: list[str] | None = None,
                       **fields: Any) -> TrainConfig:
    """Config from a YAML file, keyword fields and `a.b=value` overrides, in that order.

    The model starts from `preset` (resolved first) and then takes any `model.*` fields.
    """
    data = load_file(path) if path else {}
    data.update({k: v for k, v in fields.items() if v is not None})
    data = apply_overrides(data, overrides or [])
    preset = data.get("preset", TrainConfig.preset)
    if preset not in PRESETS:
        raise TinyStoriesError(f"unknown model preset {preset!r}; choose one of {sorted(PRESETS)}")
    model = asdict(get_preset(preset))
    model_overrides = data.get("model") or {}
    if not isinstance(model_overrides, dict):
        raise TinyStoriesError("`model` must be a mapping of GPTConfig fields")
    unknown = sorted(set(model_overrides) - set(model))
    if unknown:
        raise TinyStoriesError(f"model: unknown key(s) {unknown}; valid keys are {sorted(model)}")
    model.update(model_overrides)
    data["model"] = model
    return from_dict(TrainConfig, data, where=str(path) if path else "train config")


def dump_config(cfg: TrainConfig) -> str:
    return yaml.safe_dump(asdict(cfg), sort_keys=False)
