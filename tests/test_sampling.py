import dataclasses

import pytest
import torch

from tinystories.errors import TinyStoriesError
from tinystories.infer import sampler
from tinystories.infer.engine import Engine
from tinystories.infer.offline import TokenIds, generate, run
from tinystories.infer.params import SamplingParams
from tinystories.infer.runner import Runner
from tinystories.infer.sampler import (
    _sample_in_torch,
    draw,
    new_generator,
    penalize,
    reference_probs,
    sample,
)
from tinystories.infer.sampling import generate_reference
from tinystories.infer.sequence import Sequence
from tinystories.model import native
from tinystories.model.decode import DecodeStep
from tinystories.model.gpt import GPT, GPTConfig

PROMPTS = [[0, 5, 6, 7], [0, 9], [0, 1, 2, 3, 4, 5, 6, 7, 8]]
LONG = [0, *range(1, 21)]  # 21 positions: a long prompt beside short ones


@pytest.fixture(params=["C", "PyTorch"])
def sampler_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> object:
    """`sample` drawing in C (sampler.c), then as PyTorch operations (TINYSTORIES_NATIVE=0)."""
    if request.param == "PyTorch":
        monkeypatch.setenv("TINYSTORIES_NATIVE", "0")
    sampler.library.cache_clear()
    if request.param == "C" and sampler.library() is None:
        pytest.skip("sampler.c cannot be built here")
    assert (sampler.library() is None) == (request.param == "PyTorch")
    yield request.param
    sampler.library.cache_clear()


@pytest.fixture(params=[{"arch": "neo"}, {"arch": "neo", "local_window": 6}, {"arch": "modern"}])
def model(request: pytest.FixtureRequest) -> GPT:
    torch.manual_seed(1)
    return GPT(GPTConfig(vocab_size=64, context_length=48, n_layer=2, n_head=2, d_model=16,
                         **request.param)).eval()


@pytest.mark.parametrize("cfg", [
    SamplingParams(max_new_tokens=25, temperature=0, stop_at_eos=False),
    SamplingParams(max_new_tokens=25, temperature=0.9, top_k=20, top_p=0.9, seed=7, stop_at_eos=False),
    SamplingParams(max_new_tokens=25, temperature=1.5, seed=3),
    SamplingParams(max_new_tokens=25, temperature=0.8, min_p=0.1, repetition_penalty=1.5, seed=4, stop_at_eos=False),
    SamplingParams(max_new_tokens=25, temperature=0, repetition_penalty=3.0, stop_at_eos=False),
])
def test_kv_cache_sampling_equals_no_cache_sampling(model: GPT, cfg: SamplingParams) -> None:
    prompts = [*PROMPTS, LONG]
    assert generate(model, TokenIds(0), prompts, cfg) == generate_reference(model, prompts, cfg, eos_id=0)


