"""Export a modern model and its tokenizer as one GGUF file, so llama.cpp and Ollama run it.

GGUF is llama.cpp's single-file format: key/value metadata then named tensors. We write it
with the `gguf` package (llama.cpp's own Python writer), as llama.cpp's ``llama``
architecture, which is exactly our ``modern`` block (RoPE, RMSNorm, SwiGLU, no biases):

* Tensors take llama.cpp's names (``token_embd``, ``blk.N.attn_q`` ...). Our fused
  ``attn.qkv`` is split into q, k and v. llama.cpp's ``llama`` rotates adjacent pairs
  (x[2i], x[2i+1]) where our RoPE, like Hugging Face's Llama, rotates halves (x[i],
  x[i + head_dim/2]), so the rows of q and k are permuted within each head, as llama.cpp's
  own Hugging Face converter does (attention scores are unchanged). A tied output layer is
  simply left out: llama.cpp then reuses ``token_embd``.
* The tokenizer becomes llama.cpp's byte-level BPE (``gpt2`` model) with our vocabulary and
  merges, and the ``gpt-2`` pre-tokenizer, whose split regex is the one `tokenizers`'
  ByteLevel uses by default (ours has add_prefix_space off, as llama.cpp does). Token ids
  are ours unchanged; rows beyond the tokenizer (a padded vocabulary) get unused tokens.
* A story starts after ``<|endoftext|>``: it is both BOS and EOS, and llama.cpp adds it in
  front of every prompt, so a plain completion of "Once upon a time" is what our model sees.

Weights: ``f32`` (exact), ``f16``, or ``q8_0`` (8-bit blocks of 32, llama.cpp's near-lossless
quantisation); norm weights stay float32 as in llama.cpp's converter, and a matrix whose rows
don't split into blocks of 32 falls back to f16.

Sampling defaults travel too: llama.cpp's own (top-k 40, top-p 0.95, min-p 0.05) cut the
distribution, ours don't, so the file carries the ones the caller passes (`export-gguf`: the
API's, `infer/params.py`) in ``general.sampling.*``, which llama.cpp's tools read unless flags
say otherwise; our repetition penalty acts on the whole context, so the file's repeat window
(``penalty_last_n``) is the context length. `modelfile` writes
them into the Ollama Modelfile that goes beside the GGUF, with a template that passes the
prompt through (no chat) and the end-of-story stop token.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch

from tinystories.errors import TinyStoriesError
from tinystories.model.checkpoint import LoadedModel, Sampling
from tinystories.model.gpt import GPT
from tinystories.model.llama2c import interleave_rope_rows
from tinystories.tokenizer import EOS_TEXT, Tokenizer
from tinystories.utils import atomic_write

if TYPE_CHECKING:
    from gguf import GGMLQuantizationType

Dtype = Literal["f32", "f16", "q8_0"]
DTYPES: tuple[Dtype, ...] = ("f32", "f16", "q8_0")
Q8_BLOCK = 32  # q8_0 quantises runs of 32 weights along a row


def require_gguf() -> None:
    try:
        import gguf  # noqa: F401
    except ImportError as exc:
        raise TinyStoriesError("writing GGUF needs the gguf package: pip install 'tinystories[gguf]'") from exc


def check_exportable(model: GPT) -> None:
    """Refuse, in one line, what llama.cpp's `llama` architecture cannot hold."""
    cfg = model.cfg
    if cfg.arch != "modern":
        raise TinyStoriesError("llama.cpp cannot run this model: GPT-Neo (arch=neo) is not supported; "
                               "export-gguf takes modern (Llama-style) models")
    problems = []
    if cfg.qk_norm:
        problems.append("QK-norm (qk_norm=true)")
    if cfg.activation != "swiglu":
        problems.append(f"the {cfg.activation} MLP (llama.cpp's llama has SwiGLU only)")
    if problems:
        raise TinyStoriesError("llama.cpp's llama architecture cannot hold " + " or ".join(problems))


# ---------------------------------------------------------------- tensors
def llama_tensors(model: GPT) -> dict[str, torch.Tensor]:
    """llama.cpp's tensor name -> float32 weight ([out, in] like torch's Linear)."""
    cfg = model.cfg
    d = cfg.d_model
    out: dict[str, torch.Tensor] = {"token_embd.weight": model.tok_emb.weight,
                                    "output_norm.weight": _weight(model.norm)}
    if not cfg.tie_embeddings:
        out["output.weight"] = model.lm_head.weight
    for i, b in enumerate(model.layers()):
        qkv = b.attn.qkv.weight
        out.update({
            f"blk.{i}.attn_norm.weight": _weight(b.norm1),
            f"blk.{i}.attn_q.weight": interleave_rope_rows(qkv[:d], cfg.n_head),
            f"blk.{i}.attn_k.weight": interleave_rope_rows(qkv[d:2 * d], cfg.n_head),
            f"blk.{i}.attn_v.weight": qkv[2 * d:],
            f"blk.{i}.attn_output.weight": b.attn.out.weight,
            f"blk.{i}.ffn_norm.weight": _weight(b.norm2),
            f"blk.{i}.ffn_gate.weight": b.mlp.gate.weight,
            f"blk.{i}.ffn_up.weight": b.mlp.up.weight,
            f"blk.{i}.ffn_down.weight": b.mlp.proj.weight,
        })
    return {k: v.detach().to(torch.float32).cpu().contiguous() for k, v in out.items()}


def _weight(module: torch.nn.Module) -> torch.Tensor:
    weight = module.weight
    assert isinstance(weight, torch.Tensor)
    return weight


