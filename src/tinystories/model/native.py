"""The decode step in C (`decode_step.c`), built once per machine by `cbuild` (shared ground).

`DecodeStep` (model/decode.py) runs it for float32 models on the CPU when it could be built, and
runs its PyTorch operations otherwise; both are pinned to `GPT.forward` by the tests. Why C:
a decode step at the 15M shape is ~60 MB of weights read once and a few hundred small
operations, and each PyTorch operation costs microseconds of dispatch, which at one row was
as much time as the arithmetic (bench/README.md). ``TINYSTORIES_NATIVE=0`` turns it off;
`why_not` says why it is unavailable.
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import threading
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from tinystories import cbuild

if TYPE_CHECKING:
    from tinystories.model.gpt import GPT

SOURCE = Path(__file__).with_name("decode_step.c")
ACTS = {"gelu": 0, "swiglu": 1, "relu2": 2}
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
                ("head16", ctypes.c_void_p), ("head_err", _F), ("layers", ctypes.POINTER(_Layer))]


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
                                ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int,
                                ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
                                ctypes.c_void_p, ctypes.c_void_p]  # addresses as ints: no casts
    lib.scratch_floats.restype = ctypes.c_long
    lib.scratch_floats.argtypes = [ctypes.POINTER(_Model), ctypes.c_int, ctypes.c_int]
    lib.addition_points.restype = ctypes.c_int
    lib.addition_points.argtypes = []
    return lib


def _param(module: torch.nn.Module, name: str) -> torch.Tensor | None:
    """A norm's weight or bias (RMSNorm has no bias)."""
    t = getattr(module, name, None)
    return t if isinstance(t, torch.Tensor) else None


