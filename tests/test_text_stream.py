"""`TextStream`: the one detokenizer of the server's rows, `tinystories sample` and `complete`."""

from __future__ import annotations

import torch

from tinystories.infer.engine import Engine, Event, Sequence
from tinystories.infer.offline import complete
from tinystories.infer.params import SamplingParams
from tinystories.infer.text_stream import TextStream
from tinystories.model.gpt import GPT, GPTConfig
from tinystories.tokenizer import Tokenizer


def pieces(stream: TextStream, tokenizer: Tokenizer, ids: list[int]) -> list[str]:
    out = [stream.push([t], tokenizer.decode) for t in ids]
    return [*out, stream.push([], tokenizer.decode, final=True)]


def test_pieces_add_up_and_never_show_half_a_character(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("Tom saw a 🐉 and a 中文 sign. Ünïcødé! The end.")
    assert any(tokenizer.decode(ids[:n]).endswith("\ufffd") for n in range(1, len(ids)))
    got = pieces(TextStream(), tokenizer, ids)
    assert "".join(got) == tokenizer.decode(ids) and not any("\ufffd" in p for p in got)
    cut = next(n for n in range(1, len(ids)) if tokenizer.decode(ids[:n]).endswith("\ufffd"))
    assert "".join(pieces(TextStream(), tokenizer, ids[:cut])) == tokenizer.decode(ids[:cut])  # ends mid-character


def test_stop_strings_across_tokens(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("Lily ran home. The end. She slept.")
    stream = TextStream(["The end", "home. Th"])  # the earliest stop wins, wherever it begins
    got = pieces(stream, tokenizer, ids)
    assert "".join(got) == "Lily ran " and stream.stopped
    held = TextStream(["The end"])
    text = "".join(held.push([t], tokenizer.decode) for t in tokenizer.encode("Lily said The"))
    assert text == "Lily said "  # "The" might begin "The end": kept back until it cannot
    assert held.push(tokenizer.encode(" cat"), tokenizer.decode) == "The cat"


def test_complete_and_the_server_engine_cut_at_the_same_place(tokenizer: Tokenizer) -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, context_length=64, n_layer=1, n_head=2,
                          d_model=32)).eval()
    free = complete(model, tokenizer, ["Once"], SamplingParams(max_new_tokens=40, temperature=0))[0]
    stop = free[len(free) // 2:len(free) // 2 + 3]
    assert len(stop) == 3
    params = SamplingParams(max_new_tokens=40, temperature=0, stop=[stop])
    cut = complete(model, tokenizer, ["Once"], params)[0]
    assert cut == free[:free.index(stop)]
    events: list[Event] = []
    engine = Engine(model, tokenizer, start=False)
    row = Sequence(tokenizer.encode_story("Once"), params, events.append)
    engine.step([row])
    while not row.finished:
        engine.step([])
    assert "".join(e.text for e in events) == cut and row.finish_reason == "stop"


def test_the_engine_can_write_past_the_end_of_story(tokenizer: Tokenizer) -> None:
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, context_length=64, n_layer=1, n_head=2, d_model=16))
    eos, word = tokenizer.eos_id, tokenizer.encode(" cat")[0]
    for stop_at_eos, finished in ((True, True), (False, False)):
        row = Sequence([eos], SamplingParams(max_new_tokens=10, stop_at_eos=stop_at_eos), lambda ev: None)
        row.advance(word, 0.0, {}, eos, model.cfg.context_length, tokenizer.decode)
        row.advance(eos, 0.0, {}, eos, model.cfg.context_length, tokenizer.decode)
        assert row.finished == finished and row.ids == ([word] if finished else [word, eos])
