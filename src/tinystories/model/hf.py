"""Hugging Face `transformers` interop: export our models, import GPT-Neo / Llama folders.

* `export_hf` writes a folder that ``AutoModelForCausalLM.from_pretrained`` and
  ``AutoTokenizer.from_pretrained`` load: ``neo`` models become ``GPTNeoForCausalLM``,
  ``modern`` models ``LlamaForCausalLM``, with a model card (README.md).
* `load_hf_model` converts a local GPT-Neo or Llama folder (for instance the official
  ``roneneldan/TinyStories-*`` checkpoints in a user's HF cache) into our `GPT`, so that
  sampling, serving, evaluation and interpretability work on it unchanged.

The mapping is exact: logits agree with `transformers` to 1e-4 (the tests check both
directions). Our fused ``attn.qkv`` is split into / joined from q_proj, k_proj, v_proj.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from tinystories.errors import TinyStoriesError
from tinystories.model.checkpoint import LoadedModel, Sampling, read_config_raw, save_tensors
from tinystories.model.gpt import GPT, GPTConfig
from tinystories.tokenizer import EOS_TEXT, Tokenizer
from tinystories.utils import atomic_write, write_json

SUPPORTED = "GPT-Neo (GPTNeoForCausalLM) and Llama (LlamaForCausalLM)"


# ---------------------------------------------------------------- name mapping
def _neo_pairs(cfg: GPTConfig) -> list[tuple[str, str]]:
    """(our name, HF name) for every GPT-Neo tensor except the fused/split q, k, v."""
    pairs = [("tok_emb.weight", "transformer.wte.weight"), ("pos_emb.weight", "transformer.wpe.weight"),
             ("norm.weight", "transformer.ln_f.weight"), ("norm.bias", "transformer.ln_f.bias")]
    for i in range(cfg.n_layer):
        ours, hf = f"blocks.{i}.", f"transformer.h.{i}."
        for a, b in [("norm1", "ln_1"), ("norm2", "ln_2"), ("attn.out", "attn.attention.out_proj"),
                     ("mlp.fc", "mlp.c_fc"), ("mlp.proj", "mlp.c_proj")]:
            pairs += [(f"{ours}{a}.weight", f"{hf}{b}.weight"), (f"{ours}{a}.bias", f"{hf}{b}.bias")]
    return pairs


def _llama_pairs(cfg: GPTConfig) -> list[tuple[str, str]]:
    pairs = [("tok_emb.weight", "model.embed_tokens.weight"), ("norm.weight", "model.norm.weight")]
    for i in range(cfg.n_layer):
        ours, hf = f"blocks.{i}.", f"model.layers.{i}."
        for a, b in [("norm1", "input_layernorm"), ("norm2", "post_attention_layernorm"),
                     ("attn.out", "self_attn.o_proj"), ("mlp.gate", "mlp.gate_proj"),
                     ("mlp.up", "mlp.up_proj"), ("mlp.proj", "mlp.down_proj")]:
            pairs.append((f"{ours}{a}.weight", f"{hf}{b}.weight"))
    return pairs


def _qkv_names(cfg: GPTConfig, i: int) -> list[str]:
    if cfg.arch == "neo":
        return [f"transformer.h.{i}.attn.attention.{p}_proj.weight" for p in "qkv"]
    return [f"model.layers.{i}.self_attn.{p}_proj.weight" for p in "qkv"]


def _pairs(cfg: GPTConfig) -> list[tuple[str, str]]:
    return _neo_pairs(cfg) if cfg.arch == "neo" else _llama_pairs(cfg)


def to_hf_state(model: GPT) -> dict[str, torch.Tensor]:
    ours = model.state_dict()
    cfg = model.cfg
    state = {hf: ours[name] for name, hf in _pairs(cfg)}
    for i in range(cfg.n_layer):
        for name, part in zip(_qkv_names(cfg, i), ours[f"blocks.{i}.attn.qkv.weight"].chunk(3, dim=0)):
            state[name] = part
    if not cfg.tie_embeddings:
        state["lm_head.weight"] = ours["lm_head.weight"]
    return {k: v.detach().float().cpu().contiguous() for k, v in state.items()}


def from_hf_state(cfg: GPTConfig, hf: dict[str, torch.Tensor]) -> GPT:
    state = {name: hf[hf_name] for name, hf_name in _pairs(cfg)}
    for i in range(cfg.n_layer):
        state[f"blocks.{i}.attn.qkv.weight"] = torch.cat([hf[n] for n in _qkv_names(cfg, i)], dim=0)
    state["lm_head.weight"] = state["tok_emb.weight"] if cfg.tie_embeddings else hf["lm_head.weight"]
    model = GPT(cfg)
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    if cfg.tie_embeddings:
        model.lm_head.weight = model.tok_emb.weight
    return model


# ---------------------------------------------------------------- configs
def _neo_attention_types(cfg: GPTConfig) -> list[list[Any]]:
    """GPT-Neo's run-length layout of layer kinds; ours makes odd layers local when local_window > 0."""
    if not cfg.local_window:
        return [[["global"], cfg.n_layer]]
    types: list[list[Any]] = [[["global", "local"], cfg.n_layer // 2]]
    if cfg.n_layer % 2:
        types.append([["global"], 1])
    return types


def hf_config(cfg: GPTConfig, eos: int) -> Any:
    """The `transformers` config (GPTNeoConfig or LlamaConfig) of the same architecture."""
    from transformers import GPTNeoConfig, LlamaConfig

    if cfg.arch == "modern" and (cfg.activation != "swiglu" or cfg.qk_norm):
        raise TinyStoriesError("transformers has no Llama with a ReLU² MLP or QK-norm: only modern models with "
                               "mlp=swiglu and qk_norm=false export to LlamaForCausalLM")
    common: dict[str, Any] = {"vocab_size": cfg.vocab_size, "tie_word_embeddings": cfg.tie_embeddings,
                              "bos_token_id": eos, "eos_token_id": eos}
    if cfg.arch == "neo":
        return GPTNeoConfig(
            hidden_size=cfg.d_model, num_layers=cfg.n_layer, num_heads=cfg.n_head,
            intermediate_size=cfg.ffn_dim, max_position_embeddings=cfg.context_length,
            attention_types=_neo_attention_types(cfg), window_size=cfg.local_window or cfg.context_length,
            activation_function="gelu_new", layer_norm_epsilon=cfg.norm_eps,
            embed_dropout=0.0, attention_dropout=0.0, resid_dropout=0.0, **common)
    return LlamaConfig(
        hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head,
        num_key_value_heads=cfg.n_head, intermediate_size=cfg.ffn_dim, hidden_act="silu",
        max_position_embeddings=cfg.context_length, rms_norm_eps=cfg.norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        attention_bias=False, mlp_bias=False, **common)


def _get(hf: dict[str, Any], *keys: str, default: Any = None) -> Any:
    for k in keys:
        if hf.get(k) is not None:
            return hf[k]
    return default


def config_from_hf(hf: dict[str, Any], where: str) -> GPTConfig:
    """Our GPTConfig for a transformers config.json, or a clear error when we can't represent it."""
    model_type = hf.get("model_type")
    if model_type == "gpt_neo":
        return _neo_config(hf, where)
    if model_type == "llama":
        return _llama_config(hf, where)
    raise TinyStoriesError(f"{where}: model type {model_type!r} is not supported; "
                           f"tinystories imports {SUPPORTED}")


def _neo_config(hf: dict[str, Any], where: str) -> GPTConfig:
    n_layer = hf["num_layers"]
    layers = [kind for pattern, repeat in hf.get("attention_types", [[["global"], n_layer]])
              for _ in range(repeat) for kind in pattern]
    window = hf.get("window_size", 256)
    wanted = ["local" if i % 2 else "global" for i in range(n_layer)]
    if "local" not in layers:
        window = 0
    elif layers != wanted:
        raise TinyStoriesError(f"{where}: attention layout {layers} is not supported; tinystories "
                               "models make every odd layer local (global, local, global, ...)")
    act = hf.get("activation_function", "gelu_new")
    if act != "gelu_new":
        raise TinyStoriesError(f"{where}: activation {act!r} is not supported (only gelu_new)")
    return GPTConfig(vocab_size=hf["vocab_size"], context_length=hf["max_position_embeddings"],
                     n_layer=n_layer, n_head=hf["num_heads"], d_model=hf["hidden_size"],
                     d_ff=hf.get("intermediate_size") or 4 * hf["hidden_size"], arch="neo",
                     tie_embeddings=hf.get("tie_word_embeddings", True), local_window=window,
                     norm_eps=hf.get("layer_norm_epsilon", 1e-5))


def _llama_config(hf: dict[str, Any], where: str) -> GPTConfig:
    heads = hf["num_attention_heads"]
    problems = []
    if _get(hf, "num_key_value_heads", default=heads) != heads:
        problems.append("grouped-query attention (num_key_value_heads != num_attention_heads)")
    if _get(hf, "head_dim", default=hf["hidden_size"] // heads) != hf["hidden_size"] // heads:
        problems.append("head_dim != hidden_size / num_attention_heads")
    if hf.get("attention_bias") or hf.get("mlp_bias"):
        problems.append("biases in attention or MLP")
    if hf.get("hidden_act", "silu") != "silu":
        problems.append(f"activation {hf['hidden_act']!r}")
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        problems.append(f"RoPE scaling {rope}")
    if problems:
        raise TinyStoriesError(f"{where}: this Llama variant is not supported: {'; '.join(problems)}")
    theta = rope.get("rope_theta") or hf.get("rope_theta") or 10000.0
    return GPTConfig(vocab_size=hf["vocab_size"], context_length=hf["max_position_embeddings"],
                     n_layer=hf["num_hidden_layers"], n_head=heads, d_model=hf["hidden_size"],
                     d_ff=hf["intermediate_size"], arch="modern",
                     tie_embeddings=hf.get("tie_word_embeddings", False),
                     norm_eps=hf.get("rms_norm_eps", 1e-6), rope_theta=float(theta))


def to_transformers(model: GPT, eos: int = 0) -> Any:
    """The same network as a `transformers` model in memory (GPTNeoForCausalLM / LlamaForCausalLM)."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_config(hf_config(model.cfg, eos))
    hf.load_state_dict(to_hf_state(model), strict=False)  # tied lm_head comes from the embeddings
    hf.tie_weights()
    return hf.eval()


# ---------------------------------------------------------------- export
def export_hf(loaded: LoadedModel, out_dir: str | Path, sampling: Sampling) -> Path:
    """Write a `transformers` folder (weights, config, tokenizer, model card) for `loaded`, with
    `sampling` as its generation_config.json, which `generate` starts from (HF's own defaults
    would cut the distribution at top-k 50 and stop after 20 tokens), writing until the story
    ends or the context is full."""
    from transformers import GenerationConfig, PreTrainedTokenizerFast

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = loaded.model.cfg
    config = hf_config(cfg, loaded.tokenizer.eos_id)
    config.architectures = ["GPTNeoForCausalLM" if cfg.arch == "neo" else "LlamaForCausalLM"]
    config.dtype = "float32"
    save_tensors(to_hf_state(loaded.model), out / "model.safetensors", metadata={"format": "pt"})
    write_json(out / "config.json", config.to_dict())
    tok = PreTrainedTokenizerFast(tokenizer_object=loaded.tokenizer.hf, bos_token=EOS_TEXT,
                                  eos_token=EOS_TEXT, unk_token=EOS_TEXT,
                                  model_max_length=cfg.context_length)
    tok.save_pretrained(str(out))
    eos = loaded.tokenizer.eos_id
    how: dict[str, Any] = {"do_sample": False}  # greedy (HF refuses sampling settings beside it)
    if sampling.temperature > 0:
        how = {"do_sample": True, "temperature": sampling.temperature, "top_p": sampling.top_p,
               "top_k": sampling.top_k, "min_p": sampling.min_p or None}
    if sampling.repetition_penalty != 1:
        how["repetition_penalty"] = sampling.repetition_penalty
    # max_length, not max_new_tokens: a story stops where the model's positions end, whatever the prompt
    GenerationConfig(**how, max_length=cfg.context_length, bos_token_id=eos, eos_token_id=eos,
                     pad_token_id=eos).save_pretrained(str(out))
    with atomic_write(out / "README.md") as f:
        f.write(model_card(loaded, config.architectures[0]))
    return out


def model_card(loaded: LoadedModel, architecture: str) -> str:
    cfg = loaded.model.cfg
    n = loaded.model.num_params()
    training = loaded.config.get("training")
    lines = [
        "---", "license: mit", "library_name: transformers", "pipeline_tag: text-generation",
        "tags:", "- tinystories", "- text-generation", f"- {'gpt_neo' if cfg.arch == 'neo' else 'llama'}",
        "datasets:", "- roneneldan/TinyStories", "---", "",
        f"# {loaded.name}: a tiny story-writing language model", "",
        ("Trained with the `tinystories` toolkit on TinyStories-style children's stories "
        "(Eldan & Li 2023, *How Small Can Language Models Be and Still Speak Coherent English?*)."), "",
        "## Model", "",
        f"- Architecture: `{architecture}` ({'GPT-Neo style' if cfg.arch == 'neo' else 'Llama style'})",
        f"- Parameters: {n:,} ({loaded.model.num_params(non_embedding=True):,} non-embedding)",
        f"- Layers {cfg.n_layer}, heads {cfg.n_head}, hidden size {cfg.d_model}, MLP {cfg.ffn_dim}",
        f"- Vocabulary {cfg.vocab_size}, context {cfg.context_length} tokens"
        + (f", local attention window {cfg.local_window} on odd layers" if cfg.local_window else ""),
        "", "Stories start after the `<|endoftext|>` token and end with it.", "",
        "## Usage", "", "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
        'tok = AutoTokenizer.from_pretrained("PATH_OR_ID")',
        'model = AutoModelForCausalLM.from_pretrained("PATH_OR_ID")',
        'ids = tok("<|endoftext|>Once upon a time", return_tensors="pt").input_ids',
        "out = model.generate(ids)  # sampling settings: generation_config.json",
        "print(tok.decode(out[0][1:]))", "```", "",
        "Or with tinystories: `tinystories import-hf PATH_OR_ID my-model`.", "",
    ]
    if training:
        lines += ["## Training configuration", "", "```json", json.dumps(training, indent=2), "```", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------- import
def resolve_hf_folder(name: str | Path) -> Path:
    """A local folder as it is, or a Hub id resolved from the local Hugging Face cache only."""
    path = Path(name)
    if path.exists():
        return path
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(str(name), local_files_only=True))
    except (LocalEntryNotFoundError, HFValidationError, OSError) as exc:
        raise TinyStoriesError(
            f"{name!s} is neither a local folder nor a model in the local Hugging Face cache "
            f"(nothing is downloaded here; fetch it first with `huggingface-cli download {name}`)"
        ) from exc


def _hf_tokenizer(folder: Path) -> Tokenizer:
    if (folder / "tokenizer.json").exists():
        return Tokenizer.from_file(folder / "tokenizer.json")
    from transformers import AutoTokenizer  # vocab.json + merges.txt: let transformers convert

    try:
        fast = AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError) as exc:
        raise TinyStoriesError(f"{folder}: no usable tokenizer ({exc})") from exc
    return Tokenizer(fast.backend_tokenizer)


def load_hf_model(folder: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Convert a transformers GPT-Neo or Llama causal LM folder (or cached Hub id) into our GPT."""
    from transformers import AutoModelForCausalLM

    path = resolve_hf_folder(folder)
    hf_cfg = read_config_raw(path)
    cfg = config_from_hf(hf_cfg, str(path / "config.json"))
    tokenizer = _hf_tokenizer(path)
    if tokenizer.vocab_size > cfg.vocab_size:
        raise TinyStoriesError(f"{path}: tokenizer has {tokenizer.vocab_size} tokens, more than the "
                               f"model's vocabulary of {cfg.vocab_size}")
    try:
        hf_model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    except (OSError, ValueError) as exc:
        raise TinyStoriesError(f"{path}: transformers could not load the weights ({exc})") from exc
    model = from_hf_state(cfg, hf_model.state_dict()).to(device).eval()
    config = {"model": asdict(cfg), "tokenizer_fingerprint": tokenizer.fingerprint,
              "imported_from": str(folder), "hf_model_type": hf_cfg.get("model_type")}
    return LoadedModel(model, tokenizer, config, path)
