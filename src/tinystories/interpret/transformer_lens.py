"""Our models as TransformerLens `HookedTransformer`s: `to_transformer_lens(loaded)`.

Anything `model.loader.load_any` reads (our folders in both architectures, Hugging Face
GPT-Neo / Llama folders, which load into our `GPT`) converts, because the conversion starts
from our `GPT`: a `HookedTransformerConfig` with the same arithmetic, and a state dict in
TransformerLens's layout. Logits agree with ours to 1e-4 (tested for neo and modern).

What maps onto what:

* neo: learned positions (``standard``), LayerNorm (``LN``), GELU with the tanh
  approximation (``gelu_new``), scores *not* divided by sqrt(head_dim)
  (``use_attn_scale=False``, as TransformerLens's own GPT-Neo), local attention on odd
  layers (``attn_types`` + ``window_size``, the same "key within the last W tokens" rule);
* modern: RoPE in Llama's rotate-half layout (``rotary``, ``rotary_adjacent_pairs=False``,
  ``rotary_base`` = our theta), RMSNorm (``RMS``), SwiGLU as a gated MLP (``W_gate`` = our
  gate, ``W_in`` = our up, ``silu``), ReLU² (``relu2``), QK-norm (``use_qk_norm``, per-head
  RMSNorm before RoPE, as ours).
* Our unbiased layers get zero biases; a tied output layer becomes an untied copy
  (TransformerLens keeps ``W_U`` apart from ``W_E``).

No weight processing is applied (no LayerNorm folding, no centring): the activations at
every hook point are the ones our model computes, so an SAE trained on one runs on the other.
`from_pretrained_no_processing` is TransformerLens's name for the same choice.

The model's tokenizer is handed over as a `transformers` fast tokenizer whose BOS is our
``<|endoftext|>``: ``tl.to_tokens(text)`` (which prepends BOS) is then ``encode_story(text)``.

Hook points, ours against TransformerLens's (L = layer; shapes ours / theirs where they differ):

=============================== ======================================= ===========================================
ours                            TransformerLens                         note
=============================== ======================================= ===========================================
``hook_embed``                  ``blocks.0.hook_resid_pre``             ours is token + position; TL's
                                                                        ``hook_embed`` is the token part alone
``blocks.L.hook_resid_pre``     ``blocks.L.hook_resid_pre``
``blocks.L.attn.hook_q/k``      neo: ``blocks.L.attn.hook_q/k``;        ours [B, H, T, dh] after QK-norm and RoPE;
                                modern: ``blocks.L.attn.hook_rot_q/k``  TL [B, T, H, dh] (``hook_q`` is pre-RoPE)
``blocks.L.attn.hook_v``        ``blocks.L.attn.hook_v``                [B, H, T, dh] / [B, T, H, dh]
``blocks.L.attn.hook_pattern``  ``blocks.L.attn.hook_pattern``          [B, H, Tq, Tk] in both
``blocks.L.attn.hook_z``        ``blocks.L.attn.hook_z``                [B, H, T, dh] / [B, T, H, dh]
``blocks.L.hook_attn_out``      ``blocks.L.hook_attn_out``
``blocks.L.hook_resid_mid``     ``blocks.L.hook_resid_mid``
``blocks.L.mlp.hook_post``      ``blocks.L.mlp.hook_post``              the neurons [B, T, ffn]
``blocks.L.hook_mlp_out``       ``blocks.L.hook_mlp_out``
``blocks.L.hook_resid_post``    ``blocks.L.hook_resid_post``
``hook_final``                  none                                    TL's ``ln_final.hook_normalized`` is before
                                                                        the norm's weight (and bias), ours after
=============================== ======================================= ===========================================
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from tinystories.errors import TinyStoriesError
from tinystories.model.checkpoint import LoadedModel
from tinystories.model.gpt import GPT, GPTConfig
from tinystories.tokenizer import EOS_TEXT

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer, HookedTransformerConfig

INSTALL = "pip install 'tinystories[interp]'"

# Our hook point (with L for the layer) -> TransformerLens's, where the activation is the same tensor.
SAME_TENSOR = {"blocks.L.hook_resid_pre": "blocks.L.hook_resid_pre",
               "blocks.L.hook_attn_out": "blocks.L.hook_attn_out",
               "blocks.L.hook_resid_mid": "blocks.L.hook_resid_mid",
               "blocks.L.mlp.hook_post": "blocks.L.mlp.hook_post",
               "blocks.L.hook_mlp_out": "blocks.L.hook_mlp_out",
               "blocks.L.hook_resid_post": "blocks.L.hook_resid_post",
               "blocks.L.attn.hook_pattern": "blocks.L.attn.hook_pattern"}


def tl_hook_name(name: str) -> str:
    """TransformerLens's hook point holding the same [B, T, ...] tensor as our hook point `name`.

    Only for hook points whose tensors are identical in both (the residual stream, attention
    and MLP outputs, neurons, attention pattern, the embedding); q/k/v/z differ in layout and
    ``hook_final`` has no twin (see the table): they raise.
    """
    if name == "hook_embed":
        return "blocks.0.hook_resid_pre"
    parts = name.split(".")
    if len(parts) >= 3 and parts[0] == "blocks" and parts[1].isdigit():
        key = ".".join(["blocks", "L", *parts[2:]])
        if key in SAME_TENSOR:
            return SAME_TENSOR[key].replace(".L.", f".{parts[1]}.")
    raise TinyStoriesError(f"hook point {name!r} has no TransformerLens twin holding the same tensor "
                           "(q/k/v/z differ in layout, hook_final has none); see the table in "
                           "interpret/transformer_lens.py")


def our_hook_name(tl_name: str) -> str:
    """The inverse of `tl_hook_name`: our hook point holding the tensor at TransformerLens's `tl_name`
    (``blocks.0.hook_resid_pre`` -> ``blocks.0.hook_resid_pre``, which is our ``hook_embed`` too)."""
    parts = tl_name.split(".")
    if len(parts) >= 3 and parts[0] == "blocks" and parts[1].isdigit():
        key = ".".join(["blocks", "L", *parts[2:]])
        ours = {v: k for k, v in SAME_TENSOR.items()}.get(key)
        if ours:
            return ours.replace(".L.", f".{parts[1]}.")
    raise TinyStoriesError(f"TransformerLens hook {tl_name!r} has no twin among our hook points that holds "
                           "the same tensor; see the table in interpret/transformer_lens.py")


def import_transformer_lens() -> Any:
    try:
        import transformer_lens
    except ImportError as exc:
        raise TinyStoriesError(f"TransformerLens is not installed: {INSTALL}") from exc
    return transformer_lens


def tl_config(cfg: GPTConfig, name: str = "tinystories") -> HookedTransformerConfig:
    """The `HookedTransformerConfig` computing what `GPT(cfg)` computes."""
    tl = import_transformer_lens()
    neo = cfg.arch == "neo"
    act = {"gelu": "gelu_new", "swiglu": "silu", "relu2": "relu2"}[cfg.activation]
    local = neo and cfg.local_window > 0
    return tl.HookedTransformerConfig(
        model_name=name, d_model=cfg.d_model, d_head=cfg.head_dim, n_heads=cfg.n_head, n_layers=cfg.n_layer,
        n_ctx=cfg.context_length, d_vocab=cfg.vocab_size, d_mlp=cfg.ffn_dim, act_fn=act, eps=cfg.norm_eps,
        normalization_type="LN" if neo else "RMS", final_rms=not neo,
        positional_embedding_type="standard" if neo else "rotary",
        rotary_dim=None if neo else cfg.head_dim, rotary_base=cfg.rope_theta, rotary_adjacent_pairs=False,
        use_attn_scale=not neo, gated_mlp=cfg.activation == "swiglu", use_qk_norm=cfg.qk_norm,
        attn_types=["global" if i % 2 == 0 else "local" for i in range(cfg.n_layer)] if local else None,
        use_local_attn=local, window_size=cfg.local_window if local else None,
        original_architecture="GPTNeoForCausalLM" if neo else "LlamaForCausalLM",
        tokenizer_prepends_bos=False, default_prepend_bos=True, init_weights=False, dtype=torch.float32)


def tl_state(model: GPT) -> dict[str, torch.Tensor]:
    """Our weights in TransformerLens's layout (W_Q [H, d, dh], W_O [H, dh, d], W_in [d, ffn], ...)."""
    cfg = model.cfg
    H, dh, d = cfg.n_head, cfg.head_dim, cfg.d_model
    p = {k: v.detach().float() for k, v in model.state_dict().items()}
    zeros = torch.zeros
    state: dict[str, torch.Tensor] = {"embed.W_E": p["tok_emb.weight"], "unembed.W_U": p["lm_head.weight"].T,
                                      "unembed.b_U": zeros(cfg.vocab_size), "ln_final.w": p["norm.weight"]}
    if cfg.arch == "neo":
        state["pos_embed.W_pos"] = p["pos_emb.weight"]
        state["ln_final.b"] = p["norm.bias"]
    for i in range(cfg.n_layer):
        ours, tl = f"blocks.{i}.", f"blocks.{i}."
        q, k, v = p[ours + "attn.qkv.weight"].view(3, H, dh, d)  # rows of the fused projection: q, k, v
        for name, w in zip("QKV", (q, k, v), strict=True):
            state[tl + f"attn.W_{name}"] = w.transpose(1, 2)  # [H, d, dh]
            state[tl + f"attn.b_{name}"] = zeros(H, dh)
        state[tl + "attn.W_O"] = p[ours + "attn.out.weight"].T.reshape(H, dh, d)
        state[tl + "attn.b_O"] = p.get(ours + "attn.out.bias", zeros(d))
        if cfg.qk_norm:
            state[tl + "attn.q_norm.w"] = p[ours + "attn.q_norm.weight"]
            state[tl + "attn.k_norm.w"] = p[ours + "attn.k_norm.weight"]
        for n_ours, n_tl in (("norm1", "ln1"), ("norm2", "ln2")):
            state[tl + f"{n_tl}.w"] = p[ours + f"{n_ours}.weight"]
            if cfg.arch == "neo":
                state[tl + f"{n_tl}.b"] = p[ours + f"{n_ours}.bias"]
        if cfg.activation == "swiglu":
            state[tl + "mlp.W_gate"] = p[ours + "mlp.gate.weight"].T
            state[tl + "mlp.W_in"] = p[ours + "mlp.up.weight"].T
        else:
            state[tl + "mlp.W_in"] = p[ours + "mlp.fc.weight"].T
        state[tl + "mlp.b_in"] = p.get(ours + "mlp.fc.bias", zeros(cfg.ffn_dim))
        state[tl + "mlp.W_out"] = p[ours + "mlp.proj.weight"].T
        state[tl + "mlp.b_out"] = p.get(ours + "mlp.proj.bias", zeros(d))
    return {k: v.contiguous() for k, v in state.items()}


