"""The decode step's C library (`decode_step.c`, built once per machine by `cbuild`) and the
weights laid out as it reads them.

`model/decode.py` calls it; ``TINYSTORIES_NATIVE=0`` turns it off, and `why_not` says why it is
unavailable. Why C: a decode step is the model's weights read once and a few hundred small
operations, and each PyTorch operation costs microseconds of dispatch, which at one row was as
much time as the arithmetic (bench/README.md).
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from tinystories import cbuild

if TYPE_CHECKING:
    from tinystories.model.gpt import GPT

SOURCE = Path(__file__).with_name("decode_step.c")
ACTS = {"gelu": 0, "swiglu": 1, "relu2": 2}
POINTS = 6  # addition points a layer (decode.ADDABLE; decode_step.c's POINTS)
_P = ctypes.c_void_p  # addresses passed as ints: no casts

_LAYER_POINTERS = ("norm1_w", "norm1_b", "qkv", "out", "out_b", "q_norm", "k_norm", "norm2_w", "norm2_b", "fc",
                   "fc_b", "proj", "proj_b")
_MODEL_INTS = ("n_layer", "n_head", "head_dim", "d_model", "ffn", "vocab", "context", "act", "layer_norm", "threads")
_MODEL_POINTERS = ("tok_emb", "pos_emb", "rope_cos", "rope_sin", "norm_w", "norm_b", "head", "head16", "head_err")


class Layer(ctypes.Structure):  # decode_step.c's Layer, field for field
    _fields_ = [*((name, _P) for name in _LAYER_POINTERS), ("scale", ctypes.c_float),  # type: ignore[assignment]
                ("window", ctypes.c_int)]


class Model(ctypes.Structure):  # decode_step.c's Model
    _fields_ = [*((name, ctypes.c_int) for name in _MODEL_INTS), ("eps", ctypes.c_float),  # type: ignore[assignment]
                ("qk_eps", ctypes.c_float), *((name, _P) for name in _MODEL_POINTERS),
                ("layers", ctypes.POINTER(Layer))]


class Cache(ctypes.Structure):  # decode_step.c's Cache
    _fields_ = [("k", _P), ("v", _P), ("pad", _P), ("rows", ctypes.c_int), ("len", ctypes.c_int)]


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
    model, cache_ = ctypes.POINTER(Model), ctypes.POINTER(Cache)
    lib.step.argtypes = [model, ctypes.c_int, _P, ctypes.c_int, cache_, _P, _P, _P]
    lib.argmax.argtypes = [model, ctypes.c_int, _P, ctypes.c_int, cache_, _P, _P, _P]
    lib.prefill.argtypes = [model, ctypes.c_int, _P, _P, cache_, _P, ctypes.c_int, _P, _P, _P]
    lib.step.restype = lib.argmax.restype = lib.prefill.restype = None
    lib.scratch_floats.restype, lib.scratch_floats.argtypes = ctypes.c_long, [model, ctypes.c_int]
    lib.addition_points.restype, lib.addition_points.argtypes = ctypes.c_int, []
    if lib.addition_points() != POINTS:
        raise RuntimeError(f"decode_step.c has {lib.addition_points()} addition points a layer, native.py "
                           f"{POINTS}: change both together")
    return lib


def bfloat16(weight: torch.Tensor) -> torch.Tensor:
    """`weight` rounded to bfloat16, its denormal values to zero: a thread that reads denormals as
    zero (``torch.set_flush_denormal``) would drop them from the float32 sum while their bfloat16
    copies, rounded up to the smallest normal number, still counted (`rounding_radius`)."""
    w = weight.detach()
    return w.masked_fill(w.abs() < torch.finfo(w.dtype).tiny, 0).to(torch.bfloat16)


def rounding_radius(weight: torch.Tensor) -> torch.Tensor:
    """Per output row j of `weight` [out, in]: r_j such that, for any input x, the row's logit
    computed in float32 from its bfloat16 copy is within r_j * |x| of the one computed in float32
    from the weight itself (`argmax_pruned` in decode_step.c), whatever order either sum takes.

    |(w - w16) . x| <= |w - w16| |x| (Cauchy-Schwarz), and a float32 sum of n products is within
    gamma_n sum |w_i x_i| <= gamma_n |w| |x| of the exact one (gamma_n = n u / (1 - n u), u = 2^-24),
    once for each of the two sums. The margins on top (1%, and 2^-20 of the row's size) cover the
    rounding of |x| and of the comparisons made with the radius. In float64, where no square of
    a float32 underflows; rounded up to float32, and to its smallest normal number at least (a
    denormal radius could be read as zero)."""
    w = weight.detach().double()
    w16 = bfloat16(weight).double()
    n = w.shape[1]
    gamma = n * 2.0**-24 / (1 - n * 2.0**-24)
    size = w.norm(dim=1) + w16.norm(dim=1)
    r = ((w - w16).norm(dim=1) + gamma * size) * 1.01 + 2.0**-20 * size
    r32 = r.float()
    r32 = torch.where(r32.double() < r, torch.nextafter(r32, torch.tensor(float("inf"))), r32)
    return r32.clamp(min=torch.finfo(torch.float32).tiny)


def panels(weight: torch.Tensor) -> torch.Tensor:
    """A linear layer's weight [out, in] as decode_step.c's `gemv` reads it: 16 output rows side
    by side, [ceil(out / 16), in, 16], zeros past `out`."""
    out, n_in = weight.shape
    padded = weight.new_zeros(-(-out // 16) * 16, n_in)
    padded[:out] = weight
    return padded.view(-1, 16, n_in).transpose(1, 2).contiguous()


def interleaved(weight: torch.Tensor, group: int = 4) -> torch.Tensor:
    """`panels` in bfloat16, each `group` of panels (decode_step.c's PANELS) interleaved:
    [ceil(panels / group), in, group, 16], zeros past `out` (`panel_row16` reads it)."""
    p = panels(bfloat16(weight))
    p = torch.cat([p, p.new_zeros(-p.shape[0] % group, *p.shape[1:])])
    return p.view(-1, group, *p.shape[1:]).transpose(1, 2).contiguous()


class _Arena:
    """Room for the step's weights: one anonymous mapping, which the kernel backs with 2 MB pages
    where it can (madvise MADV_HUGEPAGE; transparent huge pages in "madvise" mode, as many Linux
    machines set them). A step streams its weights from memory at every token, and through 4 KB
    pages that took longer (bench/README.md)."""

    HUGE = 2 << 20

    def __init__(self, nbytes: int) -> None:
        try:  # private: shared anonymous memory would follow the shmem setting, mostly "never"
            self.map = mmap.mmap(-1, nbytes + self.HUGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        except (AttributeError, TypeError):  # Windows: plain memory
            self.bytes = torch.empty(nbytes + self.HUGE, dtype=torch.uint8)
        else:
            with contextlib.suppress(AttributeError, OSError):  # no madvise here, or no huge pages
                self.map.madvise(mmap.MADV_HUGEPAGE)
            self.bytes = torch.frombuffer(self.map, dtype=torch.uint8)
        self.used = -self.bytes.data_ptr() % self.HUGE  # start on a 2 MB boundary

    @staticmethod
    def room(t: torch.Tensor) -> int:
        """Bytes `put` takes for `t` (64-byte aligned)."""
        return -(-t.element_size() * t.numel() // 64) * 64

    def put(self, t: torch.Tensor) -> int:
        """The address of a copy of `t` in the arena."""
        n = t.element_size() * t.numel()
        self.bytes[self.used:self.used + n].view(t.dtype).view(t.shape).copy_(t)
        self.used += self.room(t)
        return self.bytes.data_ptr() + self.used - self.room(t)


class Weights:
    """`model`'s weights (float32, CPU) as decode_step.c's `Model` reads them: each linear layer's
    weight in `panels`, the output layer also in bfloat16 (`interleaved`, with its
    `rounding_radius`: half the output layer's bytes more) for `argmax`. A copy, in one `_Arena`,
    but for the token embedding table: a step reads one row of it a token, from the model's own."""

    def __init__(self, model: GPT, rope: tuple[torch.Tensor, torch.Tensor] | None) -> None:
        cfg = model.cfg
        copies: list[tuple[ctypes.Structure, str, torch.Tensor]] = []  # (struct, field, what it points to)

        def put(struct: ctypes.Structure, **fields: torch.Tensor | None) -> None:
            copies.extend((struct, name, t.detach().contiguous()) for name, t in fields.items() if t is not None)

        def norm(module: torch.nn.Module, name: str) -> torch.Tensor | None:  # RMSNorm has no bias
            t = getattr(module, name, None)
            return t if isinstance(t, torch.Tensor) else None

        self.layers = (Layer * cfg.n_layer)()
        for L, block in zip(self.layers, model.layers()):
            a, m = block.attn, block.mlp
            fc = torch.cat([m.gate.weight, m.up.weight]) if m.activation == "swiglu" else m.fc.weight
            put(L, norm1_w=norm(block.norm1, "weight"), norm1_b=norm(block.norm1, "bias"),
                qkv=panels(a.qkv.weight.detach()), out=panels(a.out.weight.detach()), out_b=a.out.bias,
                q_norm=a.q_norm.weight if a.q_norm is not None else None,
                k_norm=a.k_norm.weight if a.k_norm is not None else None,
                norm2_w=norm(block.norm2, "weight"), norm2_b=norm(block.norm2, "bias"), fc=panels(fc.detach()),
                fc_b=None if m.activation == "swiglu" else m.fc.bias, proj=panels(m.proj.weight.detach()),
                proj_b=m.proj.bias)
            L.scale, L.window = a.scale, a.window
        self.tok_emb = model.tok_emb.weight.detach().contiguous()  # held: the step points into it
        self.struct = Model(  # each thread decodes with its own copy (`decode.DecodeStep`)
            n_layer=cfg.n_layer, n_head=cfg.n_head, head_dim=cfg.head_dim, d_model=cfg.d_model, ffn=cfg.ffn_dim,
            vocab=cfg.vocab_size, context=cfg.context_length, act=ACTS[model.layers()[0].mlp.activation],
            layer_norm=int(cfg.arch == "neo"), threads=1, eps=cfg.norm_eps, qk_eps=cfg.norm_eps,
            tok_emb=self.tok_emb.data_ptr(), layers=self.layers)
        head = model.lm_head.weight.detach()
        put(self.struct, pos_emb=model.pos_emb.weight if model.pos_emb is not None else None,
            rope_cos=rope[0] if rope else None, rope_sin=rope[1] if rope else None,
            norm_w=norm(model.norm, "weight"), norm_b=norm(model.norm, "bias"), head=panels(head),
            head16=interleaved(head), head_err=rounding_radius(head))
        self.arena = _Arena(sum(_Arena.room(t) for _, _, t in copies))
        for struct, name, t in copies:  # in the order the step reads them
            setattr(struct, name, self.arena.put(t))
