"""The OpenAI-compatible server, over real HTTP on loopback, with the official openai client."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import torch

from tinystories.cli import main
from tinystories.infer.engine import Engine
from tinystories.infer.offline import generate
from tinystories.infer.openai_api import ApiError, Job, chat_prompt
from tinystories.infer.params import SamplingParams
from tinystories.infer.server import Mailbox, Served, create_app, load_models, running, submit_rows
from tinystories.interpret import attention_api
from tinystories.model.checkpoint import LoadedModel, save_model
from tinystories.model.gpt import GPT, GPTConfig
from tinystories.tokenizer import Tokenizer

MODEL = "tiny_model0"  # tiny_model_dir's folder name (pytest's mktemp numbers it)


@pytest.fixture(scope="module")
def loaded(tiny_model_dir: Path) -> LoadedModel:
    models = load_models([str(tiny_model_dir)])
    assert list(models) == [tiny_model_dir.name] == [MODEL]
    return models[MODEL]


@pytest.fixture(scope="module")
def server(loaded: LoadedModel) -> Iterator[tuple[str, object]]:
    app = create_app({MODEL: loaded}, extensions=[attention_api.install])
    with running(app) as url:
        yield url, app.state.served[MODEL].engine


@pytest.fixture(scope="module")
def client(server: tuple[str, object]) -> openai.OpenAI:
    return openai.OpenAI(base_url=server[0] + "/v1", api_key="unused", max_retries=0)


def greedy(loaded: LoadedModel, text: str, n: int) -> list[int]:
    tok = loaded.tokenizer
    cfg = SamplingParams(max_new_tokens=n, temperature=0)
    return generate(loaded.model, tok, [[tok.eos_id, *tok.encode(text)]], cfg)[0]


def test_completions_match_local_generation(client: openai.OpenAI, loaded: LoadedModel) -> None:
    assert [m.id for m in client.models.list().data] == [MODEL]
    r = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=20, temperature=0, n=2)
    ids = greedy(loaded, "Once upon a time", 20)
    assert [c.text for c in r.choices] == [loaded.tokenizer.decode(ids)] * 2
    assert [c.index for c in r.choices] == [0, 1]
    assert r.choices[0].finish_reason == ("length" if len(ids) == 20 else "stop")
    prompt_tokens = 1 + len(loaded.tokenizer.encode("Once upon a time"))
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (prompt_tokens, 2 * len(ids))
    assert r.object == "text_completion" and r.id.startswith("cmpl-")


def test_without_max_tokens_each_prompt_has_its_own_room(client: openai.OpenAI, loaded: LoadedModel) -> None:
    """A row's length limit is the context less its own prompt, not the longest prompt's, so a
    short prompt writes the same story beside a long one as alone (and as `sample` would)."""
    tok, context = loaded.tokenizer, loaded.model.cfg.context_length
    long = " ".join(["Tom"] * context)
    long = tok.decode(tok.encode(long)[: context - 4])  # leaves 3 tokens of room beside it
    short = "Once upon a time"
    r = client.completions.create(model=MODEL, prompt=[short, long], temperature=0)
    alone = greedy(loaded, short, context)
    assert len(alone) > 3, "the model ends this story at once: pick a prompt it continues"
    assert r.choices[0].text == tok.decode(alone)
    assert r.choices[1].text == tok.decode(greedy(loaded, long, context))
    assert r.usage.completion_tokens == len(alone) + len(greedy(loaded, long, context))


def test_seed_top_k_top_p_and_logprobs(client: openai.OpenAI) -> None:
    args = {"model": MODEL, "prompt": "Tom", "max_tokens": 12, "temperature": 1.3, "top_p": 0.9, "n": 2, "seed": 7,
                "extra_body": {"top_k": 50}, "logprobs": 3}
    a, b = client.completions.create(**args), client.completions.create(**args)
    assert [c.text for c in a.choices] == [c.text for c in b.choices]
    assert a.choices[0].text != a.choices[1].text  # each choice has its own random stream
    lp = a.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 12
    assert all(x < 0 for x in lp.token_logprobs) and all(1 <= len(t) <= 3 for t in lp.top_logprobs)  # (dict: bytes may collide as "\ufffd")
    assert "".join(lp.tokens) == a.choices[0].text or "\ufffd" in "".join(lp.tokens)


def test_greedy_writes_the_same_with_and_without_logprobs(client: openai.OpenAI, loaded: LoadedModel) -> None:
    """Greedy rows that report nothing ask the decode step for the most likely token alone (no
    logits); `logprobs: 0` asks for the chosen token's log-probability, so every logit. Both write
    what `sample` writes; only the second reports log-probabilities."""
    args = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 12, "temperature": 0}
    plain, reported = client.completions.create(**args), client.completions.create(**args, logprobs=0)
    assert plain.choices[0].text == reported.choices[0].text == loaded.tokenizer.decode(
        greedy(loaded, "Once upon a time", 12))
    assert plain.choices[0].logprobs is None
    lp = reported.choices[0].logprobs
    assert len(lp.token_logprobs) == reported.usage.completion_tokens > 0 and all(x <= 0 for x in lp.token_logprobs)
    assert min(lp.token_logprobs) < 0 and all(t == {} or t is None for t in (lp.top_logprobs or []))


def test_stop_strings(client: openai.OpenAI, loaded: LoadedModel) -> None:
    text = loaded.tokenizer.decode(greedy(loaded, "Lily", 40))
    stop = text[10:13]
    r = client.completions.create(model=MODEL, prompt="Lily", max_tokens=40, temperature=0, stop=[stop, "@@@"])
    assert r.choices[0].text == text[:text.index(stop)]
    assert r.choices[0].finish_reason == "stop"


def test_chat_and_streaming(client: openai.OpenAI, loaded: LoadedModel) -> None:
    messages = [{"role": "system", "content": "You write stories."},
                {"role": "user", "content": "Once upon a time"}]
    r = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=15, temperature=0)
    expected = loaded.tokenizer.decode(greedy(loaded, "Once upon a time", 15))
    assert r.choices[0].message.content == expected and r.choices[0].message.role == "assistant"
    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, max_tokens=15, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected
    assert chunks[-2].choices[0].finish_reason == r.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == r.usage.completion_tokens
    text = "".join(c.choices[0].text for c in client.completions.create(
        model=MODEL, prompt="Once upon a time", max_tokens=15, temperature=0, stream=True))
    assert text == expected


def test_sse_wire_format(server: tuple[str, object]) -> None:
    with httpx.stream("POST", server[0] + "/v1/completions", json={
            "model": MODEL, "prompt": "A cat", "max_tokens": 5, "stream": True}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines) and lines[-1] == "data: [DONE]"
    first = json.loads(lines[0][6:])
    assert first["object"] == "text_completion" and set(first["choices"][0]) == {
        "index", "text", "logprobs", "finish_reason"}
    assert json.loads(lines[-2][6:])["choices"][0]["finish_reason"] in ("stop", "length")


def test_any_unicode_prompt(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model=MODEL, max_tokens=5, messages=[
        {"role": "user", "content": [{"type": "text", "text": "Ünïcødé 🐉 中文 \u0000 \U0001F600"}]}])
    assert r.choices[0].finish_reason in ("stop", "length") and r.usage.prompt_tokens > 10


@pytest.mark.parametrize(("body", "status", "needle"), [
    (b"{not json", 400, "not valid JSON"),
    (b"[1, 2]", 400, "JSON object"),
    (json.dumps({"model": MODEL, "prompt": "Hi", "max_tokens": 10**9}).encode(), 400, "maximum context length"),
    (json.dumps({"model": MODEL, "prompt": "Hi " * 200}).encode(), 400, "but the prompt alone has"),
    (json.dumps({"model": MODEL, "prompt": "Hi", "max_tokens": 0}).encode(), 400, "max_tokens"),
    (json.dumps({"model": MODEL, "prompt": "Hi", "temperature": 9}).encode(), 400, "temperature"),
    (json.dumps({"model": MODEL, "prompt": "Hi", "top_p": 0}).encode(), 400, "top_p"),
    (json.dumps({"model": MODEL, "prompt": "Hi", "n": True}).encode(), 400, "'n' must be a int"),
    (json.dumps({"model": MODEL, "prompt": 5}).encode(), 400, "prompt"),
    (json.dumps({"model": MODEL, "prompt": "Hi", "stop": [""]}).encode(), 400, "stop"),
    (json.dumps({"model": "gpt-4", "prompt": "Hi"}).encode(), 404, "does not exist"),
])
def test_bad_requests(server: tuple[str, object], body: bytes, status: int, needle: str) -> None:
    r = httpx.post(server[0] + "/v1/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status
    err = r.json()["error"]
    assert needle in err["message"] and err["type"] in ("invalid_request_error",)


@pytest.mark.parametrize(("extra", "param"), [
    ({"temperature": 9}, "temperature"), ({"top_p": 0}, "top_p"), ({"top_k": -1}, "top_k"),
    ({"min_p": 2}, "min_p"), ({"repetition_penalty": 0}, "repetition_penalty"),
    ({"seed": 2**64}, "seed"), ({"steer": [{"hook": "blocks.0.hook_resid_post", "vector": [1.0] * 5}]}, "steer"),
    ({"steer": [{"hook": "blocks.0.attn.hook_z", "vector": [1.0] * 32}]}, "steer"),
])
def test_a_refused_field_is_named_as_the_request_names_it(server: tuple[str, object], extra: dict,
                                                          param: str) -> None:
    """Fields `SamplingParams` and `Engine.submit` refuse, streamed or not: a 400 before any
    event, its param the request's own field name, from the error's field."""
    for stream in (False, True):
        r = httpx.post(server[0] + "/v1/completions",
                       json={"model": MODEL, "prompt": "Hi", "max_tokens": 5, "stream": stream, **extra})
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert (err["param"], err["code"], err["type"]) == (param, "invalid_value", "invalid_request_error")
        assert "sampling." not in err["message"]


def test_a_refused_row_cancels_the_rows_of_its_request_before_it(loaded: LoadedModel) -> None:
    """A request whose second prompt the engine refuses (an id past the model's vocabulary, as a
    tokenizer larger than its model would give): a 400 naming the prompt, and its first row,
    already submitted, cancelled, so nothing of the request runs."""
    engine = Engine(loaded.model, loaded.tokenizer, start=False)
    served = Served(MODEL, loaded, engine, 0)
    eos, params = loaded.tokenizer.eos_id, SamplingParams(max_new_tokens=5)
    job = Job(MODEL, [[eos, 5], [eos, loaded.model.cfg.vocab_size]], 1, [params, params], False, False, False)

    async def submit() -> None:
        submit_rows(served, job, Mailbox())

    with pytest.raises(ApiError) as err:
        asyncio.run(submit())
    assert (err.value.status, err.value.param, err.value.code) == (400, "prompt", "invalid_value")
    assert "outside the model's vocabulary" in err.value.message
    assert len(engine.scheduler.waiting) == 1 and engine.scheduler.waiting[0].cancelled
    assert engine.scheduler.pick([]) == []


def test_openai_client_sees_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.completions.create(model="nope", prompt="Hi")
    with pytest.raises(openai.BadRequestError, match="messages"):
        client.chat.completions.create(model=MODEL, messages=[])


def test_disconnect_mid_stream_drops_row(tmp_path: Path, tokenizer: Tokenizer, client: openai.OpenAI) -> None:
    """A client that hangs up mid-stream: its row leaves the batch long before its tokens run
    out. The model has a long context (4,000 new tokens), so that a tiny model cannot write the
    whole row in the moment between the first event and the hang-up on a loaded machine."""
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=tokenizer.vocab_size, context_length=4096, n_layer=2, n_head=4, d_model=32)
    (tmp_path / "long").mkdir()
    folder = save_model(tmp_path / "long", GPT(cfg).eval(), tokenizer)
    app = create_app(load_models([str(folder)]))
    engine = app.state.served["long"].engine
    with running(app) as url:
        with httpx.stream("POST", url + "/v1/completions", json={
                "model": "long", "prompt": "Hi", "max_tokens": 4000, "stream": True}) as r:
            lines = r.iter_lines()
            assert next(lines).startswith("data: ")  # streaming has begun; now hang up
        deadline = time.monotonic() + 30
        while engine.rows and time.monotonic() < deadline:
            time.sleep(0.02)
        assert engine.rows == []
        assert engine.steps < 3999  # the abandoned row left the batch before its 4,000 tokens
    assert client.completions.create(model=MODEL, prompt="Hi", max_tokens=3).choices[0].text is not None


def test_concurrent_requests_share_forward_passes(server: tuple[str, object], client: openai.OpenAI,
                                                  loaded: LoadedModel) -> None:
    engine = server[1]
    prompts = ["Once upon a time", "Tom", "The sun was hot and", "Lily had a red ball", "Max", "A", "Sue ran", "Bob"]
    results: dict[int, str] = {}
    tokens: dict[int, int] = {}

    def ask(i: int) -> None:
        answer = client.completions.create(model=MODEL, prompt=prompts[i], max_tokens=40, temperature=0)
        results[i], tokens[i] = answer.choices[0].text, answer.usage.completion_tokens  # type: ignore[union-attr]

    steps = engine.steps
    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Batched rows compute what each would alone.
    assert [results[i] for i in range(len(prompts))] == [
        loaded.tokenizer.decode(greedy(loaded, p, 40)) for p in prompts]
    # Rows shared decode steps: alone, a row of n tokens takes n - 1 of them (its first token comes
    # from the prefill). How many they share depends on when each request arrived, which a loaded
    # machine spreads out.
    assert engine.steps - steps < sum(n - 1 for n in tokens.values())


def test_streams_wake_the_loop_once_per_step(loaded: LoadedModel) -> None:
    """Concurrent streams get their tokens right while the engine wakes the event loop once
    per decode step for all rows, not once per token."""
    app = create_app({MODEL: loaded})
    prompts = ["Once upon a time", "Tom", "The sun was hot and", "Lily had a red ball", "Max", "Sue ran"]
    texts: dict[int, str] = {}
    chunks = [0] * len(prompts)

    def ask(url: str, i: int) -> None:
        with httpx.stream("POST", url + "/v1/completions", timeout=60, json={
                "model": MODEL, "prompt": prompts[i], "max_tokens": 30, "temperature": 0, "stream": True}) as r:
            parts = []
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    chunks[i] += 1
                    parts += [c["text"] for c in json.loads(line[6:])["choices"]]
            texts[i] = "".join(parts)

    with running(app) as url:
        threads = [threading.Thread(target=ask, args=(url, i)) for i in range(len(prompts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert [texts[i] for i in range(len(prompts))] == [
        loaded.tokenizer.decode(greedy(loaded, p, 30)) for p in prompts]
    engine, mailbox = app.state.served[MODEL].engine, app.state.mailbox
    assert 0 < mailbox.wakeups <= engine.steps + len(prompts)  # (+ steps that only admitted rows)
    assert mailbox.wakeups < sum(chunks)  # one wake-up per step for all rows, not one per token


@pytest.mark.parametrize("settings", [{"top_k": 40}, {"top_p": 0.9}, {"top_k": 20, "top_p": 0.8, "temperature": 1.3}])
def test_cli_and_server_write_the_same_story(client: openai.OpenAI, tiny_model_dir: Path, settings: dict,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """One sampler on every path: `tinystories sample` and the server agree at the same seed."""
    settings = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, **settings}  # (the CLI's defaults differ)
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in settings.items()]
    assert main(["sample", str(tiny_model_dir), "--prompt", "Once upon a time", "--seed", "3",
                 "--max-new-tokens", "40", "-n", "2", *flags]) == 0
    printed = [s.strip() for s in capsys.readouterr().out.split("-" * 40) if s.strip()]
    r = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=40, n=2, seed=3,
                                  temperature=settings["temperature"], top_p=settings["top_p"],
                                  extra_body={"top_k": settings["top_k"]})
    assert printed == [("Once upon a time" + c.text).strip() for c in r.choices]
    assert r.choices[0].text != r.choices[1].text


def test_attention_endpoint(server: tuple[str, object], loaded: LoadedModel) -> None:
    r = httpx.post(server[0] + "/v1/internal/attention", json={
        "model": MODEL, "prompt": "Tom ran", "completion_token_ids": [5, 6], "position": 3})
    data = r.json()
    assert len(data["tokens"]) == len(data["token_ids"]) == 2 + len(loaded.tokenizer.encode("Tom ran")) + 1
    att = torch.tensor(data["attention"])
    assert att.shape == (2, 4, 4)  # layers, heads, keys 0..position
    torch.testing.assert_close(att.sum(-1), torch.ones(2, 4))
    bad = httpx.post(server[0] + "/v1/internal/attention", json={"model": MODEL, "prompt": "x",
                                                                 "completion_token_ids": [10**6]})
    assert bad.status_code == 400


def test_chat_prompt_mapping() -> None:
    assert chat_prompt([{"role": "system", "content": "be nice"}, {"role": "user", "content": " Tom had a dog. "},
                        {"role": "assistant", "content": "It was big."}, {"role": "user", "content": "One day"}]
                       ) == "Tom had a dog. It was big. One day"


def test_api_key(loaded: LoadedModel) -> None:
    with running(create_app({MODEL: loaded}, api_key="s3cret")) as url:
        assert httpx.get(url + "/v1/models").status_code == 401
        bad = openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()
        good = openai.OpenAI(base_url=url + "/v1", api_key="s3cret", max_retries=0)
        assert good.completions.create(model=MODEL, prompt="Hi", max_tokens=2).usage.completion_tokens <= 2
        assert httpx.get(url + "/").status_code == 200  # the playground page itself is public