def hf_tokenizer(loaded: LoadedModel) -> Any:
    """The model's tokenizer as a `transformers` fast tokenizer, BOS = EOS = ``<|endoftext|>``."""
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_object=loaded.tokenizer.hf, bos_token=EOS_TEXT, eos_token=EOS_TEXT,
                                  pad_token=EOS_TEXT, add_bos_token=True,
                                  model_max_length=loaded.model.cfg.context_length)
    # TransformerLens reloads a tokenizer by name unless it says it adds BOS itself; ours has no Hub name.
    tok.init_kwargs.update(name_or_path=loaded.name or "tinystories", add_bos_token=True)
    return tok


def to_transformer_lens(loaded: LoadedModel, device: str | torch.device | None = None) -> HookedTransformer:
    """`loaded` (from `load_any`) as a `HookedTransformer` with the same logits, in eval mode.

    `device`: default the model's own. Raises a one-line `TinyStoriesError` when TransformerLens
    is missing or cannot express the model.
    """
    tl = import_transformer_lens()
    model = loaded.model
    device = device or model.tok_emb.weight.device
    tlm = tl.HookedTransformer(tl_config(model.cfg, loaded.name or "tinystories"), tokenizer=hf_tokenizer(loaded),
                               move_to_device=False, default_padding_side="right")
    state = tl_state(model)
    missing, unexpected = tlm.load_state_dict(state, strict=False)
    params = {n for n, _ in tlm.named_parameters()}
    if unexpected or params & set(missing):
        raise TinyStoriesError(f"TransformerLens {tl.__version__} cannot express this model "
                               f"(unmatched weights: {sorted(set(unexpected) | (params & set(missing)))[:4]})")
    return tlm.to(device, print_details=False).eval()
