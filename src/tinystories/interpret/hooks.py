"""Record and patch activations through the model's own hook points, in the spirit of TransformerLens.

Every activation worth looking at passes through a named `HookPoint` of `GPT` (see
`tinystories.model.hook_points`). This module only registers forward hooks on them, so what it
records or changes is what the real forward pass computes, with no second implementation
to keep in line:

* `run_with_cache(model, idx)`: logits and an `ActivationCache` of the whole forward pass;
* `run_with_hooks(model, idx, {name: fn})`: `fn(activation)` may return a replacement;
* `patched(model, {name: fn})`: the same as a context manager (for sampling, evaluation...);
* `ablate_heads`, `set_neurons`: the two interventions most studies start with.

Short names (``cache[name, layer]``, or ``cache[name]`` for model-wide ones):

========== ===================== ================================== ===========================
name       shape                 what                               hook point
========== ===================== ================================== ===========================
embed      [B, T, d]             token (+ position) embeddings      ``hook_embed``
resid_pre  [B, T, d]             residual stream entering the block ``blocks.L.hook_resid_pre``
q, k, v    [B, H, T, head_dim]   per-head queries/keys (after RoPE) ``blocks.L.attn.hook_q`` ...
attn       [B, H, T, T]          attention probabilities            ``blocks.L.attn.hook_pattern``
z          [B, H, T, head_dim]   per-head mixed values, attn @ v    ``blocks.L.attn.hook_z``
attn_out   [B, T, d]             what attention writes              ``blocks.L.hook_attn_out``
resid_mid  [B, T, d]             the stream after attention         ``blocks.L.hook_resid_mid``
mlp_post   [B, T, ffn]           MLP neuron activations             ``blocks.L.mlp.hook_post``
mlp_out    [B, T, d]             what the MLP writes                ``blocks.L.hook_mlp_out``
resid_post [B, T, d]             residual stream leaving the block  ``blocks.L.hook_resid_post``
final      [B, T, d]             the final-normed stream            ``hook_final``
========== ===================== ================================== ===========================
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping

import torch

from tinystories.model.gpt import GPT

HookFn = Callable[[torch.Tensor], torch.Tensor | None]

LAYER_HOOKS = {"resid_pre": "hook_resid_pre", "q": "attn.hook_q", "k": "attn.hook_k", "v": "attn.hook_v",
               "attn": "attn.hook_pattern", "z": "attn.hook_z", "attn_out": "hook_attn_out",
               "resid_mid": "hook_resid_mid", "mlp_post": "mlp.hook_post", "mlp_out": "hook_mlp_out",
               "resid_post": "hook_resid_post"}
MODEL_HOOKS = {"embed": "hook_embed", "final": "hook_final"}


def hook_name(name: str, layer: int | None = None) -> str:
    """The hook point of a short name: ``hook_name("attn", 1)`` -> ``blocks.1.attn.hook_pattern``."""
    if layer is None:
        if name not in MODEL_HOOKS:
            raise KeyError(f"{name!r} needs a layer, or is unknown; model-wide names: {sorted(MODEL_HOOKS)}, "
                           f"per-layer names: {sorted(LAYER_HOOKS)}")
        return MODEL_HOOKS[name]
    if name not in LAYER_HOOKS:
        raise KeyError(f"{name!r} is not a per-layer name; choose from {sorted(LAYER_HOOKS)}")
    return f"blocks.{layer}.{LAYER_HOOKS[name]}"


def pattern_names(model: GPT) -> list[str]:
    """The attention-pattern hook point of every layer."""
    return [hook_name("attn", layer) for layer in range(model.cfg.n_layer)]


class ActivationCache:
    """Activations of one forward pass, by hook point name; `cache[name, layer]` uses short names."""

    def __init__(self, n_layer: int) -> None:
        self.n_layer = n_layer
        self.store: dict[str, torch.Tensor] = {}

    def _key(self, key: str | tuple[str, int]) -> str:
        if isinstance(key, tuple):
            name, layer = key
            return hook_name(name, layer + self.n_layer if layer < 0 else layer)  # -1 = last layer
        return MODEL_HOOKS.get(key, key)

    def __getitem__(self, key: str | tuple[str, int]) -> torch.Tensor:
        full = self._key(key)
        if full not in self.store:
            raise KeyError(f"{key!r} not in cache; recorded: {sorted(self.store)[:6]}...")
        return self.store[full]

    def __contains__(self, key: object) -> bool:
        return isinstance(key, (str, tuple)) and self._key(key) in self.store  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[str]:
        return iter(self.store)

    def stack(self, name: str) -> torch.Tensor:
        """One activation across layers, stacked on a new first dimension: [n_layer, ...]."""
        return torch.stack([self[name, layer] for layer in range(self.n_layer)])


def patched(model: GPT, hooks: Mapping[str, HookFn]) -> contextlib.AbstractContextManager[None]:
    """Within the block, `hooks[name](activation)` runs at each named hook point of every forward
    pass this thread makes; a returned tensor replaces the activation (None leaves it as it is).

    Hooks only act on this thread's forward passes (`HookedModule.hooked`): a server's engine thread may
    run the same model at the same time, and must neither be recorded nor patched. Generation
    on this thread (`infer.offline.generate`) runs `forward` while they are in place.
    """
    return model.hooked(hooks)


@torch.no_grad()
def run_with_hooks(model: GPT, idx: torch.Tensor, hooks: Mapping[str, HookFn],
                   pad: torch.Tensor | None = None) -> torch.Tensor:
    """Logits [B, T, vocab] of `idx` with `hooks` in place (see `patched`)."""
    with patched(model, hooks):
        logits, _ = model(idx, pad=pad)
    return logits


@torch.no_grad()
def run_with_cache(model: GPT, idx: torch.Tensor, pad: torch.Tensor | None = None,
                   names: Iterable[str] | None = None) -> tuple[torch.Tensor, ActivationCache]:
    """Logits [B, T, vocab] of `idx` [B, T] and an `ActivationCache` of its forward pass.

    `names`: the hook points to record (default: all). `pad` is the per-row count of left
    padding slots, as in `GPT.forward`. Run the model in eval mode to record what it computes
    without dropout.
    """
    cache = ActivationCache(model.cfg.n_layer)
    wanted = list(names) if names is not None else list(model.hook_points())

    def record(name: str) -> HookFn:
        def fn(x: torch.Tensor) -> None:
            cache.store[name] = x
        return fn

    logits = run_with_hooks(model, idx, {name: record(name) for name in wanted}, pad)
    return logits, cache


def ablate_heads(heads: Iterable[tuple[int, int]], value: float = 0.0) -> dict[str, HookFn]:
    """Hooks that set the output z of attention heads (layer, head) to `value` (0 = zero-ablation)."""
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(layer, []).append(head)

    def zero(hs: list[int]) -> HookFn:
        def fn(z: torch.Tensor) -> torch.Tensor:
            z = z.clone()
            z[:, hs] = value
            return z
        return fn

    return {hook_name("z", layer): zero(hs) for layer, hs in by_layer.items()}


def set_neurons(layer: int, values: Mapping[int, float]) -> dict[str, HookFn]:
    """Hooks that fix MLP neurons of `layer` (neuron -> activation) at every position."""
    ids = torch.tensor(list(values))
    vals = torch.tensor(list(values.values()))

    def fn(acts: torch.Tensor) -> torch.Tensor:
        acts = acts.clone()
        acts[..., ids.to(acts.device)] = vals.to(acts.device, acts.dtype)
        return acts

    return {hook_name("mlp_post", layer): fn}


# Short names whose activations are one vector per token ([B, T, width]): what an SAE or a steering
# direction can work on (q, k, v, z and the pattern are per head).
STREAM_NAMES = ("embed", "resid_pre", "attn_out", "resid_mid", "mlp_post", "mlp_out", "resid_post", "final")


def stream_hook(spec: str, n_layer: int) -> str:
    """The hook point named by `spec`, one vector per token: a full name (``blocks.2.hook_resid_post``),
    the same without ``hook_`` (``blocks.2.resid_post``), or ``embed`` / ``final``."""
    parts = spec.strip().split(".")
    if len(parts) == 3 and parts[0] == "blocks" and parts[1].lstrip("-").isdigit():
        layer, short = int(parts[1]), parts[2].removeprefix("hook_")
    elif len(parts) == 4 and parts[0] == "blocks" and parts[1].isdigit() and parts[2:] == ["mlp", "hook_post"]:
        layer, short = int(parts[1]), "mlp_post"
    elif len(parts) == 1 and parts[0].removeprefix("hook_") in MODEL_HOOKS:
        return hook_name(parts[0].removeprefix("hook_"))
    else:
        layer, short = -1, ""
    if short not in STREAM_NAMES or short in MODEL_HOOKS or not 0 <= layer < n_layer:
        raise ValueError(f"hook {spec!r}: expected blocks.L.NAME with L in 0..{n_layer - 1} and NAME one of "
                         f"{', '.join(n for n in STREAM_NAMES if n not in MODEL_HOOKS)} (or embed, final)")
    return hook_name(short, layer)