def _encoded(t: torch.Tensor, dtype: Dtype) -> tuple[np.ndarray, GGMLQuantizationType | None]:
    """The array to store and its GGML type (None: the writer infers it from the numpy dtype)."""
    from gguf import GGMLQuantizationType
    from gguf.quants import quantize

    a = t.numpy()
    if a.ndim == 1 or dtype == "f32":
        return a, None
    if dtype == "q8_0" and a.shape[-1] % Q8_BLOCK == 0:
        return quantize(a, GGMLQuantizationType.Q8_0), GGMLQuantizationType.Q8_0
    return a.astype(np.float16), None


# ---------------------------------------------------------------- tokenizer
def vocab_entries(tokenizer: Tokenizer, vocab_size: int) -> tuple[list[str], list[int]]:
    """Every id's token text (byte-level, as in tokenizer.json) and llama.cpp token type."""
    from gguf import TokenType

    if tokenizer.vocab_size > vocab_size:
        raise TinyStoriesError(f"the tokenizer has {tokenizer.vocab_size} tokens, more than the model's "
                               f"vocabulary of {vocab_size}")
    special = {t.content for t in tokenizer.hf.get_added_tokens_decoder().values() if t.special}
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    types = [int(TokenType.UNUSED)] * vocab_size
    for text, i in tokenizer.hf.get_vocab().items():
        tokens[i] = text
        types[i] = int(TokenType.CONTROL if text in special else TokenType.NORMAL)
    return tokens, types


def merges(tokenizer: Tokenizer) -> list[str]:
    """BPE merges in priority order as "left right" (tokenizer.json stores strings or pairs)."""
    spec = json.loads(tokenizer.hf.to_str())["model"]
    if spec.get("type") != "BPE":
        raise TinyStoriesError("export-gguf needs a byte-level BPE tokenizer")
    return [m if isinstance(m, str) else " ".join(m) for m in spec["merges"]]


# ---------------------------------------------------------------- the file
def export_gguf(loaded: LoadedModel, path: str | Path, dtype: Dtype, sampling: Sampling) -> Path:
    """Write `loaded` (model and tokenizer) as a GGUF file for llama.cpp (see the module doc)."""
    model, tokenizer = loaded.model, loaded.tokenizer
    check_exportable(model)
    if dtype not in DTYPES:
        raise TinyStoriesError(f"dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")
    require_gguf()
    from gguf import GGUFWriter, LlamaFileType

    cfg = model.cfg
    tokens, types = vocab_entries(tokenizer, cfg.vocab_size)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    w = GGUFWriter(tmp, "llama")
    try:
        w.add_name(loaded.name or path.stem)
        w.add_description("a tiny story-writing language model (tinystories); stories start after "
                          f"{EOS_TEXT}")
        w.add_file_type({"f32": LlamaFileType.ALL_F32, "f16": LlamaFileType.MOSTLY_F16,
                         "q8_0": LlamaFileType.MOSTLY_Q8_0}[dtype])
        w.add_context_length(cfg.context_length)
        w.add_embedding_length(cfg.d_model)
        w.add_block_count(cfg.n_layer)
        w.add_feed_forward_length(cfg.ffn_dim)
        w.add_head_count(cfg.n_head)
        w.add_head_count_kv(cfg.n_head)
        w.add_rope_dimension_count(cfg.head_dim)
        w.add_rope_freq_base(cfg.rope_theta)
        w.add_layer_norm_rms_eps(cfg.norm_eps)
        w.add_vocab_size(cfg.vocab_size)
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("gpt-2")
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_merges(merges(tokenizer))
        w.add_bos_token_id(tokenizer.eos_id)
        w.add_eos_token_id(tokenizer.eos_id)
        w.add_add_bos_token(True)
        w.add_add_eos_token(False)
        w.add_sampling_temp(sampling.temperature)
        w.add_sampling_top_k(sampling.top_k)
        w.add_sampling_top_p(sampling.top_p)
        w.add_sampling_min_p(sampling.min_p)
        w.add_sampling_penalty_repeat(sampling.repetition_penalty)
        w.add_sampling_penalty_last_n(cfg.context_length)
        for name, tensor in llama_tensors(model).items():
            data, qtype = _encoded(tensor, dtype)
            w.add_tensor(name, data, raw_dtype=qtype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.replace(tmp, path)
    except BaseException:
        w.close()
        tmp.unlink(missing_ok=True)
        raise
    return path


def modelfile(gguf_path: str | Path, context_length: int, sampling: Sampling) -> str:
    """An Ollama Modelfile for the GGUF beside it: plain completion, stop at the end of the story."""
    return "\n".join([
        f"# ollama create NAME -f {Path(gguf_path).with_suffix('.Modelfile').name}",
        f"FROM ./{Path(gguf_path).name}",
        "# no chat: the prompt is the beginning of a story (the model adds <|endoftext|> in front)",
        'TEMPLATE """{{ .Prompt }}"""',
        f'PARAMETER stop "{EOS_TEXT}"',
        f"PARAMETER num_ctx {context_length}",
        "# sample as tinystories does (Ollama's defaults cut the distribution more)",
        f"PARAMETER temperature {sampling.temperature:g}",
        f"PARAMETER top_k {sampling.top_k}",
        f"PARAMETER top_p {sampling.top_p:g}",
        f"PARAMETER min_p {sampling.min_p:g}",
        f"PARAMETER repeat_penalty {sampling.repetition_penalty:g}",
        f"PARAMETER repeat_last_n {context_length}",
        "",
    ])


def write_modelfile(gguf_path: str | Path, context_length: int, sampling: Sampling) -> Path:
    out = Path(gguf_path).with_suffix(".Modelfile")
    with atomic_write(out) as f:
        f.write(modelfile(gguf_path, context_length, sampling))
    return out
