"""Hook points: recording reproduces the model's own forward pass, activation by activation;
patching changes exactly what it says; another thread's forward pass is left alone."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tinystories.interpret.hooks import (
    ablate_heads,
    hook_name,
    patched,
    run_with_cache,
    run_with_hooks,
    set_neurons,
)
from tinystories.model.gpt import GPT, GPTConfig
from tinystories.tokenizer import Tokenizer

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

    def neurons(mlp: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:  # written out by hand
        if hasattr(mlp, "fc"):
            return F.gelu(mlp.fc(x), approximate="tanh")
        return F.silu(mlp.gate(x)) * mlp.up(x)

    hooks += [block.mlp.register_forward_hook(
        lambda mod, inp, out, i=i: mlp_hidden.__setitem__(i, neurons(mod, inp[0]))) for i, block in enumerate(model.blocks)]
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

    from tinystories.model.loader import load_any

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


def test_zeroing_a_head_removes_exactly_its_share() -> None:
    """Zero-ablating head h of a layer = subtracting that head's slice of the output projection."""
    model = make_model(arch="modern")
    idx = torch.randint(0, 97, (2, 16), generator=torch.Generator().manual_seed(3))
    _, cache = run_with_cache(model, idx)
    z = cache["z", 1].clone()
    z[:, 2] = 0
    block = model.layers()[1]
    expected_attn_out = block.attn.out(z.transpose(1, 2).reshape(2, 16, -1))
    seen: dict[str, torch.Tensor] = {}
    logits = run_with_hooks(model, idx, {**ablate_heads([(1, 2)]),
                                         hook_name("attn_out", 1): lambda x: seen.setdefault("out", x)})
    torch.testing.assert_close(seen["out"], expected_attn_out, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(logits, model(idx)[0])  # and it changed the prediction
    with torch.no_grad():
        torch.testing.assert_close(model(idx)[0], run_with_hooks(model, idx, {}))  # hooks gone afterwards


def test_fixing_a_neuron_sets_it_everywhere() -> None:
    model = make_model(arch="neo")
    idx = torch.randint(0, 97, (1, 10), generator=torch.Generator().manual_seed(4))
    with patched(model, set_neurons(0, {5: 3.0, 7: -1.0})):
        _, cache = run_with_cache(model, idx, names=[hook_name("mlp_post", 0), hook_name("mlp_out", 0)])
    post = cache["mlp_post", 0]
    assert (post[..., 5] == 3.0).all() and (post[..., 7] == -1.0).all()
    torch.testing.assert_close(cache["mlp_out", 0], model.layers()[0].mlp.proj(post))


def test_hooks_leave_other_threads_alone() -> None:
    """A server's engine thread runs the same model while the playground records attention."""
    model = make_model(arch="neo")
    idx = torch.randint(0, 97, (1, 12), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        clean = model(idx)[0]
    seen: list[int] = []
    other: dict[str, torch.Tensor] = {}
    with patched(model, {**ablate_heads([(0, 0), (0, 1), (0, 2), (0, 3)]),
                         hook_name("embed"): lambda x: seen.append(threading.get_ident())}):
        def run() -> None:
            with torch.no_grad():
                other["logits"] = model(idx)[0]
        t = threading.Thread(target=run)
        t.start()
        t.join()
        with torch.no_grad():
            mine = model(idx)[0]
    torch.testing.assert_close(other["logits"], clean)  # the other thread saw no patch
    assert not torch.allclose(mine, clean) and seen == [threading.get_ident()]


def test_unknown_hook_point_is_named() -> None:
    with pytest.raises(KeyError, match="no hook point named"):
        run_with_hooks(make_model(), torch.zeros(1, 3, dtype=torch.long), {"blocks.9.hook_z": lambda x: x})
