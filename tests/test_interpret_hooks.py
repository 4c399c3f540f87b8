"""run_with_cache reproduces the model's own forward pass, activation by activation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tinystories.data.tokenizer import Tokenizer
from tinystories.interpret.hooks import run_with_cache
from tinystories.model.gpt import GPT, GPTConfig

CASES = {
    "neo": {"arch": "neo"},
    "neo-local": {"arch": "neo", "local_window": 5},  # window smaller than the sequence
    "modern": {"arch": "modern"},
}


def make_model(**kw: object) -> GPT:
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=97, context_length=32, n_layer=3, n_head=4, d_model=32, **kw)
    model = GPT(cfg).eval()
    # Random init is nearly uniform attention; sharpen it so patterns differ from head to head.
    with torch.no_grad():
        for block in model.blocks:
            block.attn.qkv.weight.mul_(8.0)
    return model


@pytest.mark.parametrize("case", CASES)
def test_cache_reproduces_model(case: str) -> None:
    model = make_model(**CASES[case])
    idx = torch.randint(0, 97, (2, 20), generator=torch.Generator().manual_seed(1))
    attn_outputs: dict[int, torch.Tensor] = {}
    hooks = [block.attn.register_forward_hook(
        lambda mod, inp, out, i=i: attn_outputs.__setitem__(i, out)) for i, block in enumerate(model.blocks)]
    mlp_hidden: dict[int, torch.Tensor] = {}
    hooks += [block.mlp.register_forward_hook(
        lambda mod, inp, out, i=i: mlp_hidden.__setitem__(i, mod.hidden(inp[0]))) for i, block in enumerate(model.blocks)]
    with torch.no_grad():
        expected, _ = model(idx)
    for h in hooks:
        h.remove()

    logits, cache = run_with_cache(model, idx)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.lm_head(model.norm(cache["resid_post", -1])), expected, atol=1e-5, rtol=1e-5)
    for layer, block in enumerate(model.blocks):
        pattern = cache["attn", layer]
        assert pattern.shape == (2, 4, 20, 20)
        torch.testing.assert_close(pattern.sum(-1), torch.ones(2, 4, 20))
        assert pattern.triu(1).abs().max() == 0  # causal
        # patterns @ V through the model's own output projection = the model's attention output
        z = pattern @ cache["v", layer]
        recon = block.attn.out(z.transpose(1, 2).reshape(2, 20, -1))
        torch.testing.assert_close(recon, attn_outputs[layer], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(cache["attn_out", layer], attn_outputs[layer], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(cache["mlp_post", layer], mlp_hidden[layer], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(cache["resid_post", layer],
                                   cache["resid_pre", layer] + cache["attn_out", layer] + cache["mlp_out", layer])
        if layer + 1 < model.cfg.n_layer:
            assert torch.equal(cache["resid_post", layer], cache["resid_pre", layer + 1])
        if block.attn.window:  # local layer: nothing beyond the window
            t = torch.arange(20)
            far = (t[:, None] - t[None, :]) >= block.attn.window
            assert pattern[..., far].abs().max() == 0
    assert cache.stack("attn").shape == (3, 2, 4, 20, 20)


def test_cache_with_left_padding_matches_unpadded_row() -> None:
    model = make_model(arch="modern")
    row = torch.randint(0, 97, (1, 12), generator=torch.Generator().manual_seed(2))
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), row], dim=1)
    alone, cache_alone = run_with_cache(model, row)
    logits, cache = run_with_cache(model, padded, pad=torch.tensor([3]))
    torch.testing.assert_close(logits[:, 3:], alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cache["attn", 1][..., 3:, 3:], cache_alone["attn", 1], atol=1e-5, rtol=1e-5)


def test_missing_key_names_the_available_ones() -> None:
    _, cache = run_with_cache(make_model(), torch.zeros(1, 4, dtype=torch.long))
    with pytest.raises(KeyError, match="mlp_post"):
        cache["nope", 0]


def test_imported_gpt_neo_patterns_match_transformers(tmp_path: Path, tokenizer: Tokenizer) -> None:
    """A Hugging Face GPT-Neo (global + local layer), converted to our GPT: same logits and attention weights."""
    from transformers import GPTNeoConfig, GPTNeoForCausalLM

    from tinystories.model.checkpoint import load_any

    torch.manual_seed(0)
    hf_cfg = GPTNeoConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_layers=2, num_heads=4,
                          intermediate_size=64, max_position_embeddings=32, window_size=4,
                          attention_types=[[["global", "local"], 1]], embed_dropout=0.0,
                          attention_dropout=0.0, resid_dropout=0.0, attn_implementation="eager")
    hf = GPTNeoForCausalLM(hf_cfg).eval()
    with torch.no_grad():  # sharper attention than the init, so the comparison means something
        for layer in hf.transformer.h:
            layer.attn.attention.q_proj.weight.mul_(10.0)
    hf.save_pretrained(tmp_path)
    tokenizer.save(tmp_path / "tokenizer.json")
    model = load_any(tmp_path).model
    idx = torch.tensor([[tokenizer.eos_id] + tokenizer.encode("Lily saw a big dog. She ran to Tom and said hi.")])
    with torch.no_grad():
        ref = hf(idx, output_attentions=True)
    logits, cache = run_with_cache(model, idx)
    torch.testing.assert_close(logits, ref.logits, atol=1e-4, rtol=1e-4)
    for layer in range(2):
        torch.testing.assert_close(cache["attn", layer], ref.attentions[layer], atol=1e-5, rtol=1e-4)
