"""A GPT for tiny story models, readable top to bottom.

Two architectures share this file:

* ``neo``: the paper's models (GPT-Neo style): learned absolute positions, LayerNorm,
  GELU MLP, attention scores *not* scaled by 1/sqrt(head_dim) (as GPT-Neo does), and
  optionally local attention on every second layer. Exports to ``GPTNeoForCausalLM``.
* ``modern``: rotary positions (RoPE), RMSNorm and a SwiGLU MLP, no biases, as in
  Llama / llama2.c. Exports to ``LlamaForCausalLM``. Options for new recipes: a ReLU²
  MLP (``mlp="relu2"``), RMS-normalised queries and keys (``qk_norm``), and output
  projections that start at zero (``zero_init_proj``).

Hook points. Every activation worth looking at passes through a `HookPoint`, an identity
module named by its place (``blocks.0.attn.hook_pattern``, ``blocks.1.mlp.hook_post``), as
in TransformerLens. A forward hook registered on one reads the activation, or returns a
replacement that the rest of the forward pass then uses: recording, patching and the
forward pass are one code path (`tinystories.interpret.hooks` builds on this). With no hook
registered they cost a function call. The attention pattern exists only when someone
listens: then attention runs as explicit ``softmax(q k^T * scale + mask) @ v`` instead of
the fused kernel; the tests check both give the same output.

Generation uses a key/value cache (`KVCache`). Prompts of different lengths are
left-padded; `pad` gives each row's number of padding slots, which attention masks out
and positions skip, so a padded row computes exactly what it would alone. `DecodeStep` (at
the end) is this model specialised to one new token per row, made of the same modules and
functions, and run in C where it can be (`decode_step.c`, loaded by `native.py`); the tests pin
both to `forward`. Whoever changes the model here changes `decode_step.c` too, and the tests
say so if not.
"""

from __future__ import annotations

import contextlib
import math
import threading
import weakref
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tinystories.model.config import GPTConfig
from tinystories.model.losses import linear_cross_entropy
from tinystories.utils import inference

__all__ = ["GPT", "DecodeStep", "GPTConfig", "HookPoint", "KVCache"]


