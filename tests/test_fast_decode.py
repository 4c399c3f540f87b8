"""The fused decode step (infer/fast.py) against the reference, GPT.forward with a KV cache."""

from __future__ import annotations

import pytest
import torch

from tinystories.infer import sampling
from tinystories.infer.fast import FastDecoder, decoder_for
from tinystories.infer.params import SamplingParams
from tinystories.infer.sampling import generate
from tinystories.interpret.hooks import ablate_heads, patched
from tinystories.model.gpt import GPT, GPTConfig

ARCHS = {"neo": {"arch": "neo"}, "neo-local": {"arch": "neo", "local_window": 5}, "modern": {"arch": "modern"},
         "modern-relu2-qknorm-untied": {"arch": "modern", "mlp": "relu2", "qk_norm": True, "tie_embeddings": False}}


def model(**kw: object) -> GPT:
    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=97, context_length=40, n_layer=3, n_head=4, d_model=32, **kw)).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(2)
    return m


@pytest.mark.parametrize("arch", ARCHS)
def test_step_logits_equal_the_forward_pass(arch: str) -> None:
    m = model(**ARCHS[arch])
    fast = FastDecoder(m)
    idx = torch.randint(0, 97, (3, 6), generator=torch.Generator().manual_seed(1))
    pad = torch.tensor([0, 2, 5])  # left padding, as batched prompts have
    ref, mine = m.new_cache(3, 40, pad.clone()), m.new_cache(3, 40, pad.clone())
    with torch.no_grad():
        m(idx, cache=ref)
        m(idx, cache=mine)
        token = torch.tensor([3, 7, 11])
        for _ in range(30):  # past the local window, to the end of the context
            expected = m(token[:, None], cache=ref)[0][:, -1]
            got = fast.step(token, mine)
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
            token = expected.argmax(-1)
    torch.testing.assert_close(mine.k[:, :, :, :ref.length], ref.k[:, :, :, :ref.length])


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("params", [SamplingParams(max_new_tokens=30, temperature=0, stop_at_eos=False),
                                    SamplingParams(max_new_tokens=30, temperature=1.0, top_p=0.9, seed=3)])
def test_generation_is_token_for_token_the_same(arch: str, params: SamplingParams,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    m = model(**ARCHS[arch])
    prompts = [[0, 5, 6], [0, 9], [0, 1, 2, 3, 4]]
    fast = generate(m, prompts, params, eos_id=0)
    monkeypatch.setattr(sampling, "decoder_for", lambda model: None)  # the plain forward pass
    assert fast == generate(m, prompts, params, eos_id=0)


def test_hooks_and_training_mode_get_the_plain_forward_pass() -> None:
    m = model()
    assert decoder_for(m) is not None
    with patched(m, ablate_heads([(0, 1)])):
        assert decoder_for(m) is None  # a patch must change what is generated
    m.train()
    assert decoder_for(m) is None
    m.eval()
    first = decoder_for(m)
    with torch.no_grad():
        m.lm_head.weight.add_(1.0)  # new weights: a new decoder, not stale copies
    assert decoder_for(m) is not first
    second = decoder_for(m)
    m.double()  # new storage, same versions
    third = decoder_for(m)
    assert third is not second and third is not None and third.head.dtype == torch.float64


def test_the_decoder_cache_lets_models_go() -> None:
    import gc
    import weakref

    m = model()
    assert decoder_for(m) is not None
    gone = weakref.ref(m)
    del m
    gc.collect()
    assert gone() is None
