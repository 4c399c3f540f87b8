"""Export a model (and its tokenizer) in llama2.c's formats, so `run.c` runs our models.

llama2.c (Karpathy) reads a "version 0" checkpoint: seven int32s (dim, hidden_dim, n_layers,
n_heads, n_kv_heads, vocab_size, max_seq_len; a negative vocab_size means an untied output
layer), then float32 tensors: the token embeddings; per kind, every layer's attention RMSNorm
weights, wq, wk, wv, wo, FFN RMSNorm weights, w1 (gate), w2 (down), w3 (up); the final
RMSNorm; RoPE cos and sin tables [max_seq_len, head_dim/2]; the output layer if untied.

Two layout differences are bridged here: run.c rotates adjacent pairs (x[2i], x[2i+1]) while
our RoPE (Llama's "rotate half") pairs x[i] with x[i + head_dim/2], so the rows of wq and wk
are permuted within each head (attention scores are unchanged); and run.c hard-codes RoPE
base 10000 and RMSNorm epsilon 1e-5, so only models with those export.

run.c starts every story from token id 1 and stops when it samples id 1. Our end-of-story
token (id 0 in our tokenizers) plays exactly that part, so it and id 1 swap places in both
files: the embedding rows, the output layer's rows and the tokenizer's pieces
(`run_c_id`). A story written by run.c is then the story our model writes from `[eos]`.

The tokenizer file holds the longest token's length, then per token a float score, a length
and the token's raw bytes. run.c decodes by concatenating those bytes, which is exact for our
byte-level BPE. (Its prompt encoder follows SentencePiece conventions: start-of-text id 1, a
dummy space, byte tokens at ids 3-258; start from an empty prompt for exact text.)
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import torch

from tinystories.errors import TinyStoriesError
from tinystories.model.gpt import GPT
from tinystories.tokenizer import Tokenizer
from tinystories.utils import atomic_write


def check_exportable(model: GPT) -> None:
    cfg = model.cfg
    problems = []
    if cfg.arch != "modern" or cfg.activation != "swiglu" or cfg.qk_norm:
        problems.append("a modern model with a SwiGLU MLP and no QK-norm (llama2.c's Llama)")
    if cfg.rope_theta != 10000.0:
        problems.append(f"RoPE base 10000 (this model's is {cfg.rope_theta:g})")
    if cfg.norm_eps != 1e-5:
        problems.append(f"RMSNorm epsilon 1e-5 (this model's is {cfg.norm_eps:g})")
    if problems:
        raise TinyStoriesError("llama2.c's run.c can only run " + "; ".join(problems))


def interleave_rope_rows(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Rows of wq/wk [n_head*hd, d] from rotate-half order (i, i+hd/2) to adjacent pairs (2i, 2i+1)."""
    hd = w.shape[0] // n_head
    order = torch.arange(hd).view(2, hd // 2).t().reshape(-1)  # 0, hd/2, 1, hd/2+1, ...
    return w.view(n_head, hd, -1)[:, order].reshape(w.shape)


def run_c_id(token: int, eos_id: int) -> int:
    """Our token id -> its id in the exported files: the end-of-story token and id 1 swap places."""
    return 1 if token == eos_id else eos_id if token == 1 else token


def _run_c_order(vocab_size: int, eos_id: int) -> torch.Tensor:
    """Row `i` of an exported [vocab, d] table is our row `order[i]` (the swap is its own inverse)."""
    return torch.tensor([run_c_id(i, eos_id) for i in range(vocab_size)])


def export_llama2c(model: GPT, path: str | Path, eos_id: int) -> Path:
    """Write `model` as a llama2.c version-0 checkpoint (see the module doc)."""
    check_exportable(model)
    order = _run_c_order(model.cfg.vocab_size, eos_id)
    cfg = model.cfg
    blocks = model.layers()
    tied = cfg.tie_embeddings
    header = struct.pack("iiiiiii", cfg.d_model, cfg.ffn_dim, cfg.n_layer, cfg.n_head, cfg.n_head,
                         cfg.vocab_size if tied else -cfg.vocab_size, cfg.context_length)
    d = cfg.d_model
    qkv = [b.attn.qkv.weight.detach() for b in blocks]
    tensors: list[torch.Tensor] = [
               model.tok_emb.weight[order],
               *(_weight(b.norm1) for b in blocks),
               *(interleave_rope_rows(w[:d], cfg.n_head) for w in qkv),
               *(interleave_rope_rows(w[d:2 * d], cfg.n_head) for w in qkv),
               *(w[2 * d:] for w in qkv),
               *(b.attn.out.weight for b in blocks),
               *(_weight(b.norm2) for b in blocks),
               *(b.mlp.gate.weight for b in blocks),
               *(b.mlp.proj.weight for b in blocks),
               *(b.mlp.up.weight for b in blocks),
               _weight(model.norm)]
    half = cfg.head_dim // 2
    inv = 1.0 / (10000.0 ** (torch.arange(0, cfg.head_dim, 2)[:half].float() / cfg.head_dim))
    angles = torch.outer(torch.arange(cfg.context_length).float(), inv)
    tensors += [angles.cos(), angles.sin()]
    if not tied:
        tensors.append(model.lm_head.weight[order])
    with atomic_write(path, "wb") as f:
        f.write(header)
        for t in tensors:
            f.write(t.detach().to(torch.float32).cpu().contiguous().numpy().tobytes())
    return Path(path)


def _weight(module: torch.nn.Module) -> torch.Tensor:
    weight = module.weight
    assert isinstance(weight, torch.Tensor)
    return weight


def export_llama2c_tokenizer(tokenizer: Tokenizer, path: str | Path) -> Path:
    """Write `tokenizer` in llama2.c's tokenizer.bin format (raw bytes per token; see the module doc)."""
    to_byte = _byte_decoder()
    pieces: list[bytes] = [b""] * tokenizer.vocab_size
    for token, i in tokenizer.hf.get_vocab().items():
        # the end-of-story token prints as a line break; the others are byte-level text for raw bytes
        piece = b"\n" if i == tokenizer.eos_id else bytes(to_byte[c] for c in token)
        pieces[run_c_id(i, tokenizer.eos_id)] = piece
    scores = np.array([-float(i) for i in range(len(pieces))], dtype=np.float32)  # earlier merges rank higher
    with atomic_write(path, "wb") as f:
        f.write(struct.pack("i", max(len(p) for p in pieces)))
        for score, piece in zip(scores, pieces):
            f.write(struct.pack("fi", float(score), len(piece)))
            f.write(piece)
    return Path(path)


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet: the printable character that stands for each byte."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, n = list(printable), 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(printable, chars)}