class KVCache:
    """Preallocated keys and values of every layer for a batch being generated.

    Slots 0..length-1 are filled in every row; row r's first `pad[r]` slots are padding
    (its prompt was shorter), which attention never reads. The model only appends to it;
    the batch surgery a continuous-batching engine needs (rows joining, leaving, compaction)
    is the engine's cache manager's (`tinystories.infer.cache_manager`).
    """

    def __init__(self, cfg: GPTConfig, batch: int, max_len: int, device: torch.device,
                 dtype: torch.dtype, pad: torch.Tensor | None = None) -> None:
        shape = (cfg.n_layer, batch, cfg.n_head, max_len, cfg.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0  # slots filled so far (the same for every row)
        self.pad = pad

    @property
    def batch(self) -> int:
        return self.k.shape[1]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.length + k.shape[2]
        self.k[layer, :, :, self.length:end] = k
        self.v[layer, :, :, self.length:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]



# Held while a hook is added or removed with its count, and while `HookPoint.active` compares
# them: otherwise another thread could see one without the other, and take a hook meant for every
# thread for one of `hooked`'s (skipping it), or one of those for one meant for every thread.
_HOOKING = threading.Lock()


class HookPoint(nn.Module):
    """The identity, at a named place in the forward pass, for hooks to read or replace.

    Hooks added with `GPT.hooked` act only on the forward passes of the thread that added
    them (`scoped` counts them per thread): a server runs one model for many clients, and
    one client's recording or steering must neither see nor change another's.
    """

    def __init__(self) -> None:
        super().__init__()
        self.scoped: Counter[int] = Counter()  # thread id -> hooks `GPT.hooked` added for that thread

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    @property
    def active(self) -> bool:
        """Whether a hook listens here on this thread (the attention pattern is only computed then)."""
        with _HOOKING:  # hooks and their count change together (`GPT.hooked`)
            hooks = len(self._forward_hooks) + len(self._forward_pre_hooks)
            if not hooks:
                return False
            return hooks > self.scoped.total() or self.scoped[threading.get_ident()] > 0


def attention_mask(start: int, q_len: int, k_len: int, pad: torch.Tensor | None,
                   window: int, device: torch.device) -> torch.Tensor | None:
    """Boolean mask [B or 1, 1, q_len, k_len] (True = may attend), or None when plain causal.

    Query t sits at slot start+t; key j may be seen if j <= slot, j is not padding, and
    (local layers) slot - j < window.
    """
    needs_window = window and start + q_len > window
    # SDPA's is_causal (start == 0) or a single query (sees every cached key) need no mask.
    if pad is None and not needs_window and (start == 0 or q_len == 1):
        return None
    q = torch.arange(start, start + q_len, device=device)[:, None]
    k = torch.arange(k_len, device=device)[None, :]
    mask = k <= q
    if needs_window:
        mask = mask & (q - k < window)
    mask = mask[None, None]
    if pad is not None:
        mask = mask & (k >= pad[:, None])[:, None, None, :]
    return mask


def additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean mask as 0 / -inf to add to the scores: SDPA's CPU kernel runs ~1.6x faster with it.

    Only for masks where every query sees some key (else its softmax is NaN).
    """
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, float("-inf"))


def attention_probs(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None, scale: float) -> torch.Tensor:
    """softmax(q k^T * scale + mask) [B, H, Tq, Tk] in float32: what SDPA computes inside.

    `mask` is boolean (True = may attend), additive (0 / -inf), or None for plain causal
    attention. A query that may see no key (a padding slot) attends to nothing (all zeros).
    """
    scores = (q.float() @ k.float().transpose(-1, -2)) * scale
    if mask is None:
        Tq, Tk = scores.shape[-2:]
        mask = torch.ones(Tq, Tk, dtype=torch.bool, device=q.device).tril(Tk - Tq)
    scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    return torch.softmax(scores, dim=-1).nan_to_num(0.0)


def rope_tables(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables [B, 1, T, head_dim] in Llama's "rotate half" layout."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=positions.device).float() / head_dim)
    angles = positions.float()[..., None] * inv_freq  # [B, T, head_dim/2]
    angles = torch.cat([angles, angles], dim=-1)[:, None]
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: GPTConfig, layer: int) -> None:
        super().__init__()
        self.cfg, self.layer = cfg, layer
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.out = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.arch == "neo")
        # GPT-Neo leaves scores unscaled; everyone else divides by sqrt(head_dim).
        self.scale = 1.0 if cfg.arch == "neo" else cfg.head_dim ** -0.5
        self.window = cfg.local_window if cfg.arch == "neo" and layer % 2 == 1 else 0
        # QK-norm: per-head RMSNorm of queries and keys keeps attention logits bounded at high LR.
        self.q_norm = nn.RMSNorm(cfg.head_dim, eps=cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = nn.RMSNorm(cfg.head_dim, eps=cfg.norm_eps) if cfg.qk_norm else None
        # [B, H, T, head_dim] per head (q, k after RoPE), the pattern [B, H, Tq, Tk], z = pattern @ v.
        self.hook_q, self.hook_k, self.hook_v = HookPoint(), HookPoint(), HookPoint()
        self.hook_pattern, self.hook_z = HookPoint(), HookPoint()

    def forward(self, x: torch.Tensor, masks: dict[int, torch.Tensor | None], is_causal: bool,
                rope: tuple[torch.Tensor, torch.Tensor] | None, cache: KVCache | None) -> torch.Tensor:
        B, T, _ = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.cfg.n_head, self.cfg.head_dim).permute(2, 0, 3, 1, 4)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        q, k, v = self.hook_q(q), self.hook_k(k), self.hook_v(v)
        if cache is not None:
            k, v = cache.update(self.layer, k, v)
        mask = masks[self.window]
        dropout = self.cfg.dropout if self.training else 0.0
        if self.hook_pattern.active:  # someone wants the pattern: compute it explicitly
            pattern = self.hook_pattern(attention_probs(q, k, mask, self.scale))
            z = F.dropout(pattern, dropout, self.training).to(v.dtype) @ v
        else:
            z = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout,
                                               is_causal=is_causal and mask is None, scale=self.scale)
        z = self.hook_z(z)
        return self.out(z.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.activation = cfg.activation
        bias = cfg.arch == "neo"
        if self.activation == "swiglu":
            self.gate = nn.Linear(cfg.d_model, cfg.ffn_dim, bias=False)
            self.up = nn.Linear(cfg.d_model, cfg.ffn_dim, bias=False)
        else:
            self.fc = nn.Linear(cfg.d_model, cfg.ffn_dim, bias=bias)
        self.proj = nn.Linear(cfg.ffn_dim, cfg.d_model, bias=bias)
        self.hook_post = HookPoint()  # the neuron activations [B, T, ffn_dim]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.activation == "swiglu":
            hidden = activation("swiglu", self.gate(x), self.up(x))
        else:
            hidden = activation(self.activation, self.fc(x))
        return self.proj(self.hook_post(hidden))


def activation(kind: str, h: torch.Tensor, up: torch.Tensor | None = None) -> torch.Tensor:
    """The MLP's nonlinearity: SwiGLU silu(gate) * up, ReLU², or GPT-Neo's tanh-approximated GELU."""
    if kind == "swiglu":
        assert up is not None
        return F.silu(h) * up
    if kind == "relu2":
        return F.relu(h).square()
    return F.gelu(h, approximate="tanh")


def make_norm(cfg: GPTConfig) -> nn.Module:
    if cfg.arch == "neo":
        return nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
    return nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig, layer: int) -> None:
        super().__init__()
        self.norm1 = make_norm(cfg)
        self.attn = Attention(cfg, layer)
        self.norm2 = make_norm(cfg)
        self.mlp = MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)
        # The residual stream [B, T, d] entering, after attention, and leaving; what each part writes.
        self.hook_resid_pre, self.hook_resid_mid, self.hook_resid_post = HookPoint(), HookPoint(), HookPoint()
        self.hook_attn_out, self.hook_mlp_out = HookPoint(), HookPoint()

    def forward(self, x: torch.Tensor, masks: dict[int, torch.Tensor | None], is_causal: bool,
                rope: tuple[torch.Tensor, torch.Tensor] | None, cache: KVCache | None) -> torch.Tensor:
        x = self.hook_resid_pre(x)
        x = self.hook_resid_mid(x + self.hook_attn_out(self.drop(self.attn(self.norm1(x), masks, is_causal,
                                                                           rope, cache))))
        return self.hook_resid_post(x + self.hook_mlp_out(self.drop(self.mlp(self.norm2(x)))))


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


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.context_length, cfg.d_model) if cfg.arch == "neo" else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.norm = make_norm(cfg)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.hook_embed, self.hook_final = HookPoint(), HookPoint()  # [B, T, d]: first and last stream
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        self.apply(self._init_weights)
        # GPT-2's scaled init of the layers that write into the residual stream (or zero: each
        # block then starts as the identity, and learns what to add).
        for name, p in self.named_parameters():
            if name.endswith(("attn.out.weight", "mlp.proj.weight")):
                if cfg.zero_init_proj:
                    nn.init.zeros_(p)
                else:
                    nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def layers(self) -> list[Block]:
        """The blocks in order, typed (iterating an `nn.ModuleList` gives plain `nn.Module`s)."""
        return [block for block in self.blocks if isinstance(block, Block)]

    def hook_points(self) -> dict[str, HookPoint]:
        """Every hook point by name, in forward order (``hook_embed``, ``blocks.0.hook_resid_pre``, ...)."""
        return dict(self._points())

    def _points(self) -> list[tuple[str, HookPoint]]:
        found = self.__dict__.get("_hook_point_list")  # the modules never change after __init__
        if found is None:
            found = [(name, m) for name, m in self.named_modules() if isinstance(m, HookPoint)]
            self.__dict__["_hook_point_list"] = found
        return found

    def num_params(self, non_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.tok_emb.weight.numel()
            if self.pos_emb is not None:
                n -= self.pos_emb.weight.numel()
            if not self.cfg.tie_embeddings:
                n -= self.lm_head.weight.numel()
        return n

    def embed(self, idx: torch.Tensor, start: int = 0, pad: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """Token (+ learned position) embeddings of `idx` at slots start.., and RoPE tables if modern."""
        T = idx.shape[1]
        if start + T > self.cfg.context_length:
            raise ValueError(
                f"sequence of {start + T} tokens is longer than the model's context of "
                f"{self.cfg.context_length}")
        slots = torch.arange(start, start + T, device=idx.device)[None, :]
        positions = (slots - pad[:, None]).clamp(min=0) if pad is not None else slots
        x = self.tok_emb(idx)
        if self.pos_emb is not None:
            return x + self.pos_emb(positions), None
        return x, rope_tables(positions, self.cfg.head_dim, self.cfg.rope_theta)

    def hidden_states(self, idx: torch.Tensor, cache: KVCache | None = None,
                      pad: torch.Tensor | None = None) -> torch.Tensor:
        """Final-normed hidden states [B, T, d_model] for tokens `idx` [B, T]."""
        T = idx.shape[1]
        start = cache.length if cache is not None else 0
        if cache is not None:
            pad = cache.pad
        x, rope = self.embed(idx, start, pad)
        x = self.drop(self.hook_embed(x))
        k_len = start + T
        windows = {0} | {blk.attn.window for blk in self.layers()}
        masks = {w: attention_mask(start, T, k_len, pad, w, idx.device) for w in windows}
        if T == 1:  # a decode step: its one query always sees its own key, so no row is all masked
            masks = {w: m if m is None else additive(m, x.dtype) for w, m in masks.items()}
        is_causal = start == 0 and T > 1
        for block in self.blocks:
            x = block(x, masks, is_causal, rope, cache)
        if cache is not None:
            cache.length += T
        return self.hook_final(self.norm(x))

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                cache: KVCache | None = None, pad: torch.Tensor | None = None, last: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits [B, T, vocab] and, given `targets` [B, T] (-1 = ignore), the mean cross-entropy.

        `last`: logits of the last position only ([B, 1, vocab]): a prompt's prefill needs no
        more, and at a 32K vocabulary the output layer is most of a short prompt's work.
        """
        hidden = self.hidden_states(idx, cache, pad)
        logits = self.lm_head(hidden[:, -1:] if last else hidden)
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1),
                               ignore_index=-1)
        return logits, loss

    def loss(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Training loss; the same number as `forward(idx, targets)[1]`, faster on the CPU.

        On the CPU the output projection and cross-entropy run fused in chunks
        (`losses.linear_cross_entropy`); on GPUs the plain path, which torch.compile fuses.
        """
        hidden = self.hidden_states(idx)
        if hidden.device.type == "cpu" and hidden.dtype == torch.float32:
            return linear_cross_entropy(hidden, self.lm_head.weight, targets)
        logits = self.lm_head(hidden)
        return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)

    def new_cache(self, batch: int, max_len: int | None = None, pad: torch.Tensor | None = None) -> KVCache:
        p = self.tok_emb.weight
        return KVCache(self.cfg, batch, max_len or self.cfg.context_length, p.device, p.dtype, pad)

    # ------------------------------------------------------------ hooks, per thread
    @contextlib.contextmanager
    def hooked(self, hooks: Mapping[str, Callable[[torch.Tensor], torch.Tensor | None]]) -> Iterator[None]:
        """Within the block, `hooks[name](activation)` runs at hook point `name` in every forward
        pass this thread makes; a returned tensor replaces the activation (None keeps it).

        Only this thread's passes: a server's engine thread runs the same model at the same time
        for other clients, and must be neither recorded nor changed.
        """
        points = self.hook_points()
        unknown = sorted(set(hooks) - set(points))
        if unknown:
            raise KeyError(f"no hook point named {unknown}; e.g. {list(points)[:4]}")
        me = threading.get_ident()

        def wrap(fn: Callable[[torch.Tensor], torch.Tensor | None]) -> Callable[..., torch.Tensor | None]:
            return lambda _module, _inputs, out: fn(out) if threading.get_ident() == me else None

        handles = []
        try:
            with _HOOKING:
                for name, fn in hooks.items():
                    handles.append(points[name].register_forward_hook(wrap(fn)))
                    points[name].scoped[me] += 1
            yield
        finally:
            with _HOOKING:
                for name, h in zip(hooks, handles):
                    h.remove()
                    points[name].scoped[me] -= 1
                    if not points[name].scoped[me]:
                        del points[name].scoped[me]

    def listened(self) -> bool:
        """Whether any hook acts on this thread's forward passes (then only `forward` computes them):
        one `hooked` added on this thread, or one registered on any module directly (for every thread)."""
        for m in self.modules():
            if isinstance(m, HookPoint):
                if m.active:
                    return True
            elif m._forward_hooks or m._forward_pre_hooks:
                return True
        return False

    def decode_step(self) -> DecodeStep | None:
        """This model's decode step (made once, remade when its weights change), or None when only
        `forward` computes what the model would: in training mode, or with hooks on this thread.
        One step serves every thread; what a call writes besides the cache is its thread's own."""
        if self.training or self.listened():
            return None
        # in-place changes bump _version; .to(), .double() and load_state_dict(assign=True) move the data
        weights = tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in self.parameters())
        known = _DECODE_STEPS.get(self)
        if known is None or known[0] != weights:
            known = (weights, DecodeStep(self))
            _DECODE_STEPS[self] = known
        return known[1]


