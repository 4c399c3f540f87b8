"""Optimizers and learning-rate schedules.

Two recipes:

* ``adamw``: AdamW on everything (fused kernel where available), weight decay on matrices.
* ``muon``: Muon (PyTorch's `torch.optim.Muon`: momentum, then the update orthogonalised by
  Newton-Schulz iterations, in fp32 on CPUs that emulate bf16: `train/muon.py`) for the
  blocks' hidden matrices (the fused q, k, v projection as three matrices, where
  ``muon_split_qkv``), AdamW for the embeddings, the
  output layer, norms and biases, as Muon's authors prescribe (an embedding row or a
  vocabulary column is not a linear map whose spectrum should be flattened).

Every param group keeps its peak LR in ``base_lr``; the schedule multiplies it by one factor
(`lr_factor`): linear warmup, then cosine decay, or warmup-stable-decay (constant, then a
linear decay over the last ``decay_frac`` of the run), both down to ``final_lr / lr``.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from tinystories.model.gpt import GPT
from tinystories.train.config import OptimConfig
from tinystories.train.muon import Muon, ns_dtype_for


def make_optimizers(model: GPT, cfg: OptimConfig) -> list[torch.optim.Optimizer]:
    """The optimizers of `model` (one, or Muon + AdamW), each group with its `base_lr`."""
    hidden = [p for n, p in model.named_parameters() if n.startswith("blocks.") and p.dim() == 2]
    if cfg.optimizer == "muon":
        ids = {id(p) for p in hidden}
        rest = [p for p in model.parameters() if id(p) not in ids]
        qkv: dict[torch.Tensor, int] = {p: 3 for n, p in model.named_parameters()  # q, k, v stacked by rows
                                        if n.endswith(".attn.qkv.weight")} if cfg.muon_split_qkv else {}
        muon = Muon([{"params": hidden, "base_lr": cfg.muon_lr}], ns_dtype=muon_ns_dtype(cfg, hidden[0].device)[0],
                    blocks=qkv, lr=cfg.muon_lr, momentum=cfg.muon_momentum, weight_decay=cfg.muon_weight_decay,
                    nesterov=True, adjust_lr_fn=cfg.muon_scale)
        return [muon, _adamw(rest, cfg)]
    return [_adamw(list(model.parameters()), cfg)]


def muon_ns_dtype(cfg: OptimConfig, device: torch.device) -> tuple[torch.dtype, str]:
    """Muon's Newton-Schulz dtype, the configured one or (auto) the faster on this device; and why."""
    if cfg.muon_ns_dtype != "auto":
        return getattr(torch, cfg.muon_ns_dtype), f"{cfg.muon_ns_dtype} (set by optim.muon_ns_dtype)"
    return ns_dtype_for(device.type, torch.get_num_threads())


def _adamw(params: list[torch.nn.Parameter], cfg: OptimConfig) -> torch.optim.AdamW:
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay, "base_lr": cfg.lr},
              {"params": no_decay, "weight_decay": 0.0, "base_lr": cfg.lr}]
    kwargs: dict[str, Any] = {"lr": cfg.lr, "betas": (cfg.beta1, cfg.beta2)}
    try:  # the fused kernel is the fastest on GPU and on recent CPU builds
        return torch.optim.AdamW(groups, fused=True, **kwargs)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, **kwargs)


def lr_factor(cfg: OptimConfig, progress: float, step: int) -> float:
    """The schedule's multiplier of every group's `base_lr` at `step`, `progress` in [0, 1]."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    floor = cfg.final_lr / cfg.lr
    progress = min(max(progress, 0.0), 1.0)
    if cfg.schedule == "wsd":
        decay_start = 1.0 - cfg.decay_frac
        if progress <= decay_start:
            return 1.0
        return 1.0 - (1.0 - floor) * (progress - decay_start) / max(cfg.decay_frac, 1e-12)
    return floor + (1.0 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def set_lr(optimizers: list[torch.optim.Optimizer], factor: float) -> None:
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = group["base_lr"] * factor


def optimizer_tensors(optimizers: list[torch.optim.Optimizer]) -> tuple[dict[str, torch.Tensor], list[Any]]:
    """Every optimizer's state as named tensors (for safetensors) and its param groups (for JSON)."""
    tensors, groups = {}, []
    for k, opt in enumerate(optimizers):
        sd = opt.state_dict()
        prefix = "" if k == 0 else f"opt{k}."  # (one optimizer: the names checkpoints always had)
        tensors.update({f"{prefix}{idx}.{name}": v for idx, st in sd["state"].items() for name, v in st.items()})
        groups.append(sd["param_groups"])
    return tensors, groups


def load_optimizers(optimizers: list[torch.optim.Optimizer], tensors: dict[str, torch.Tensor],
                    groups: list[Any]) -> None:
    """Restore saved optimizer states (moments, step counts) into `optimizers`.

    The hyper-parameters stay those of the optimizers as built from the current config: a run
    resumed with `--set optim.lr=...` trains at the new LR, as the config.yaml it rewrites says.
    """
    if len(groups) != len(optimizers):
        raise ValueError(f"{len(groups)} saved optimizer(s), {len(optimizers)} configured")
    for k, opt in enumerate(optimizers):
        prefix = "" if k == 0 else f"opt{k}."
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("rng.") or (k == 0 and key.startswith("opt")) or not key.startswith(prefix):
                continue
            idx, name = key[len(prefix):].split(".", 1)
            state.setdefault(int(idx), {})[name] = value
        configured = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
        opt.load_state_dict({"state": state, "param_groups": groups[k]})
        for group, settings in zip(opt.param_groups, configured):
            group.update(settings)
