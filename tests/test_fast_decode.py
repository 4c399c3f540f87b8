"""The decode step in C (`decode.decode_step`) against its reference, `GPT.forward` with a KV cache."""

from __future__ import annotations

import copy
import logging
import subprocess
import sys
import threading
from collections.abc import Callable

import pytest
import torch

from tinystories.infer.offline import TokenIds, generate
from tinystories.infer.params import SamplingParams
from tinystories.infer.sampling import generate_reference
from tinystories.interpret.hooks import ablate_heads, patched
from tinystories.model import decode, native
from tinystories.model.decode import DecodeStep, addable, decode_step
from tinystories.model.gpt import GPT, GPTConfig, KVCache

ARCHS = {"neo": {"arch": "neo"}, "neo-local": {"arch": "neo", "local_window": 5}, "modern": {"arch": "modern"},
         "modern-relu2-qknorm-untied": {"arch": "modern", "mlp": "relu2", "qk_norm": True, "tie_embeddings": False},
         "modern-gelu": {"arch": "modern", "mlp": "gelu"},
         "neo-16-wide-heads": {"arch": "neo", "n_head": 2},  # (the C step's other attention loop: head_dim >= 16)
         "neo-4-wide-heads": {"arch": "neo", "n_head": 8}}  # (the paper's 1M model's head_dim, a constant in C)
# A larger model: a 30K output layer, in panels of 16 rows as the 15M shape's is (decode_step.c).
BIG = {"arch": "modern", "vocab_size": 30_000, "d_model": 128}


def model(**kw: object) -> GPT:
    torch.manual_seed(0)
    m = GPT(GPTConfig(**{"vocab_size": 97, "context_length": 40, "n_layer": 3, "n_head": 4, "d_model": 32, **kw})).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(2)
    return m


def step_of(m: GPT) -> DecodeStep:
    """The step in C (model/decode_step.c)."""
    step = decode_step(m)
    if step is None:
        pytest.skip(f"the C step is unavailable here: {native.why_not()}")
    return step


@pytest.mark.parametrize("arch,batch", [*((a, 3) for a in ARCHS), ("big", 3), ("neo", 19), ("modern", 19)])
def test_step_logits_equal_the_forward_pass(arch: str, batch: int) -> None:
    """Batch 3 and 19: odd batches (the C step multiplies two rows at a time, then the last alone)."""
    m = model(**ARCHS.get(arch, BIG))
    fast = step_of(m)
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(0, 97, (batch, 6), generator=g)
    pad = torch.tensor([0, 2, 5, *torch.randint(0, 6, (batch - 3,), generator=g).tolist()])  # left padding
    ref, mine = m.new_cache(batch, 40, pad.clone()), m.new_cache(batch, 40, pad.clone())
    with torch.no_grad():
        m(idx, cache=ref)
        m(idx, cache=mine)
        token = torch.randint(0, 97, (batch,), generator=g)
        for _ in range(34):  # past the local window, to the end of the context
            expected = m(token[:, None], cache=ref)[0][:, -1]
            torch.testing.assert_close(fast.step(token, mine), expected, atol=1e-5, rtol=1e-5)
            token = expected.argmax(-1)
    torch.testing.assert_close(mine.k[:, :, :, :ref.length], ref.k[:, :, :, :ref.length], atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="longer than the model's context of 40"):
        fast.step(token, mine)