def test_steered_rows_equal_the_reference_and_keep_the_batch_on_the_decode_step(
        model: GPT, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows steered at the residual stream and at the MLP's neurons, beside a plain row: each
    writes what the reference writes with hooks adding its vectors, and after the prefill every
    token comes from the decode step (one steered request must not slow the others down)."""
    g = torch.Generator().manual_seed(3)
    steer = {"blocks.0.mlp.hook_post": 4 * torch.randn(model.cfg.ffn_dim, generator=g),
             "blocks.1.hook_resid_mid": 4 * torch.randn(model.cfg.d_model, generator=g)}
    rows = [steer, {}, {"blocks.0.mlp.hook_post": steer["blocks.0.mlp.hook_post"]}]
    params = SamplingParams(max_new_tokens=20, temperature=0.9, top_p=0.9, seed=2, stop_at_eos=False)
    engine = Engine(model, TokenIds(0), start=False)
    seqs = [engine.submit(p, params.for_row(i), adds=a) for i, (p, a) in enumerate(zip(PROMPTS, rows))]
    forwards = []
    plain = model.forward
    monkeypatch.setattr(model, "forward", lambda *a, **k: forwards.append(1) or plain(*a, **k))
    engine.run()
    stepped = native.library() is not None  # prompts prefill in the C step too
    assert len(forwards) == (0 if stepped else 20) and engine.steps == 19  # then 19 steps of all rows
    monkeypatch.undo()
    for i, (prompt, adds) in enumerate(zip(PROMPTS, rows)):
        with model.hooked({name: (lambda x, v=v: x + v) for name, v in adds.items()}):
            assert seqs[i].ids == generate_reference(model, [prompt], params.for_row(i), eos_id=0)[0]
    assert seqs[0].ids != seqs[1].ids


def test_a_row_writes_the_same_whatever_shares_its_batch(model: GPT) -> None:
    """Each row's log-probabilities, token by token, are the same bit for bit alone and in a batch
    beside longer, shorter and identical prompts: every prompt prefills through the C decode step,
    which computes each row by itself. So a seeded story never depends on what else a server or an
    evaluation batch is writing (a batched prefill's rounding made it, now and then)."""
    if native.library() is None:
        pytest.skip(f"the C step is unavailable here: {native.why_not()}")
    params = SamplingParams(max_new_tokens=12, seed=4, stop_at_eos=False)
    prompts = [*PROMPTS, PROMPTS[0], [0, 3], LONG, LONG]

    def logprobs(batch: list[list[int]]) -> list[list[float]]:
        got: list[list[float]] = [[] for _ in batch]
        run(model, TokenIds(0), batch, [params] * len(batch), emit=lambda i, ev: got[i].extend(ev.logprobs),
            logprobs=True)
        return got

    together = logprobs(prompts)
    assert all(len(row) == 12 for row in together)
    for prompt, row in zip(prompts, together):
        assert logprobs([prompt]) == [row]
    # A row's padding slots hold finite keys and values (`forward` on this cache later, under
    # hooks, weighs them by zero).
    _, cache = Runner(model).prefill([Sequence(p, params) for p in [*PROMPTS, LONG]], 0)
    assert cache.pad is not None and int(cache.pad.max()) > 0
    assert bool(torch.isfinite(cache.k).all()) and bool(torch.isfinite(cache.v).all())


@pytest.mark.parametrize("cfg", [SamplingParams(max_new_tokens=25, temperature=0, stop_at_eos=False),
                                 SamplingParams(max_new_tokens=25, top_p=0.9, seed=5, stop_at_eos=False)])
def test_one_token_prompts_prefill_in_the_decode_step(model: GPT, cfg: SamplingParams) -> None:
    """Stories from scratch: every prompt one token, which the engine prefills with a decode step."""
    prompts = [[0], [7], [0]]
    assert generate(model, TokenIds(0), prompts, cfg) == generate_reference(model, prompts, cfg, eos_id=0)


@pytest.mark.parametrize("prompt", [[10**9], [-5], [0, 3, 64]])
def test_a_token_outside_the_vocabulary_fails_its_row_with_a_clear_error(model: GPT, prompt: list[int]) -> None:
    """One-token prompts go to the C step, which indexes the embedding table unchecked (a crash, or
    another row's memory read): the id is checked where prompts enter the model."""
    with pytest.raises(TinyStoriesError, match=f"token id {prompt[-1]} .*outside the model's vocabulary"):
        run(model, TokenIds(0), [prompt], SamplingParams(max_new_tokens=3, temperature=0))


def test_batched_greedy_equals_one_at_a_time(model: GPT) -> None:
    cfg = SamplingParams(max_new_tokens=20, temperature=0, stop_at_eos=False)
    batched = generate(model, TokenIds(0), PROMPTS, cfg)
    assert batched == [generate(model, TokenIds(0), [p], cfg)[0] for p in PROMPTS]


def test_a_greedy_single_stream_asks_only_for_the_most_likely_token(
        model: GPT, monkeypatch: pytest.MonkeyPatch) -> None:
    """One greedy row that reports nothing: each step asks the decode step for its most likely
    token only (`DecodeStep.argmax`, which skips most of the output layer), and writes what a run
    that reports log-probabilities writes. A batch of greedy rows computes the logits."""
    if native.library() is None:
        pytest.skip(f"the C step is unavailable here: {native.why_not()}")
    cfg = SamplingParams(max_new_tokens=20, temperature=0, stop_at_eos=False)
    calls: list[int] = []
    plain = DecodeStep.argmax
    monkeypatch.setattr(DecodeStep, "argmax", lambda self, t, *a: calls.append(len(t)) or plain(self, t, *a))
    for prompt in PROMPTS:
        ids = generate(model, TokenIds(0), [prompt], cfg)
        assert calls == [1] * 19  # the first token comes from the prefill's logits
        calls.clear()
        reported: list[float] = []
        seqs = run(model, TokenIds(0), [prompt], cfg, emit=lambda i, ev, seen=reported: seen.extend(ev.logprobs),
                   logprobs=True)
        assert not calls and [s.ids for s in seqs] == ids
        assert len(reported) == 20 and all(lp <= 0 for lp in reported) and min(reported) < 0
    batched = generate(model, TokenIds(0), PROMPTS, cfg)
    assert not calls and batched == [generate(model, TokenIds(0), [p], cfg)[0] for p in PROMPTS]


def test_seed_reproduces_and_stops_at_context_end(model: GPT) -> None:
    cfg = SamplingParams(max_new_tokens=500, temperature=1.0, seed=11, stop_at_eos=False)
    a, b = generate(model, TokenIds(0), PROMPTS, cfg), generate(model, TokenIds(0), PROMPTS, cfg)
    assert a == b
    assert [len(p) + len(o) for p, o in zip(PROMPTS, a)] == [48] * len(PROMPTS)  # each row fills the context


def test_stops_at_end_of_story() -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=16, context_length=32, n_layer=1, n_head=1, d_model=8)).eval()
    with torch.no_grad():
        model.lm_head.weight.zero_()
        model.lm_head.weight[3, 0] = 50.0  # after any token, EOS (3) is near certain
        model.norm.bias.zero_()
        model.norm.bias[0] = 1.0
    out = generate(model, TokenIds(3), [[1, 2]], SamplingParams(max_new_tokens=10, temperature=1.0, seed=0))
    assert out == [[]]