def _ptr(t: torch.Tensor | None) -> ctypes._Pointer | None:  # type: ignore[type-arg]
    return None if t is None else ctypes.cast(t.data_ptr(), _F)


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
    [ceil(panels / group), in, group, 16], zeros past `out` (`panel_rows16` reads it)."""
    p = panels(bfloat16(weight))
    p = torch.cat([p, p.new_zeros(-p.shape[0] % group, *p.shape[1:])])
    return p.view(-1, group, *p.shape[1:]).transpose(1, 2).contiguous()


class _Arena:
    """Room for the step's weights: one anonymous mapping, which the kernel backs with 2 MB pages
    where it can (madvise MADV_HUGEPAGE; transparent huge pages in "madvise" mode, as many Linux
    machines set them). Streaming 60 MB of weights a token through 4 KB pages cost more time:
    figures in bench/README.md, "History" (Zen 4 AMD EPYC, 2026-12-04)."""

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

    def put(self, t: torch.Tensor) -> torch.Tensor:
        """A copy of `t` in the arena, 64-byte aligned."""
        n = t.element_size() * t.numel()
        assert self.used + n <= self.bytes.numel(), "the arena was sized too small"
        copy = self.bytes[self.used:self.used + n].view(t.dtype).view(t.shape)
        copy.copy_(t)
        self.used += -(-n // 64) * 64
        return copy


class NativeStep:
    """The C step over a copy of `model`'s weights (float32, CPU): `step` as `DecodeStep.step`.

    The copy sits in one `_Arena`, in the order the step reads it (as llama2.c's run.c reads its
    checkpoint file), each linear layer's weight in `panels`. The token embedding table is not
    copied: a step reads one row of it per token, and the model's own table serves (with tied
    embeddings the output layer's panels are the copy). The output layer also goes in bfloat16
    (`interleaved`, with its `rounding_radius`), for steps that want only the most likely token
    (`DecodeStep.argmax`): 18 MB more at the 15M shape. `decode.decode_step` makes a new step when
    the model's weights change.

    One step serves every thread that decodes the model (two engines, a server and a script), so
    what a call writes besides the cache, its scratch and its thread count, is each thread's own
    (`_mine`): shared, two calls at once would write into each other's activations."""

    def __init__(self, model: GPT, lib: ctypes.CDLL, rope: tuple[torch.Tensor, torch.Tensor] | None) -> None:
        cfg = model.cfg
        self.lib, self.cfg = lib, cfg
        floats = sum(t.numel() for t in model.parameters()) + (2 * rope[0].numel() if rope else 0)
        pad = 16 * max(cfg.d_model, cfg.ffn_dim) * (4 * cfg.n_layer + 1)  # panels round outputs up to 16
        head = model.lm_head.weight.detach()
        head_floats = -(-cfg.vocab_size // 64) * 32 * cfg.d_model + cfg.vocab_size  # `interleaved` and `rounding_radius`
        arena = self.arena = _Arena(4 * (floats + pad + head_floats) + 64 * (16 * cfg.n_layer + 20))
        self.tok_emb = model.tok_emb.weight.detach().contiguous()  # held: the step points into it

        def p(t: torch.Tensor | None) -> ctypes._Pointer | None:  # type: ignore[type-arg]
            return None if t is None else _ptr(arena.put(t.detach()))

        def w(t: torch.Tensor) -> ctypes._Pointer | None:  # type: ignore[type-arg]
            return _ptr(arena.put(panels(t.detach())))

        layers = (_Layer * cfg.n_layer)()
        for L, block in zip(layers, model.layers()):
            a, m = block.attn, block.mlp
            fc = torch.cat([m.gate.weight, m.up.weight]) if m.activation == "swiglu" else m.fc.weight
            L.norm1_w, L.norm1_b = p(_param(block.norm1, "weight")), p(_param(block.norm1, "bias"))
            L.qkv, L.out, L.out_b = w(a.qkv.weight), w(a.out.weight), p(a.out.bias)
            L.q_norm = p(a.q_norm.weight) if a.q_norm is not None else None
            L.k_norm = p(a.k_norm.weight) if a.k_norm is not None else None
            L.norm2_w, L.norm2_b = p(_param(block.norm2, "weight")), p(_param(block.norm2, "bias"))
            L.fc, L.fc_b = w(fc), p(None if m.activation == "swiglu" else m.fc.bias)
            L.proj, L.proj_b = w(m.proj.weight), p(m.proj.bias)
            L.scale, L.window = a.scale, a.window
        self.model = _Model(  # what each thread copies (`_mine`)
            n_layer=cfg.n_layer, n_head=cfg.n_head, head_dim=cfg.head_dim, d_model=cfg.d_model, ffn=cfg.ffn_dim,
            vocab=cfg.vocab_size, context=cfg.context_length, act=ACTS[model.layers()[0].mlp.activation],
            layer_norm=int(cfg.arch == "neo"), threads=1, eps=cfg.norm_eps, qk_eps=cfg.norm_eps,
            tok_emb=_ptr(self.tok_emb), pos_emb=p(model.pos_emb.weight if model.pos_emb is not None else None),
            rope_cos=p(rope[0] if rope else None), rope_sin=p(rope[1] if rope else None),
            norm_w=p(_param(model.norm, "weight")), norm_b=p(_param(model.norm, "bias")), head=w(head),
            head16=arena.put(interleaved(head)).data_ptr(), head_err=p(rounding_radius(head)),
            layers=layers)
        self.layers = layers  # held: each thread's copy of `model` points into it
        self.local = threading.local()

    def _mine(self, rows: int) -> tuple[ctypes._CArgObject, torch.Tensor]:
        """This thread's copy of the C `Model` (its `threads` field set to this thread's torch
        threads) and its scratch, room for `rows` rows or more."""
        mine = self.local
        if not hasattr(mine, "model"):
            mine.model = _Model.from_buffer_copy(self.model)
            mine.ref = ctypes.byref(mine.model)
            mine.scratch, mine.scratch_for = torch.empty(0), (0, 0)  # room for this many rows and threads
        threads = mine.model.threads = torch.get_num_threads()
        if rows > mine.scratch_for[0] or threads > mine.scratch_for[1]:
            mine.scratch_for = (max(rows, mine.scratch_for[0]), max(threads, mine.scratch_for[1]))
            mine.scratch = torch.empty(self.lib.scratch_floats(mine.ref, *mine.scratch_for))
        return mine.ref, mine.scratch

    def step(self, tokens: torch.Tensor, cache_k: torch.Tensor, cache_v: torch.Tensor, slot: int,
             pad: torch.Tensor | None, adds: list[torch.Tensor | None] | None, best: torch.Tensor | None,
             head: bool = True, at: torch.Tensor | None = None, out: torch.Tensor | None = None
             ) -> torch.Tensor | None:
        """decode_step.c's step; `adds`: None, or [B, width] additions (None = none) in its order:
        hook_embed, then each block's `decode.ADDABLE` points. `head=False`: no logits; with `best`
        only each row's most likely token (`argmax_pruned`), else no output layer. A prefill
        (`DecodeStep.prefill`): `at` [B, 2], each row's cache row and slot (else row b is cache row
        b at `slot`), and `out`, the rows whose logits are wanted (else all)."""
        cfg = self.cfg
        B = tokens.shape[0]
        assert cache_k.is_contiguous() and cache_v.is_contiguous() and (
            cache_k.shape[1] == B if at is None else at.shape == (B, 2))  # at's rows: `DecodeStep.prefill` checks
        tokens = tokens.contiguous()
        pad = pad.contiguous() if pad is not None else None
        at = at.contiguous() if at is not None else None
        out = out.contiguous() if out is not None else None
        ref, scratch = self._mine(B)
        table = None
        if adds:
            held = [None if a is None else a.float().contiguous() for a in adds]
            table = (ctypes.c_void_p * len(held))(*[None if a is None else a.data_ptr() for a in held])
        logits = torch.empty(B if out is None else out.shape[0], cfg.vocab_size) if head else None
        self.lib.decode_step(ref, B, tokens.data_ptr(), None if at is None else at.data_ptr(),
                             None if pad is None else pad.data_ptr(), slot, cache_k.data_ptr(), cache_v.data_ptr(),
                             cache_k.shape[1], cache_k.shape[3], table, 0 if out is None else out.shape[0],
                             None if out is None else out.data_ptr(), None if logits is None else logits.data_ptr(),
                             None if best is None else best.data_ptr(), scratch.data_ptr())
        return logits
