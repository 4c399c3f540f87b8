"""The continuous-batching engine: rows joining and leaving a running batch compute what they would alone."""

from __future__ import annotations

import pytest
import torch

from tinystories.infer import cache_manager
from tinystories.infer.engine import Engine, Event, Sequence
from tinystories.infer.params import SamplingParams
from tinystories.infer.sampling import generate_reference
from tinystories.model.gpt import GPT, GPTConfig
from tinystories.tokenizer import Tokenizer


def run(engine: Engine, schedule: dict[int, list[tuple[list[int], SamplingParams]]]) -> list[list[int]]:
    """Drive an unstarted engine: schedule[step] = rows submitted before that step."""
    outputs: list[list[int]] = []
    rows: list[Sequence] = []
    step = 0
    while step <= max(schedule) or engine.rows:
        new = []
        for prompt, params in schedule.get(step, []):
            out: list[int] = []
            outputs.append(out)

            def emit(ev: Event, out: list[int] = out) -> None:
                assert ev.finish_reason != "error", ev.text
                out.extend(ev.token_ids)

            new.append(Sequence(prompt, params, emit))
        rows += new
        engine.step(new)
        step += 1
        assert step < 1000
    assert all(r.finished for r in rows)
    return outputs


@pytest.mark.parametrize("arch", ["neo", "modern"])
def test_rows_joining_and_leaving(tokenizer: Tokenizer, arch: str, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: dict[str, int] = {}
    for name in ("merge", "write_rows", "add_rows", "select"):  # the cache surgery the engine asks for
        def counted(*a: object, _f: object = getattr(cache_manager, name), _n: str = name) -> object:
            calls[_n] = calls.get(_n, 0) + 1
            return _f(*a)  # type: ignore[operator]
        monkeypatch.setattr(cache_manager, name, counted)
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=tokenizer.vocab_size, context_length=48, n_layer=2, n_head=4, d_model=32,
                    arch=arch, local_window=8 if arch == "neo" else 0)
    model = GPT(cfg).eval()
    eos = tokenizer.eos_id
    texts = ["Once upon a time", "Tom", "The big dog ran to the park to play with the red ball", "A",
             "Lily and her mom", "Sam saw a cat", "Then", "One day, a little bird flew"]
    prompts = [[eos, *tokenizer.encode(t)] for t in texts]
    limits = [30, 5, 40, 12, 48, 3, 20, 9]  # 48: runs into the context end
    greedy = [(p, SamplingParams(max_new_tokens=n, temperature=0)) for p, n in zip(prompts, limits)]
    # Joins while others run, a longer prompt than the batch so far (realign), free-slot reuse,
    # growth, compaction, and a row that outlives everything it started with.
    schedule = {0: greedy[:2], 3: greedy[2:4], 4: [greedy[4]], 9: greedy[5:7], 30: [greedy[7]]}
    got = run(Engine(model, tokenizer, start=False), schedule)
    expected = [generate_reference(model, [p], SamplingParams(max_new_tokens=n, temperature=0), eos)[0]
                for p, n in zip(prompts, limits)]
    assert got == expected
    assert set(calls) == {"merge", "write_rows", "add_rows", "select"}, calls  # every batch-reshaping path ran
    assert len(got[4]) == 48 - len(prompts[4]) or eos in got[4]

    # A seeded sampled row draws the same tokens alone or in a crowd.
    seeded = (prompts[0], SamplingParams(max_new_tokens=20, temperature=1.0, top_p=0.9, seed=5))
    alone = run(Engine(model, tokenizer, start=False), {0: [seeded]})[0]
    crowd = run(Engine(model, tokenizer, start=False), {0: greedy[:3], 2: [seeded, greedy[5]]})
    assert crowd[3] == alone and len(alone) > 0
