import pytest
import torch

from tinystories.errors import TinyStoriesError
from tinystories.infer.sampling import (
    SamplingConfig,
    candidates,
    filter_logits,
    generate,
    generate_reference,
    sample_next,
)
from tinystories.model.gpt import GPT, GPTConfig

PROMPTS = [[0, 5, 6, 7], [0, 9], [0, 1, 2, 3, 4, 5, 6, 7, 8]]


@pytest.fixture(params=[{"arch": "neo"}, {"arch": "neo", "local_window": 6}, {"arch": "modern"}])
def model(request: pytest.FixtureRequest) -> GPT:
    torch.manual_seed(1)
    return GPT(GPTConfig(vocab_size=64, context_length=48, n_layer=2, n_head=2, d_model=16,
                         **request.param)).eval()


@pytest.mark.parametrize("cfg", [
    SamplingConfig(max_new_tokens=25, temperature=0, stop_at_eos=False),
    SamplingConfig(max_new_tokens=25, temperature=0.9, top_k=20, top_p=0.9, seed=7, stop_at_eos=False),
    SamplingConfig(max_new_tokens=25, temperature=1.5, seed=3),
])
def test_kv_cache_sampling_equals_no_cache_sampling(model: GPT, cfg: SamplingConfig) -> None:
    assert generate(model, PROMPTS, cfg, eos_id=0) == generate_reference(model, PROMPTS, cfg, eos_id=0)


def test_batched_greedy_equals_one_at_a_time(model: GPT) -> None:
    cfg = SamplingConfig(max_new_tokens=20, temperature=0, stop_at_eos=False)
    batched = generate(model, PROMPTS, cfg, eos_id=0)
    assert batched == [generate(model, [p], cfg, eos_id=0)[0] for p in PROMPTS]


def test_seed_reproduces_and_stops_at_context_end(model: GPT) -> None:
    cfg = SamplingConfig(max_new_tokens=500, temperature=1.0, seed=11, stop_at_eos=False)
    a, b = generate(model, PROMPTS, cfg, 0), generate(model, PROMPTS, cfg, 0)
    assert a == b
    assert [len(p) + len(o) for p, o in zip(PROMPTS, a)] == [48 - 9 + len(p) for p in PROMPTS]


def test_stops_at_end_of_story() -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=16, context_length=32, n_layer=1, n_head=1, d_model=8)).eval()
    with torch.no_grad():
        model.lm_head.weight.zero_()
        model.lm_head.weight[3, 0] = 50.0  # after any token, EOS (3) is near certain
        model.norm.bias.zero_()
        model.norm.bias[0] = 1.0
    out = generate(model, [[1, 2]], SamplingConfig(max_new_tokens=10, temperature=1.0, seed=0), eos_id=3)
    assert out == [[]]


def test_top_k_and_top_p_masks() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    keep_k = filter_logits(logits, SamplingConfig(top_k=2)).isfinite()
    assert keep_k.tolist() == [[True, True, False, False]]
    keep_p = filter_logits(logits, SamplingConfig(top_p=0.8)).isfinite()
    assert keep_p.tolist() == [[True, True, False, False]]
    keep_p = filter_logits(logits, SamplingConfig(top_p=0.81)).isfinite()
    assert keep_p.tolist() == [[True, True, True, False]]
    keep_tiny = filter_logits(logits, SamplingConfig(top_p=0.01)).isfinite()
    assert keep_tiny.tolist() == [[True, False, False, False]]


@pytest.mark.parametrize("cfg,needle", [
    (SamplingConfig(temperature=-1), "temperature"), (SamplingConfig(top_p=0), "top_p"),
    (SamplingConfig(top_k=-2), "top_k"), (SamplingConfig(max_new_tokens=-1), "max_new_tokens"),
])
def test_bad_sampling_settings(model: GPT, cfg: SamplingConfig, needle: str) -> None:
    with pytest.raises(TinyStoriesError, match=needle):
        generate(model, PROMPTS, cfg, 0)


def test_prompt_longer_than_context(model: GPT) -> None:
    with pytest.raises(TinyStoriesError, match="longer than the model's context of 48"):
        generate(model, [list(range(1, 60))], SamplingConfig(), 0)


@pytest.mark.parametrize("cfg", [
    SamplingConfig(temperature=0.7), SamplingConfig(top_k=5), SamplingConfig(top_p=0.9),
    SamplingConfig(temperature=1.3, top_k=300, top_p=0.97), SamplingConfig(temperature=0.2, top_p=0.5),
    SamplingConfig(temperature=5.0, top_p=0.999),  # a flat distribution: the nucleus outgrows 64 tokens
])
def test_fast_candidates_equal_the_reference_filter(cfg: SamplingConfig) -> None:
    torch.manual_seed(0)
    logits = torch.randn(6, 1000) * 3
    expected = filter_logits(logits, cfg).softmax(-1)
    probs, ids = candidates(logits, cfg)
    got = torch.zeros_like(expected).scatter(-1, ids, probs)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("cfg", [SamplingConfig(), SamplingConfig(top_p=0.9), SamplingConfig(top_k=3)])
def test_sampling_follows_the_filtered_distribution(cfg: SamplingConfig) -> None:
    logits = torch.log(torch.tensor([0.4, 0.3, 0.15, 0.1, 0.05])).repeat(40_000, 1)
    draws = sample_next(logits, cfg, torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=5).float() / len(draws)
    expected = filter_logits(logits[:1], cfg).softmax(-1)[0]
    torch.testing.assert_close(freq, expected, atol=0.01, rtol=0)
