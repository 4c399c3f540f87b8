"""`Engine.submit`, the one place a row's input is checked, and what a failed row carries."""

from __future__ import annotations

import threading

import pytest
import torch

from tinystories.errors import FieldError, PromptError, SteeringError, TinyStoriesError
from tinystories.infer.engine import Engine, Event
from tinystories.infer.offline import TokenIds, run
from tinystories.infer.params import SamplingParams
from tinystories.infer.runner import Runner
from tinystories.model.gpt import GPT, GPTConfig

CFG = GPTConfig(vocab_size=64, context_length=24, n_layer=2, n_head=2, d_model=16, arch="modern")
PARAMS = SamplingParams(max_new_tokens=8, temperature=0.9, seed=1, stop_at_eos=False)


@pytest.fixture
def model() -> GPT:
    torch.manual_seed(0)
    return GPT(CFG).eval()


@pytest.mark.parametrize("prompt,code,needle", [
    ([], "invalid_value", "a prompt of 0 tokens: it needs 1 to 24"),
    (list(range(25)), "context_length_exceeded", "a prompt of 25 tokens: it needs 1 to 24"),
    ([0, 64], "invalid_value", r"token id 64 in a prompt is outside the model's vocabulary \(0 to 63\)"),
    ([-1, 3], "invalid_value", "token id -1 in a prompt"),
])
def test_a_prompt_the_model_cannot_read_is_refused_at_submit(model: GPT, prompt: list[int], code: str,
                                                             needle: str) -> None:
    engine = Engine(model, TokenIds(0), start=False)
    with pytest.raises(PromptError, match=needle) as err:
        engine.submit(prompt, PARAMS)
    assert (err.value.field, err.value.code) == ("prompt", code)
    assert not engine.scheduler.waiting  # nothing queued
    engine.submit(list(range(24)), PARAMS)  # the whole context: one new token fits
    assert len(engine.scheduler.waiting) == 1


@pytest.mark.parametrize("adds,needle", [
    ({"blocks.5.hook_resid_post": torch.ones(16)}, "no hook point named 'blocks.5.hook_resid_post'"),
    ({"blocks.0.attn.hook_z": torch.ones(16)}, "cannot add a vector at 'blocks.0.attn.hook_z'"),
    ({"blocks.0.hook_resid_post": torch.ones(5)}, r"has shape \[5\]; it needs \[16\]"),
    ({"blocks.0.mlp.hook_post": torch.ones(16)}, r"it needs \[64\]"),  # the MLP's neurons: ffn wide
    ({"hook_embed": torch.tensor([float("nan")] * 16)}, "NaN or infinite"),
])
def test_steering_the_model_cannot_take_is_refused_at_submit(model: GPT, adds: dict, needle: str) -> None:
    engine = Engine(model, TokenIds(0), start=False)
    with pytest.raises(SteeringError, match=needle) as err:
        engine.submit([0, 1], PARAMS, adds=adds)
    assert (err.value.field, err.value.code) == ("adds", "invalid_value")
    assert not engine.scheduler.waiting
    with pytest.raises(SteeringError, match=needle):  # offline callers get the same error, before any row runs
        run(model, TokenIds(0), [[0, 1]], PARAMS, adds=adds)


def test_bad_settings_name_their_field() -> None:
    with pytest.raises(FieldError, match="top_p") as err:
        SamplingParams(top_p=0)
    assert (err.value.field, err.value.code) == ("sampling.top_p", "invalid_value")
    with pytest.raises(FieldError) as err:
        SamplingParams(stop=["a", ""])
    assert err.value.field == "sampling.stop" and isinstance(err.value, TinyStoriesError)


def test_a_row_that_fails_in_admission_keeps_its_error_apart_and_offline_raises_it(
        model: GPT, monkeypatch: pytest.MonkeyPatch) -> None:
    boom = RuntimeError("out of something")

    def prefill(*_: object) -> None:
        raise boom

    monkeypatch.setattr(Runner, "prefill", prefill)
    engine = Engine(model, TokenIds(0), start=False)
    events: list[Event] = []
    seq = engine.submit([0, 1, 2], PARAMS, events.append)
    engine.run()
    assert seq.finish_reason == "error" and seq.error is boom and seq.text == ""
    assert [(ev.text, ev.finish_reason, ev.error) for ev in events] == [("", "error", boom)]
    with pytest.raises(RuntimeError) as err:
        run(model, TokenIds(0), [[0, 1, 2]], PARAMS)
    assert err.value is boom  # the error itself, not its message as a story


def test_a_row_that_fails_mid_story_keeps_what_it_wrote_and_its_error(model: GPT) -> None:
    """A started engine (the server's): a decode step fails after a few tokens; the rows' text is
    what they wrote, the error comes on their last event."""
    engine = Engine(model, TokenIds(0))
    try:
        steps, boom = [0], RuntimeError("the step broke")
        decode = engine.runner.decode

        def failing(*a: object, **k: object) -> object:
            steps[0] += 1
            if steps[0] == 4:
                raise boom
            return decode(*a, **k)  # type: ignore[arg-type]

        engine.runner.decode = failing  # type: ignore[method-assign]
        events: list[Event] = []
        done = threading.Event()

        def emit(ev: Event) -> None:
            events.append(ev)
            if ev.finish_reason is not None:
                done.set()

        seq = engine.submit([0, 5, 6], PARAMS, emit)
        assert done.wait(30)
    finally:
        engine.close()
    assert seq.finish_reason == "error" and seq.error is boom
    assert events[-1].error is boom and events[-1].text == "" and events[-1].finish_reason == "error"
    written = "".join(ev.text for ev in events)
    assert seq.text == written == "".join(f"<{i}>" for i in seq.ids) and len(seq.ids) == 4
    assert "error" not in written