@pytest.mark.parametrize("arch,rows", [*((a, 256) for a in ARCHS), ("big", 256), ("neo-local", 7), ("modern", 7)])
def test_prefill_is_stepping_a_position_at_a_time_bit_for_bit(arch: str, rows: int,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """`DecodeStep.prefill` in C (every position of every prompt a row of a call) gives the
    logits and cache that stepping through the prompts a position at a time gives: the same bits,
    with additions, prompts of 1 to 23 positions (past the local window), and the logits to `forward`'s at 1e-5. rows 7: the 70 positions in calls of
    7, a prompt's split between calls, some calls with no prompt's last position."""
    monkeypatch.setattr(decode, "PREFILL_ROWS", rows)
    m = model(**ARCHS.get(arch, BIG))
    fast = step_of(m)
    g = torch.Generator().manual_seed(3)
    lengths = [23, 1, 7, 23, 16]
    idx = torch.randint(0, 97, (5, 23), generator=g)
    pad = torch.tensor([23 - n for n in lengths])
    adds = {"blocks.1.hook_resid_mid": torch.randn(5, m.cfg.d_model, generator=g),
            "blocks.0.mlp.hook_post": torch.randn(5, m.cfg.ffn_dim, generator=g)}
    adds["blocks.1.hook_resid_mid"][2] = 0
    plain = None
    for with_adds in (False, True):
        a = adds if with_adds else None
        stepped, together = m.new_cache(5, 40, pad), m.new_cache(5, 40, pad)
        for t in range(22):
            fast.step(idx[:, t], stepped, a)
        expected = fast.step(idx[:, 22], stepped, a)
        got = fast.prefill(idx, together, a)
        assert together.length == stepped.length == 23
        assert torch.equal(got, expected)
        plain = got if plain is None else plain
        for row, n in enumerate(lengths):  # the prompts' slots (padding: stepped with the pad token, or left alone)
            for c in ("k", "v"):
                assert torch.equal(getattr(together, c)[:, row, :, 23 - n:23], getattr(stepped, c)[:, row, :, 23 - n:23])
    ref = m.new_cache(5, 40, pad)
    with torch.no_grad():
        torch.testing.assert_close(plain, m(idx, cache=ref)[0][:, -1], atol=1e-5, rtol=1e-5)
    for cache in (together, m.new_cache(4, 40, pad[:4]), m.new_cache(5, 20, pad)):  # used, too few rows, slots
        with pytest.raises(ValueError, match="empty cache of 5 rows and 23 slots"):
            fast.prefill(idx, cache)


@pytest.mark.parametrize("vocab", [97, 30_000])
def test_most_likely_token_is_the_first_of_ties(vocab: int) -> None:
    """`argmax` is torch's argmax of `step`'s logits where the top logit is shared. The output layer's
    rows are v, -v or 0 (logits a, -a, 0), so each row's top is the first of many v rows (a > 0) or
    of many -v rows (a < 0), at places that are not multiples of 16 (decode_step.c scans groups of 16)."""
    m = model(arch="modern", tie_embeddings=False, vocab_size=vocab, context_length=40)
    base = vocab - 97
    with torch.no_grad():
        v, head = m.lm_head.weight[0].clone(), m.lm_head.weight
        head.zero_()
        head[base + 17::7] = v
        head[base + 46::2] = -v
    fast = step_of(m)
    tokens, seen = torch.arange(8) * 5, set()
    full, alone = m.new_cache(8, 40), m.new_cache(8, 40)
    for _ in range(5):
        best = fast.argmax(tokens, alone)
        assert best.tolist() == fast.step(tokens, full).argmax(-1).tolist()
        seen |= set(best.tolist())
        tokens = (tokens + 1) % vocab
    assert seen == {base + 17, base + 46}


def in_lockstep(m: GPT, fast: DecodeStep, tokens: torch.Tensor,
                after: Callable[[torch.Tensor], torch.Tensor]) -> tuple[KVCache, KVCache]:
    """`fast.step` and `fast.argmax` side by side from `tokens` to the context's end, each step
    checked to choose the same tokens (`after(best)`: the next tokens); their two caches."""
    B = tokens.shape[0]
    full, alone = m.new_cache(B, 40), m.new_cache(B, 40)
    for _ in range(39):
        best = fast.step(tokens, full).argmax(-1)
        assert fast.argmax(tokens, alone).tolist() == best.tolist()
        tokens = after(best)
    return full, alone


# Vocabularies that end inside a panel of 16 rows, and inside a block of 64 (four panels).
VOCABS = {"vocab-5": {"arch": "modern", "vocab_size": 5}, "vocab-50": {"arch": "neo", "vocab_size": 50}}


@pytest.mark.parametrize("arch,batch", [*((a, 1) for a in ARCHS), ("big", 1), ("big", 3), ("big", 15),
                                        ("vocab-5", 2), ("vocab-50", 3)])
def test_argmax_alone_is_the_steps_argmax(arch: str, batch: int) -> None:
    """`DecodeStep.argmax` (no logits: float32 logits only for the tokens a bfloat16 copy of the
    output layer cannot rule out) gives the token `step`'s logits give, at every step, a row at
    a time in a batch as alone."""
    m = model(**{**ARCHS, **VOCABS}.get(arch, BIG))
    fast = step_of(m)
    g = torch.Generator().manual_seed(2)
    full, alone = in_lockstep(m, fast, torch.randint(0, m.cfg.vocab_size, (batch,), generator=g),
                              lambda best: torch.where(torch.arange(batch) % 2 == 0, best,
                                                       torch.randint(0, m.cfg.vocab_size, (batch,), generator=g)))
    torch.testing.assert_close(alone.k, full.k, atol=0, rtol=0)


def crafted_head() -> GPT:
    """A model whose output rows 10 and 40 bfloat16 can order the other way (see below)."""
    m = model(arch="modern", tie_embeddings=False, vocab_size=97, d_model=32)
    with torch.no_grad():
        head = m.lm_head.weight
        v = head[10].abs().to(torch.bfloat16).float()  # positive, and exact in bfloat16
        head.mul_(0.01)
        step3, step5 = (2.0 ** (torch.floor(torch.log2(v[i])) - 7) for i in (3, 5))
        head[10], head[25], head[40] = v, v, v
        head[10, 3], head[25, 3], head[40, 3] = v[3] + 0.51 * step3, v[3] + 0.51 * step3, v[3] + 0.49 * step3
        head[40, 5] = v[5] + 0.3 * step5
    return m


def test_argmax_alone_separates_what_bfloat16_cannot() -> None:
    """Output rows that bfloat16 orders the other way: the float32 logits decide, as in `step`, and
    an exact tie goes to the first. Rows 10 and 40 differ in two weights: at index 3 row 10 is the
    larger by a fiftieth of bfloat16's step there but rounds a whole step above row 40; at index 5
    row 40 is the larger by less than half a step, which bfloat16 drops. So where the input is
    positive at both, float32 can choose row 40 where the bfloat16 copy would choose row 10 (the
    test checks that happens). Row 25 equals row 10 and is never chosen. 15 rows."""
    m = crafted_head()
    rounded = copy.deepcopy(m)
    with torch.no_grad():
        rounded.lm_head.weight.copy_(m.lm_head.weight.to(torch.bfloat16).float())
    fast, approx = step_of(m), step_of(rounded)
    seen: set[int] = set()
    flips = 0
    tokens = torch.arange(15)
    full, alone, bf = m.new_cache(15, 40), m.new_cache(15, 40), m.new_cache(15, 40)
    for _ in range(39):
        best = fast.step(tokens, full).argmax(-1)
        assert fast.argmax(tokens, alone).tolist() == best.tolist()
        flips += int((approx.step(tokens, bf).argmax(-1) != best).sum())
        seen |= set(best.tolist())
        tokens = (tokens * 7 + 3) % 97
    assert flips > 0 and {10, 40} <= seen and 25 not in seen


@pytest.mark.parametrize("where", ["head", "norm", "inf", "overflow"])
def test_argmax_alone_holds_at_any_scale(where: str) -> None:
    """Weights and inputs small enough that products fall among denormal numbers, with this thread
    flushing those to zero (as `torch.set_flush_denormal` makes it): the radius still bounds the
    bfloat16 logits (`crafted_head`: where they order rows the other way). And a row with
    infinite values, or logits that overflow: all its logits, as `step`'s."""
    m = crafted_head()
    with torch.no_grad():
        if where == "head":
            m.lm_head.weight.mul_(2.0**-50)
        elif where == "norm":
            m.norm.weight.mul_(2.0**-66)
        elif where == "inf":
            m.norm.weight[3] = float("inf")
        else:  # logits that overflow to infinity, at a late token
            m.lm_head.weight[90] = m.lm_head.weight[90].sign() * 3e38
            m.lm_head.weight[3, 0] = 1e-39  # a denormal weight, read as zero by this thread
    fast = step_of(m)
    assert torch.set_flush_denormal(True)
    try:
        for B in (1, 2, 17):
            in_lockstep(m, fast, torch.arange(B), lambda best: (best * 7 + 3) % 97)
    finally:
        torch.set_flush_denormal(False)


def test_the_bfloat16_radius_bounds_the_logits_it_approximates() -> None:
    """`native.rounding_radius`: |logit from bfloat16 weights - logit from float32 weights| <= r |x|,
    for inputs along each row's rounding error (where Cauchy-Schwarz is tight: within 10% there)
    and random ones."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(500, 288, generator=g) * torch.rand(500, 1, generator=g)
    err = w - w.to(torch.bfloat16).float()
    r = native.rounding_radius(w)
    along = err / err.norm(dim=1, keepdim=True) * 3
    for x in (along, torch.randn(500, 288, generator=g)):
        gap = ((w.to(torch.bfloat16).float() * x).sum(1) - (w * x).sum(1)).abs()
        assert bool((gap <= r * x.norm(dim=1)).all())
        if x is along:
            assert bool((gap >= 0.9 * r * x.norm(dim=1)).all())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_other_dtypes_decode_with_the_forward_pass(dtype: torch.dtype) -> None:
    """The C step is float32 only: a model in another dtype decodes with `forward` and its cache,
    greedy as the reference writes it (float64) or at least in its own dtype (bfloat16)."""
    m = model(arch="modern").to(dtype)
    assert decode_step(m) is None
    params = SamplingParams(max_new_tokens=12, temperature=0, stop_at_eos=False)
    got = generate(m, TokenIds(0), [[0, 5, 6]], params)
    assert len(got[0]) == 12
    if dtype == torch.float64:
        assert got == generate_reference(m, [[0, 5, 6]], params, eos_id=0)
    m.float()
    assert decode_step(m) is not None or native.library() is None


@pytest.mark.parametrize("arch", ARCHS)
def test_additions_equal_hooks_on_the_forward_pass(arch: str) -> None:
    """Steering on the fast step (a vector per row at residual hook points and the MLP's neurons) =
    hooks adding it in `forward`."""
    m = model(**ARCHS[arch])
    g = torch.Generator().manual_seed(2)
    names = ("hook_embed", "blocks.0.hook_resid_post", "blocks.1.hook_attn_out", "blocks.1.hook_resid_mid",
             "blocks.2.hook_mlp_out", "blocks.2.hook_resid_pre", "blocks.0.mlp.hook_post", "blocks.2.mlp.hook_post")
    assert all(addable(name) for name in names)
    adds = {name: torch.randn(2, m.cfg.ffn_dim if "mlp.hook_post" in name else 32, generator=g) for name in names}
    adds["blocks.2.mlp.hook_post"][0] = 0
    adds["blocks.1.hook_attn_out"][1] = 0  # a row without that addition
    idx = torch.tensor([[0, 5, 6], [0, 9, 4]])
    ref, mine = m.new_cache(2, 40), m.new_cache(2, 40)
    fast = step_of(m)
    with torch.no_grad():
        m(idx, cache=ref)
        m(idx, cache=mine)
        token = torch.tensor([3, 7])
        hooks = {name: (lambda x, a=a: x + a[:, None]) for name, a in adds.items()}
        for _ in range(5):
            with m.hooked(hooks):
                expected = m(token[:, None], cache=ref)[0][:, -1]
            got = fast.step(token, mine, adds)
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
            token = expected.argmax(-1)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("params", [SamplingParams(max_new_tokens=30, temperature=0, stop_at_eos=False),
                                    SamplingParams(max_new_tokens=30, temperature=1.0, top_p=0.9, seed=3)])
def test_generation_is_token_for_token_the_same(arch: str, params: SamplingParams,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    m = model(**ARCHS[arch])
    prompts = [[0, 5, 6], [0, 9], [0, 1, 2, 3, 4]]
    fast = generate(m, TokenIds(0), prompts, params)
    assert fast == generate_reference(m, prompts, params, eos_id=0)  # one row at a time, no cache
    with m.hooked({"hook_final": lambda x: None}):  # a listener on this thread: the plain forward pass
        assert decode_step(m) is None
        assert fast == generate(m, TokenIds(0), prompts, params)
    monkeypatch.setenv("TINYSTORIES_NATIVE", "0")  # no C: `forward` with its cache
    native.library.cache_clear()
    try:
        assert decode_step(m) is None
        assert fast == generate(m, TokenIds(0), prompts, params)
    finally:
        native.library.cache_clear()


def test_a_c_file_that_does_not_build_says_why_and_generation_goes_on(monkeypatch: pytest.MonkeyPatch,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    """A bad TINYSTORIES_MARCH (or a broken compiler): both C files fall back to PyTorch, and the
    reason names the compiler's own error, not its list of valid values; it is said once, as a
    warning, so a user learns why decoding is slow."""
    from tinystories.infer import sampler

    if native.library() is None:
        pytest.skip(f"the C step is unavailable here: {native.why_not()}")
    m = model()
    params = SamplingParams(max_new_tokens=12, temperature=0.9, top_p=0.9, seed=4, stop_at_eos=False)
    in_c = generate(m, TokenIds(0), [[0, 5]], params)
    monkeypatch.setenv("TINYSTORIES_MARCH", "no-such-cpu")
    native.library.cache_clear()
    sampler.library.cache_clear()
    try:
        assert native.library() is None and sampler.library() is None
        flags, _, compiler_says = native.why_not().partition("could not build decode_step.c: ")
        assert "-march=no-such-cpu" in flags and "error" in compiler_says and "no-such-cpu" in compiler_says
        said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(said) == 2 and "decode_step.c" in said[0] and "sampler.c" in said[1]  # each said once
        assert all("PyTorch form runs instead" in line and "no-such-cpu" in line for line in said)
        assert decode_step(m) is None
        assert generate(m, TokenIds(0), [[0, 5]], params) == in_c
    finally:
        native.library.cache_clear()
        sampler.library.cache_clear()


@pytest.mark.slow
def test_loading_the_c_files_leaves_the_processes_arithmetic_alone() -> None:
    """A library linked with -Ofast by GCC 12 set the whole process to flush denormal numbers to
    zero when it loaded (`cbuild`'s doc): PyTorch's own results changed once something sampled.
    In a new process, so that nothing loaded before counts."""
    from tinystories.infer import sampler

    if native.library() is None or sampler.library() is None:
        pytest.skip(f"the C files are unavailable here: {native.why_not()}")
    code = ("import torch; from tinystories.model import native; from tinystories.infer import sampler; "
            "assert native.library() and sampler.library(); print((torch.tensor([1e-39]) * 1.0).item())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert float(out) > 0


def test_the_step_is_per_thread_and_follows_the_weights() -> None:
    m = model()
    assert decode_step(m) is not None
    with patched(m, ablate_heads([(0, 1)])):
        assert decode_step(m) is None  # this thread's patch must change what it generates
        seen: list[object] = []
        other = threading.Thread(target=lambda: seen.append(decode_step(m)))
        other.start()
        other.join()
        assert seen[0] is not None  # another thread's listener does not slow anyone else down
    m.train()
    assert decode_step(m) is None
    m.eval()
    first = decode_step(m)
    with torch.no_grad():
        m.lm_head.weight.add_(1.0)  # new weights: a new step, not stale copies
    assert decode_step(m) is not first
    second = decode_step(m)
    m.double().float()  # new storage, same versions
    third = decode_step(m)
    assert third is not second and third is not None


def test_the_step_cache_lets_models_go() -> None:
    import gc
    import weakref

    m = model()
    assert decode_step(m) is not None
    gone = weakref.ref(m)
    del m
    gc.collect()
    assert gone() is None