# ---------------------------------------------------------------- the decode step
# model -> (what its weights were when its step was made, the step). A step holds the model's
# modules and weights but never the model, so this does not keep models alive.
_DECODE_STEPS: weakref.WeakKeyDictionary[GPT, tuple[tuple[object, ...], DecodeStep]] = weakref.WeakKeyDictionary()

# Hook points of each block where the decode step can add a vector per row (e.g. a steering
# direction), in the order a step passes them: the residual-width activations ([B, d]) and the
# MLP's neurons (``mlp.hook_post``, [B, ffn_dim]), which it holds as tensors. Others need `forward`.
ADDABLE = ("hook_resid_pre", "hook_attn_out", "hook_resid_mid", "mlp.hook_post", "hook_mlp_out", "hook_resid_post")


# Output-layer weights (16 MB in float32) past which `DecodeStep.argmax` reads the bfloat16 copy
# for any batch below 16 rows: the 15M shape's 9.2M stream from memory at every token, the 1M
# and demo shapes' 0.6M stay in cache, where the copy pays only at one or two rows.
STREAMED = 4 << 20
# Prompt positions per call of the C step in `DecodeStep.prefill`: its scratch grows with them (17 KB
# a position at the 15M shape), and more save little: a call reads the weights once, ~1 ms there,
# against ~50 ms of arithmetic for 256 positions (1 thread, Zen 4 AMD EPYC).
PREFILL_ROWS = 256


