"""The decode step in C (`decode_step.c`), built once per machine by `cbuild` (shared ground).

`DecodeStep` (model/gpt.py) runs it for float32 models on the CPU when it could be built, and
runs its PyTorch operations otherwise; both are pinned to `GPT.forward` by the tests. Why C:
a decode step at the 15M shape is ~60 MB of weights read once and a few hundred small
operations, and each PyTorch operation costs microseconds of dispatch, which at one row was
as much time as the arithmetic (bench/README.md). ``TINYSTORIES_NATIVE=0`` turns it off;
`why_not` says why it is unavailable.
"""

from __future__ import annotations

import ctypes
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from tinystories import cbuild

if TYPE_CHECKING:
    from tinystories.model.gpt import GPT

SOURCE = Path(__file__).with_name("decode_step.c")
ACTS = {"gelu": 0, "swiglu": 1, "relu2": 2}
POINTS = ("hook_resid_pre", "hook_attn_out", "hook_resid_mid", "hook_mlp_out", "hook_resid_post")
_F = ctypes.POINTER(ctypes.c_float)


_LAYER_POINTERS = ("norm1_w", "norm1_b", "qkv", "out", "out_b", "q_norm", "k_norm", "norm2_w", "norm2_b", "fc",
                   "fc_b", "proj", "proj_b")
_MODEL_INTS = ("n_layer", "n_head", "head_dim", "d_model", "ffn", "vocab", "context", "act", "layer_norm", "threads")
_MODEL_POINTERS = ("tok_emb", "pos_emb", "rope_cos", "rope_sin", "norm_w", "norm_b", "head")


class _Layer(ctypes.Structure):  # decode_step.c's Layer, field for field
    _fields_ = [*((name, _F) for name in _LAYER_POINTERS), ("scale", ctypes.c_float),  # type: ignore[assignment]
                ("window", ctypes.c_int)]


class _Model(ctypes.Structure):  # decode_step.c's Model
    _fields_ = [*((name, ctypes.c_int) for name in _MODEL_INTS), ("eps", ctypes.c_float),  # type: ignore[assignment]
                ("qk_eps", ctypes.c_float), *((name, _F) for name in _MODEL_POINTERS),
                ("layers", ctypes.POINTER(_Layer))]


_why_not = ""


def why_not() -> str:
    """Why the C step is not in use ("" when it is)."""
    library()
    return _why_not


@cache
def library() -> ctypes.CDLL | None:
    """The built step, or None (then `why_not` says why)."""
    global _why_not
    lib, _why_not = cbuild.load(SOURCE)
    if lib is None:
        return None
    lib.decode_step.restype = None
    lib.decode_step.argtypes = [ctypes.POINTER(_Model), ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
                                ctypes.c_int, _F, _F, ctypes.c_int, ctypes.c_void_p, _F, _F]
    lib.scratch_floats.restype = ctypes.c_long
    lib.scratch_floats.argtypes = [ctypes.POINTER(_Model), ctypes.c_int, ctypes.c_int]
    return lib


def _param(module: torch.nn.Module, name: str) -> torch.Tensor | None:
    """A norm's weight or bias (RMSNorm has no bias)."""
    t = getattr(module, name, None)
    return t if isinstance(t, torch.Tensor) else None


def _ptr(t: torch.Tensor | None) -> ctypes._Pointer | None:  # type: ignore[type-arg]
    return None if t is None else ctypes.cast(t.data_ptr(), _F)


class NativeStep:
    """The C step over `model`'s weights (float32, CPU, contiguous): `step` as `DecodeStep.step`.

    Holds the tensors it points into (the fused SwiGLU input matrix is the one copy it makes)."""

    def __init__(self, model: GPT, lib: ctypes.CDLL, rope: tuple[torch.Tensor, torch.Tensor] | None) -> None:
        cfg = model.cfg
        self.lib, self.cfg = lib, cfg
        keep: list[torch.Tensor] = []

        def p(t: torch.Tensor | None) -> ctypes._Pointer | None:  # type: ignore[type-arg]
            if t is None:
                return None
            t = t.detach().contiguous()
            keep.append(t)
            return _ptr(t)

        layers = (_Layer * cfg.n_layer)()
        for L, block in zip(layers, model.layers()):
            a, m = block.attn, block.mlp
            fc = torch.cat([m.gate.weight, m.up.weight]) if m.activation == "swiglu" else m.fc.weight
            L.norm1_w, L.norm1_b = p(_param(block.norm1, "weight")), p(_param(block.norm1, "bias"))
            L.qkv, L.out, L.out_b = p(a.qkv.weight), p(a.out.weight), p(a.out.bias)
            L.q_norm = p(a.q_norm.weight) if a.q_norm is not None else None
            L.k_norm = p(a.k_norm.weight) if a.k_norm is not None else None
            L.norm2_w, L.norm2_b = p(_param(block.norm2, "weight")), p(_param(block.norm2, "bias"))
            L.fc, L.fc_b = p(fc), p(None if m.activation == "swiglu" else m.fc.bias)
            L.proj, L.proj_b = p(m.proj.weight), p(m.proj.bias)
            L.scale, L.window = a.scale, a.window
        self.model = _Model(
            n_layer=cfg.n_layer, n_head=cfg.n_head, head_dim=cfg.head_dim, d_model=cfg.d_model, ffn=cfg.ffn_dim,
            vocab=cfg.vocab_size, context=cfg.context_length, act=ACTS[model.layers()[0].mlp.activation],
            layer_norm=int(cfg.arch == "neo"), threads=1, eps=cfg.norm_eps, qk_eps=cfg.norm_eps,
            tok_emb=p(model.tok_emb.weight), pos_emb=p(model.pos_emb.weight if model.pos_emb is not None else None),
            rope_cos=p(rope[0] if rope else None), rope_sin=p(rope[1] if rope else None),
            norm_w=p(_param(model.norm, "weight")), norm_b=p(_param(model.norm, "bias")), head=p(model.lm_head.weight),
            layers=layers)
        self.keep, self.layers = keep, layers
        self.scratch = torch.empty(0)

    def step(self, tokens: torch.Tensor, cache_k: torch.Tensor, cache_v: torch.Tensor, slot: int,
             pad: torch.Tensor | None, adds: dict[str, torch.Tensor]) -> torch.Tensor:
        cfg = self.cfg
        B = tokens.shape[0]
        assert cache_k.is_contiguous() and cache_v.is_contiguous() and cache_k.shape[1] == B
        tokens = tokens.contiguous()
        pad = pad.contiguous() if pad is not None else None
        self.model.threads = torch.get_num_threads()
        need = self.lib.scratch_floats(ctypes.byref(self.model), B, slot + 1)
        if self.scratch.numel() < need:
            self.scratch = torch.empty(need)
        table = None
        if adds:
            names = ["hook_embed"] + [f"blocks.{i}.{point}" for i in range(cfg.n_layer) for point in POINTS]
            held = {name: adds[name].float().contiguous() for name in adds}
            table = (ctypes.c_void_p * len(names))(*[held[n].data_ptr() if n in held else None for n in names])
        logits = torch.empty(B, cfg.vocab_size)
        self.lib.decode_step(ctypes.byref(self.model), B, tokens.data_ptr(), None if pad is None else pad.data_ptr(),
                             slot, _ptr(cache_k), _ptr(cache_v), cache_k.shape[3], table, _ptr(logits),
                             _ptr(self.scratch))
        return logits
