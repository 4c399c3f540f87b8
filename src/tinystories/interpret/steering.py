"""Steering directions: a vector to add at a hook point, from an SAE feature or a saved file.

`steering_direction(spec)` -> ``(hook, vector)``: our hook point name (e.g.
``blocks.2.hook_resid_post``) and a float32 vector [d] on the CPU. `spec` is one of:

* ``SAE_FOLDER:FEATURE``: row FEATURE of the decoder of an SAE in SAELens's format
  (`tinystories interpret sae`), **unit-normalised** (L2 norm 1), so that alpha is a length
  in the activation space (compare it with the stream's typical norm at that hook). The
  hook is the one the SAE reads.
* ``FILE.pt``: a dict ``{"hook": NAME, "vector": tensor [d]}`` (`save_direction` writes one);
  the vector is returned **as saved** (raw: a difference of means keeps its length).
* ``FILE.npy@HOOK`` (or ``FILE.pt@HOOK``): a bare array [d], at hook point HOOK (a .npy
  holds no name); raw, as saved.

HOOK may be written as `hooks.stream_hook` accepts (``blocks.2.resid_post``) or as
TransformerLens names it. `steering_hooks` / `steered` add ``alpha * vector`` to the activation
at every position of every forward pass, through the model's own hook points
(`hooks.patched`): sampling, scoring and the KV-cached decode steps all see it.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from tinystories.errors import TinyStoriesError
from tinystories.interpret.hooks import HookFn, patched, stream_hook
from tinystories.model.gpt import GPT

FEATURE = re.compile(r"^(?P<folder>.+):(?P<feature>\d+)$")
MAX_LAYERS = 1 << 20  # hook names are checked against a model only when applied


def _hook(name: str) -> str:
    """A hook spec in our naming (validated for shape only; the layer is checked when applied)."""
    try:
        return stream_hook(name, MAX_LAYERS)
    except ValueError:
        pass
    from tinystories.interpret.transformer_lens import our_hook_name

    return our_hook_name(name)  # TransformerLens's name, or a one-line error


def steering_direction(spec: str) -> tuple[str, torch.Tensor]:
    """(our hook point name, vector [d] float32 on the CPU) named by `spec` (see the module doc)."""
    path_part, _, hook_part = spec.partition("@")
    m = FEATURE.match(path_part)
    if m and Path(m["folder"]).is_dir():
        if hook_part:
            raise TinyStoriesError(f"steering {spec!r}: an SAE feature's hook is the SAE's; drop @{hook_part}")
        from tinystories.interpret.features import load_sae

        sae, sae_hook = load_sae(m["folder"])
        feature = int(m["feature"])
        if feature >= sae.cfg.d_sae:
            raise TinyStoriesError(f"steering {spec!r}: the SAE has features 0..{sae.cfg.d_sae - 1}")
        row = sae.W_dec.detach()[feature].float().cpu()
        return sae_hook, row / row.norm().clamp(min=1e-12)
    path = Path(path_part)
    if not path.is_file():
        raise TinyStoriesError(f"steering {spec!r}: expected SAE_FOLDER:FEATURE, FILE.pt or FILE.npy@HOOK "
                               f"(no such file or SAE folder: {path_part})")
    hook: str | None = hook_part or None
    if path.suffix == ".npy":
        try:
            vector = torch.from_numpy(np.load(path, allow_pickle=False)).float()
        except ValueError as exc:
            raise TinyStoriesError(f"{path}: not a numpy array file ({exc})") from exc
    elif path.suffix == ".pt":
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many kinds on a bad file
            raise TinyStoriesError(f"{path}: not a direction file written by torch.save ({exc})") from exc
        if isinstance(data, dict):
            hook = hook or data.get("hook")
            data = data.get("vector")
        if not isinstance(data, torch.Tensor):
            raise TinyStoriesError(f"{path}: expected {{'hook': NAME, 'vector': tensor}} or a tensor")
        vector = data.float()
    else:
        raise TinyStoriesError(f"steering {spec!r}: a direction file is .pt or .npy")
    if not hook:
        raise TinyStoriesError(f"steering {spec!r}: the file names no hook point; write FILE@HOOK, "
                               "e.g. dir.npy@blocks.2.resid_post")
    if vector.dim() != 1 or not torch.isfinite(vector).all():
        raise TinyStoriesError(f"{path}: a direction is one finite vector [d], got shape {tuple(vector.shape)}")
    return _hook(hook), vector


def save_direction(path: str | Path, hook: str, vector: torch.Tensor) -> None:
    """Write a direction file that `steering_direction` reads (``{"hook", "vector"}``, torch.save)."""
    from tinystories.utils import atomic_write

    with atomic_write(path, "wb") as f:
        torch.save({"hook": _hook(hook), "vector": vector.detach().float().cpu()}, f)


def steering_hooks(model: GPT, directions: Sequence[tuple[str, torch.Tensor, float]]) -> dict[str, HookFn]:
    """Hooks (for `hooks.patched`) adding ``alpha * vector`` at each (hook, vector, alpha), at every
    position; several on one hook point add up. A hook the model lacks, or a vector of the wrong
    width, is a one-line error."""
    points = model.hook_points()
    total: dict[str, torch.Tensor] = {}
    for hook, vector, alpha in directions:
        try:
            name = hook if hook in points else stream_hook(hook, model.cfg.n_layer)
        except ValueError as exc:
            raise TinyStoriesError(f"steering: {exc}") from None
        width = model.cfg.ffn_dim if name.endswith("mlp.hook_post") else model.cfg.d_model
        if vector.shape != (width,):
            raise TinyStoriesError(f"steering vector for {name} has shape {tuple(vector.shape)}; the model's "
                                   f"activations there are {width} wide")
        total[name] = total.get(name, 0) + alpha * vector.detach().float()

    def add(v: torch.Tensor) -> HookFn:
        return lambda x: x + v.to(x.device, x.dtype)

    return {name: add(v) for name, v in total.items()}


@contextlib.contextmanager
def steered(model: GPT, directions: Sequence[tuple[str, torch.Tensor, float]]) -> Iterator[None]:
    """Within the block, this thread's forward passes of `model` are steered (see `steering_hooks`)."""
    with patched(model, steering_hooks(model, directions)):
        yield