def test_top_k_and_top_p_masks() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))

    def kept(**kw: float) -> list[bool]:
        return (reference_probs(logits, [SamplingParams(**kw)])[0] > 0).tolist()

    assert kept(top_k=2) == [True, True, False, False]
    assert kept(top_p=0.8) == [True, True, False, False]
    assert kept(top_p=0.81) == [True, True, True, False]
    assert kept(top_p=0.01) == [True, False, False, False]
    assert kept(min_p=0.4) == [True, True, False, False]  # 0.15 < 0.4 x 0.5
    assert kept(min_p=0.2) == [True, True, True, False]
    assert kept(min_p=0.4, top_k=1) == [True, False, False, False]  # the cuts meet


def test_the_repetition_penalty_acts_on_the_tokens_seen_only() -> None:
    """Hugging Face's rule: a seen token's positive logit is divided by the penalty, a negative one
    multiplied; unseen tokens and unpenalized rows are untouched, a token seen twice counts once."""
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0], [2.0, -1.0, 0.5, 3.0]])
    params = [SamplingParams(repetition_penalty=2.0), SamplingParams()]
    out = penalize(logits, params, [[0, 1, 0], [0, 1]])
    assert out.tolist() == [[1.0, -2.0, 0.5, 3.0], [2.0, -1.0, 0.5, 3.0]]
    assert penalize(logits, [SamplingParams()] * 2, [[], []]) is logits
    # Greedy rows take the most likely token of the penalized logits.
    assert sample(logits[:1], [SamplingParams(temperature=0, repetition_penalty=2.0)], [new_generator(params[1])],
                  seen=[[3]]).tolist() == [0]


def test_a_penalized_greedy_story_does_not_repeat_what_an_unpenalized_one_repeats(model: GPT) -> None:
    """With a strong penalty the engine's greedy rows write fewer repeated tokens: the penalty
    reaches the engine's rows (their own prompt and story), not only the sampler."""
    plain = SamplingParams(max_new_tokens=30, temperature=0, stop_at_eos=False)
    strong = dataclasses.replace(plain, repetition_penalty=10.0)

    def repeats(cfg: SamplingParams) -> int:
        return sum(len(s) - len(set(s)) for s in generate(model, TokenIds(0), PROMPTS, cfg))

    assert repeats(strong) < repeats(plain)


def test_tokens_tied_with_the_last_kept_one_stay_on_every_path() -> None:
    """The cut is a value: tokens tied with the last one kept all stay, whatever order a sort
    leaves them in (the PyTorch path, C, the reference): over many rows, the tokens drawn are
    exactly the kept ones."""
    x = torch.log(torch.tensor([[0.2, 0.4, 0.2, 0.1, 0.2, 0.1]]))
    expected = [True, True, True, False, True, False]
    assert (reference_probs(x, [SamplingParams(top_p=0.5)])[0] > 0).tolist() == expected
    params = [SamplingParams(top_p=0.5, seed=i) for i in range(2000)]
    draws = [new_generator(p).random() for p in params]
    assert (torch.bincount(_sample_in_torch(x.repeat(2000, 1), params, draws), minlength=6) > 0).tolist() == expected
    if sampler.library() is not None:
        drawn = sample(x.repeat(2000, 1), params, [new_generator(p) for p in params])
        assert (torch.bincount(drawn, minlength=6) > 0).tolist() == expected