def addable(name: str) -> bool:
    """Whether the decode step can add a vector at hook point `name` (see `DecodeStep.step`)."""
    block, _, point = name.partition(".")[2].partition(".")
    return name == "hook_embed" or (name.startswith("blocks.") and block.isdigit() and point in ADDABLE)


@dataclass
class _Layer:
    """One block's modules and weights, laid out for `x @ w` (w is [in, out])."""
    block: Block
    qkv: torch.Tensor
    out: torch.Tensor
    fc: torch.Tensor  # gate and up side by side for SwiGLU
    fc_b: torch.Tensor | None
    proj: torch.Tensor


class DecodeStep:
    """`step(tokens, cache)` = ``model(tokens[:, None], cache=cache)[0][:, -1]``: the same model
    specialised to generation's common case, one new token per row; `prefill` runs prompts
    through it, a position as a row.

    Not a second model: it runs the modules and functions above (the norms, `rope_tables`,
    `apply_rope`, `attention_probs`, `activation`) on weights derived from the model's own, and
    `tests/test_fast_decode.py` checks its logits against `forward` to 1e-5 for every
    architecture. What makes it faster on a CPU (measured at the 15M shape, bench/README.md):

    * weights transposed once to [in, out] and multiplied as ``x @ w``: for one row, ``F.linear``
      on the stored [out, in] layout costs up to 3x as much (32K-vocabulary output layer);
    * SwiGLU's gate and up matrices side by side: one multiplication;
    * RoPE angles for every position computed once (`rope_tables`);
    * attention of one query over the cache as two small matmuls, with no mask built for rows
      without padding, and no module calls, hook points or masks dictionary per step.

    For float32 on the CPU the step runs in C where a compiler is at hand (`model/native.py`,
    `decode_step.c`: the same operations on a copy of the weights laid out for it, with no
    per-operation dispatch),
    else as the PyTorch operations below (``native=False`` forces them). Both are pinned to
    `forward` by the tests.

    Hooks are not run here: `GPT.decode_step` gives None when some listen on this thread. A
    vector per row can still be added at the residual hook points and the MLP's neurons
    (`ADDABLE`), which is what steering needs, without leaving this path.
    """

    def __init__(self, model: GPT, native: bool = True) -> None:
        cfg = self.cfg = model.cfg
        self.model_norm, self.tok_emb, self.pos_emb = model.norm, model.tok_emb, model.pos_emb
        self.add_order = ["hook_embed", *(f"blocks.{i}.{point}" for i in range(cfg.n_layer) for point in ADDABLE)]
        device = model.tok_emb.weight.device
        self.rope = None
        if self.pos_emb is None:  # [ctx, head_dim] each
            cos, sin = rope_tables(torch.arange(cfg.context_length, device=device)[None], cfg.head_dim,
                                   cfg.rope_theta)
            self.rope = (cos[0, 0], sin[0, 0])
        self.native = None  # the same step in C (model/native.py), for float32 on the CPU where it builds
        if native and model.tok_emb.weight.dtype == torch.float32 and device.type == "cpu":
            from tinystories.model import native as c

            lib = c.library()
            if lib is not None:
                if lib.addition_points() != len(ADDABLE):  # `adds` is a table in ADDABLE's order
                    raise RuntimeError(f"decode_step.c has {lib.addition_points()} addition points a layer, "
                                       f"gpt.ADDABLE {len(ADDABLE)}: change both together")
                self.native = c.NativeStep(model, lib, self.rope)
        self.layers = []
        if self.native is not None:
            return
        with torch.no_grad():
            for block in model.layers():
                a, m = block.attn, block.mlp
                fc = torch.cat([m.gate.weight, m.up.weight]) if m.activation == "swiglu" else m.fc.weight
                self.layers.append(_Layer(
                    block=block, qkv=a.qkv.weight.t().contiguous(), out=a.out.weight.t().contiguous(),
                    fc=fc.t().contiguous(), fc_b=None if m.activation == "swiglu" else m.fc.bias,
                    proj=m.proj.weight.t().contiguous()))
            self.head = model.lm_head.weight.t().contiguous()

    def step(self, tokens: torch.Tensor, cache: KVCache, adds: Mapping[str, torch.Tensor] | None = None,
             best: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, V] of the next token after `tokens` [B] (one per row), appended to `cache`.

        `adds[name]` [B, width]: added to the activation at hook point `name` (``hook_embed`` or one
        of `ADDABLE`, as ``blocks.L.hook_resid_post``), as a hook returning ``x + add`` would in `forward`.
        `best` [B] int64: set to each row's most likely token, ``logits.argmax(-1)`` (the C step
        finds it while the logits are in cache: the greedy sampler's answer, `infer/sampler.sample`).
        """
        logits = self._run(tokens, cache, adds, best, head=True)
        assert logits is not None
        return logits

    def argmax(self, tokens: torch.Tensor, cache: KVCache, adds: Mapping[str, torch.Tensor] | None,
               best: torch.Tensor) -> None:
        """`step` when only each row's most likely token is wanted (greedy rows, no log-probabilities
        to report): set in `best`, the same token `step` gives, with no logits. The C step then reads
        a bfloat16 copy of the output layer and computes float32 logits only for the tokens that
        copy cannot rule out (`argmax_pruned` in decode_step.c: half the bytes of the 15M shape's
        largest matrix, which it streams from memory at every token). That pays at one or two
        rows, and below 16 rows where the output layer is too large to stay in cache (more than
        `STREAMED` weights); elsewhere converting the copy costs more than it saves, and the step
        computes all the logits, as the PyTorch step always does (bench/README.md, Inference)."""
        B = tokens.shape[0]
        if self.native is not None and (B <= 2 or (B < 16 and self.cfg.vocab_size * self.cfg.d_model > STREAMED)):
            self._run(tokens, cache, adds, best, head=False)
        else:
            self._run(tokens, cache, adds, best, head=True)

    def fill(self, tokens: torch.Tensor, cache: KVCache, adds: Mapping[str, torch.Tensor] | None = None) -> None:
        """`step` without the output layer: `tokens` appended to `cache`, no logits (a prompt
        position before its last; the output layer is the step's largest matrix at our shapes)."""
        self._run(tokens, cache, adds, None, head=False)

    @inference
    def prefill(self, idx: torch.Tensor, cache: KVCache, adds: Mapping[str, torch.Tensor] | None = None
                ) -> torch.Tensor:
        """Prompts `idx` [n, T], left-padded as `cache.pad` says, into the empty `cache`: the logits
        [n, V] of each one's next token. What stepping through them a position at a time gives
        (`fill`, then `step` at the last), and the PyTorch step does just that. The C step takes
        every prompt position as a row instead (`decode_step.c`, its `at`; `PREFILL_ROWS` a call),
        its matrices read once for all of them, the output layer only at each prompt's last; each row
        computed as in a step of its own: the same logits and cache, bit for bit (tested), and a
        prompt's the same whatever prompts come with it."""
        n, T = idx.shape
        if T > self.cfg.context_length:
            raise ValueError(f"prompt of {T} tokens is longer than the model's context of {self.cfg.context_length}")
        if cache.length != 0 or cache.batch != n or cache.k.shape[3] < T or (
                cache.pad is not None and cache.pad.shape != (n,)):
            raise ValueError(f"prefill needs an empty cache of {n} rows and {T} slots or more, with a padding "
                             f"count per row (the C step writes into it unchecked)")
        if self.native is None:
            for t in range(T - 1):
                self.fill(idx[:, t], cache, adds)
            return self.step(idx[:, -1], cache, adds)
        start = cache.pad if cache.pad is not None else torch.zeros(n, dtype=torch.long)
        real = torch.arange(T)[None] >= start[:, None]  # [n, T]: prompt positions, not padding
        at = real.nonzero()  # [P, 2]: (cache row, slot) of each position, row by row
        tokens, last = idx[real], (T - start).cumsum(0) - 1  # each row's last position among them
        table = [adds[name][at[:, 0]] if name in adds else None for name in self.add_order] if adds else None
        logits = []
        for a in range(0, at.shape[0], PREFILL_ROWS):  # a row's earlier positions are in the cache by then
            b = a + PREFILL_ROWS
            out = last[(last >= a) & (last < b)] - a
            part = None if table is None else [t if t is None else t[a:b] for t in table]
            got = self.native.step(tokens[a:b], cache.k, cache.v, T - 1, cache.pad, part, None, len(out) > 0,
                                   at[a:b], out)
            logits += [got] if got is not None else []
        cache.length = T
        return torch.cat(logits)

    @inference
    def _run(self, tokens: torch.Tensor, cache: KVCache, adds: Mapping[str, torch.Tensor] | None,
             best: torch.Tensor | None, head: bool) -> torch.Tensor | None:
        cfg, adds = self.cfg, adds or {}
        B, H, D = tokens.shape[0], cfg.n_head, cfg.head_dim
        slot = cache.length
        if slot >= cfg.context_length:
            raise ValueError(f"sequence of {slot + 1} tokens is longer than the model's context of "
                             f"{cfg.context_length}")
        pad = cache.pad
        if self.native is not None:
            assert best is None or (best.dtype == torch.int64 and best.is_contiguous() and best.shape == (B,))
            logits = self.native.step(tokens, cache.k, cache.v, slot, pad,
                                      [adds.get(n) for n in self.add_order] if adds else None, best, head)
            cache.length += 1
            return logits
        pos = torch.full((B,), slot, device=tokens.device) if pad is None else (slot - pad).clamp(min=0)
        x = self.tok_emb(tokens)
        rope = None
        if self.pos_emb is not None:
            x = x + self.pos_emb(pos)
        else:
            assert self.rope is not None
            rope = (self.rope[0][pos][:, None], self.rope[1][pos][:, None])  # [B, 1, head_dim]
        keys = torch.arange(slot + 1, device=tokens.device)
        visible = None if pad is None else keys[None, :] >= pad[:, None]  # [B, slot+1]

        def add(name: str, t: torch.Tensor) -> torch.Tensor:
            return t + adds[name] if name in adds else t

        x = add("hook_embed", x)
        for i, layer in enumerate(self.layers):
            blk, at = layer.block, f"blocks.{i}."
            x = add(at + "hook_resid_pre", x)
            q, k, v = (blk.norm1(x) @ layer.qkv).view(B, 3, H, D).unbind(1)  # each [B, H, D]
            if blk.attn.q_norm is not None and blk.attn.k_norm is not None:
                q, k = blk.attn.q_norm(q), blk.attn.k_norm(k)
            if rope is not None:
                q, k = apply_rope(q, *rope), apply_rope(k, *rope)
            cache.k[i, :, :, slot] = k
            cache.v[i, :, :, slot] = v
            mask = visible
            if blk.attn.window and slot + 1 > blk.attn.window:
                recent = (keys > slot - blk.attn.window)[None]
                mask = recent if mask is None else mask & recent
            probs = attention_probs(q[:, :, None], cache.k[i, :, :, :slot + 1],
                                    None if mask is None else mask[:, None, None], blk.attn.scale)
            z = (probs.to(x.dtype) @ cache.v[i, :, :, :slot + 1]).reshape(B, -1)  # [B, H * D]
            attn = z @ layer.out
            if blk.attn.out.bias is not None:
                attn = attn + blk.attn.out.bias
            x = add(at + "hook_resid_mid", x + add(at + "hook_attn_out", attn))
            h = blk.norm2(x) @ layer.fc
            if layer.fc_b is not None:
                h = h + layer.fc_b
            hidden = activation("swiglu", *h.chunk(2, -1)) if blk.mlp.activation == "swiglu" \
                else activation(blk.mlp.activation, h)
            out = add(at + "mlp.hook_post", hidden) @ layer.proj
            if blk.mlp.proj.bias is not None:
                out = out + blk.mlp.proj.bias
            x = add(at + "hook_resid_post", x + add(at + "hook_mlp_out", out))
        cache.length += 1
        if not head:
            return None
        logits = self.model_norm(x) @ self.head
        if best is not None:
            torch.argmax(logits, -1, out=best)
        return logits
