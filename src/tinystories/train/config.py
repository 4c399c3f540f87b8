"""The training run's typed config, saved as `config.yaml` beside every checkpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from tinystories.config import Config, build, setting
from tinystories.errors import TinyStoriesError
from tinystories.model.config import GPTConfig
from tinystories.model.presets import PRESETS


@dataclass(frozen=True)
class OptimConfig(Config):
    """The defaults are the recipe benchmark's winner at CPU budgets of 3-5 minutes
    (bench/README.md): Muon at AdamW's update scale for the blocks (q, k and v as three
    matrices), AdamW at 4e-3 for the rest, a short warmup, then warmup-stable-decay to a tenth
    of the peak."""

    optimizer: Literal["adamw", "muon"] = setting("muon", "adamw everywhere, or muon for the blocks' matrices "
                                                           "(AdamW for embeddings, output layer, norms)")
    lr: float = setting(4e-3, "peak learning rate (AdamW)", gt=0, le=10)
    min_lr: float | None = setting(None, "the schedule decays to this (AdamW; Muon's in proportion); "
                                         "none = lr / 10", ge=0, le=10)
    muon_lr: float = setting(4e-3, "peak learning rate of Muon (on AdamW's scale with muon_scale="
                                   "match_rms_adamw; about 0.02 with original)", gt=0, le=10)
    muon_scale: Literal["original", "match_rms_adamw"] = setting(
        "match_rms_adamw", "how Muon scales a matrix's update by its shape: original (Keller Jordan's sqrt(max(1, "
                    "rows/cols))), or match_rms_adamw (0.2 sqrt(max(rows, cols)): muon_lr on AdamW's scale)")
    muon_split_qkv: bool = setting(True, "Muon orthogonalises the attention's q, k and v projections each "
                                         "alone, not as one fused matrix (bench/README.md: better at every budget)")
    muon_momentum: float = setting(0.95, "Muon's momentum", ge=0, lt=1)
    muon_weight_decay: float = setting(0.0, "Muon's decoupled weight decay", ge=0, le=10)
    muon_ns_dtype: Literal["auto", "bfloat16", "float32"] = setting(
        "auto", "dtype of Muon's Newton-Schulz step: auto = bf16 on GPUs, on a CPU whichever it runs faster "
                "(timed at start-up; bf16 is 31x slower than fp32 on CPUs without native bf16)")
    schedule: Literal["cosine", "wsd"] = setting("wsd", "after warmup: cosine decay, or warmup-stable-decay "
                                                          "(constant, then linear decay over decay_frac)")
    decay_frac: float = setting(0.3, "wsd: the share of the run spent decaying", gt=0, le=1)
    warmup_steps: int = setting(30, "linear warmup steps", ge=0)
    weight_decay: float = setting(0.1, "decoupled weight decay of the matrices (AdamW)", ge=0, le=10)
    beta1: float = setting(0.9, "AdamW beta1", ge=0, lt=1)
    beta2: float = setting(0.95, "AdamW beta2", ge=0, lt=1)
    grad_clip: float = setting(1.0, "clip the gradient norm to this (0 = off)", ge=0)

    where = "optim"

    def check(self) -> None:
        if self.min_lr is not None and self.min_lr > self.lr:
            raise TinyStoriesError(f"optim: min_lr ({self.min_lr}) is above lr ({self.lr})")

    @property
    def final_lr(self) -> float:
        """Where the schedule ends: `min_lr`, or a tenth of `lr` (which then follows a changed `lr`)."""
        return self.lr / 10 if self.min_lr is None else self.min_lr


@dataclass(frozen=True)
class TrainConfig(Config):
    data_dir: str = setting("", "folder from `tinystories pretokenize`: train.bin, valid.bin, tokenizer.json",
                            flag="data")
    out_dir: str = setting("runs/default", "run folder: checkpoint/ (the model to use), last/ (the state to "
                                           "resume from), metrics, loss.png, config.yaml", flag="out")
    preset: str = setting("demo", "model shape to start from (`tinystories presets`); `model.*` fields "
                                  "override it")
    model: GPTConfig = setting(help="the model's shape", factory=GPTConfig)
    optim: OptimConfig = setting(help="the optimizer and its schedule", factory=OptimConfig)
    batch_size: int = setting(16, "sequences per micro-batch (per process)", ge=1, le=1_000_000)
    data_order: Literal["random", "shuffled", "stories"] = setting(
        "stories", "training windows: random positions; shuffled = every window once per epoch; stories = "
                  "each window starts at a story's start, every story once per epoch")
    grad_accum: int = setting(1, "micro-batches per optimizer step", ge=1, le=1_000_000)
    max_steps: int = setting(2000, "optimizer steps", ge=1, le=10**12)
    max_minutes: float = setting(0.0, "stop (and finish the LR schedule) after this much training time; "
                                      "0 = no limit", ge=0)
    eval_interval: int = setting(200, "steps between validations", ge=1)
    eval_batches: int = setting(20, "validation batches per validation", ge=1)
    validation_split_percentage: float = setting(
        5.0, "when data_dir has no valid.bin: hold out this percentage of the training stories (drawn with "
             "`seed`, the same in every process and on resume) to validate on; 0 = no validation", ge=0, lt=100)
    log_interval: int = setting(10, "steps between log rows", ge=1)
    checkpoint_interval: int = setting(500, "steps between saves of the last state (last/, for resuming); a "
                                            "validation that finds a new best model saves too", ge=1)
    load_best_model_at_end: bool = setting(
        True, "checkpoint/ holds the model that scored best on validation (metric_for_best_model) and the trainer "
              "ends with it; off = checkpoint/ holds the last weights. last/ always holds the last state")
    metric_for_best_model: Literal["val_bpb", "val_loss"] = setting(
        "val_bpb", "the validation metric that picks the best model (lower is better for both)")
    early_stopping_patience: int = setting(
        0, "stop after this many validations in a row that do not improve the best metric by more than "
           "early_stopping_threshold; 0 = never stop early (the best model is kept either way)", ge=0)
    early_stopping_threshold: float = setting(
        0.0, "the improvement of metric_for_best_model that resets the early-stopping count", ge=0)
    seed: int = setting(1337, "random seed", ge=0, lt=2**63)
    device: str = setting("auto", "auto (cuda, then mps, then cpu), cpu, cuda, cuda:1, mps")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = setting(
        "auto", "auto = bf16 on GPU; on a CPU bf16 only where a start-up probe measures it faster than fp32 (AMX, "
                "avx512_bf16), else fp32; a resumed run keeps the dtype it started in")
    compile: Literal["auto", "on", "off"] = setting("auto", "torch.compile: auto = on GPU only")
    threads: int = setting(0, "CPU threads for torch; 0 = one per core not busy with other work (shared "
                                  "between the processes of a CPU torchrun)", ge=0, le=4096)
    progress: bool = setting(True, "progress bar")
    eval_samples: int = setting(2, "stories sampled at each evaluation, shown in the log and the trackers "
                                   "(0 = none)", ge=0, le=64)
    log_to: list[Literal["tensorboard", "wandb"]] = setting(
        help="experiment trackers to write to, besides metrics.jsonl (tensorboard, wandb; W&B offline with "
             "WANDB_MODE=offline)", factory=list, flag="log")
    wandb_project: str = setting("tinystories", "the W&B project of --log wandb")

    where = "train"

    def __post_init__(self) -> None:
        # Built from code (`TrainConfig(preset="8M")`) rather than by `build`, which applies
        # the preset in `resolve`: an untouched model field takes the preset's shape too.
        super().__post_init__()  # types first
        if self.preset not in PRESETS:
            raise TinyStoriesError(f"unknown model preset {self.preset!r}; choose one of {sorted(PRESETS)}")
        if self.model == GPTConfig():
            object.__setattr__(self, "model", PRESETS[self.preset])

    @classmethod
    def resolve(cls, data: dict[str, Any]) -> dict[str, Any]:
        """The model starts from `preset`, then takes any `model.*` fields given."""
        preset = data.get("preset", cls.preset)
        if preset not in PRESETS:
            raise TinyStoriesError(f"unknown model preset {preset!r}; choose one of {sorted(PRESETS)}")
        given = data.get("model") or {}
        if isinstance(given, GPTConfig):
            return data
        if not isinstance(given, dict):
            raise TinyStoriesError(f"train.model must be a mapping of model fields, got {given!r}")
        return {**data, "model": {**asdict(PRESETS[preset]), **given}}

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.grad_accum * self.model.context_length


def build_train_config(path: str | Path | None = None, overrides: list[str] | None = None,
                       **fields: Any) -> TrainConfig:
    """Config from a YAML file, keyword fields (as flags) and `a.b=value` overrides, in that order."""
    return build(TrainConfig, path, {k: v for k, v in fields.items() if v is not None}, overrides)


def dump_config(cfg: TrainConfig) -> str:
    return yaml.safe_dump(asdict(cfg), sort_keys=False)