@pytest.mark.parametrize("kwargs,needle", [
    ({"temperature": -1}, "temperature"), ({"temperature": float("nan")}, "temperature"), ({"top_p": 0}, "top_p"),
    ({"top_p": float("nan")}, "top_p"), ({"top_k": -2}, "top_k"), ({"top_k": 2**63}, "top_k"),
    ({"max_new_tokens": -1}, "max_new_tokens"), ({"seed": 2**64}, "seed"), ({"seed": -(2**63) - 1}, "seed"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"), ({"top_k": 1.5}, "top_k"), ({"temperature": "hot"}, "temperature"),
    ({"min_p": -0.1}, "min_p"), ({"min_p": 1.5}, "min_p"), ({"repetition_penalty": 0}, "repetition_penalty"),
    ({"repetition_penalty": 11}, "repetition_penalty"),
])
def test_bad_sampling_settings(kwargs: dict, needle: str) -> None:
    with pytest.raises(TinyStoriesError, match=needle):
        SamplingParams(**kwargs)


def test_prompt_longer_than_context(model: GPT) -> None:
    with pytest.raises(TinyStoriesError, match="a prompt of 59 tokens: it needs 1 to 48"):
        generate(model, TokenIds(0), [list(range(1, 60))], SamplingParams())


CASES = [
    SamplingParams(temperature=0.7), SamplingParams(top_k=5), SamplingParams(top_p=0.9),
    SamplingParams(temperature=1.3, top_k=300, top_p=0.97), SamplingParams(temperature=0.2, top_p=0.5),
    SamplingParams(temperature=2.0, top_p=0.999),  # a flat distribution: the nucleus outgrows 64 tokens
    SamplingParams(temperature=0.8, min_p=0.1), SamplingParams(temperature=1.2, top_k=100, top_p=0.95, min_p=0.02),
]


@pytest.mark.parametrize("scale", [0.3, 3.0])  # flat (nuclei of most of the vocabulary) and peaked
def test_sampler_draws_what_the_reference_draws(sampler_path: str, scale: float) -> None:
    """Rows with different settings in one batch: each draws exactly the reference's token, in C
    and as PyTorch operations; with tied logits too (the cut is a value: ties stay together)."""
    torch.manual_seed(0)
    logits = torch.randn(60, 1000) * scale
    logits[:, :100] = logits[:, :100].round(decimals=1)
    params = [CASES[i % len(CASES)].for_row(i) if i % 7 else SamplingParams(temperature=0) for i in range(60)]
    params = [p if p.greedy else dataclasses.replace(p, seed=i) for i, p in enumerate(params)]
    got = sample(logits, params, [new_generator(p) for p in params])
    for i, p in enumerate(params):
        if p.greedy:
            assert got[i] == logits[i].argmax()
            continue
        u = torch.tensor([new_generator(p).random()])
        assert got[i] == draw(reference_probs(logits[i:i + 1], [p]), u)[0], (i, p)
    # The decode step's most likely tokens serve a batch of greedy rows in place of the logits.
    greedy = [p for p in params if p.greedy]
    best = logits[:len(greedy)].argmax(-1)
    assert sample(None, greedy, [new_generator(p) for p in greedy], best) is best
    assert sample(logits[:len(greedy)], greedy, [new_generator(p) for p in greedy]).tolist() == best.tolist()


@pytest.mark.parametrize("cfg", [SamplingParams(seed=0), SamplingParams(top_p=0.9, seed=0),
                                 SamplingParams(top_k=3, seed=0), SamplingParams(min_p=0.3, seed=0)])
def test_sampling_follows_the_filtered_distribution(cfg: SamplingParams, sampler_path: str) -> None:
    logits = torch.log(torch.tensor([0.4, 0.3, 0.15, 0.1, 0.05])).repeat(20_000, 1)
    rows = [cfg.for_row(i) for i in range(len(logits))]
    draws = sample(logits, rows, [new_generator(p) for p in rows])
    freq = torch.bincount(draws, minlength=5).float() / len(draws)
    expected = reference_probs(logits[:1], [cfg])[0]
    torch.testing.assert_close(freq, expected, atol=0.015, rtol=0)
