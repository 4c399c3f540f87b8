"""The server against careless and hostile clients, in a real process: 4xx JSON for every bad
request, never a 5xx; a big request cannot starve a small one; SIGTERM stops it promptly."""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tinystories.infer.engine import Engine, Event
from tinystories.infer.params import SamplingParams
from tinystories.infer.server import create_app, running
from tinystories.model.loader import load_any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    def __init__(self, model_dir: Path, *flags: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "tinystories.cli", "serve", str(model_dir),
                                      "--port", str(self.port), "--threads", "1", *flags],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(self.url + "/v1/models", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start: {self.proc.stderr.read().decode()}")  # type: ignore[union-attr]
            time.sleep(0.1)
        self.model = httpx.get(self.url + "/v1/models").json()["data"][0]["id"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


@pytest.fixture(scope="module")
def served(tiny_model_dir: Path) -> Iterator[Served]:
    s = Served(tiny_model_dir, "--max-prompts", "16", "--max-rows", "32", "--max-prompt-bytes", "4096",
               "--max-body-bytes", "65536")
    yield s
    s.stop()


def post(s: Served, path: str, body: bytes | str | dict, timeout: float = 30) -> httpx.Response:
    content = json.dumps(body) if isinstance(body, dict) else body
    return httpx.post(s.url + path, content=content, timeout=timeout, headers={"content-type": "application/json"})


def assert_client_error(r: httpx.Response, what: object) -> None:
    assert 400 <= r.status_code < 500, (what, r.status_code, r.text[:300])
    error = r.json()["error"]
    assert isinstance(error["message"], str) and error["message"] and "type" in error, what


def probes(model: str) -> list[tuple[str, bytes | str | dict]]:
    def c(**kw: object) -> dict:
        return {"model": model, "prompt": "Once upon a time", "max_tokens": 4, **kw}
    m = json.dumps(model)
    return [
        ("/v1/completions", f'{{"model": {m}, "prompt": {"[" * 100_000}1{"]" * 100_000}}}'),
        ("/v1/completions", f'{{"model": {m}, "prompt": "a \\ud800 b"}}'),
        ("/v1/chat/completions", f'{{"model": {m}, "messages": [{{"role": "user", "content": "a \\udfff"}}]}}'),
        ("/v1/internal/attention", f'{{"model": {m}, "prompt": "a \\ud800 b"}}'),
        ("/v1/completions", c(seed=2**64)), ("/v1/completions", c(seed=-(2**63) - 1)),
        ("/v1/completions", c(top_k=2**63)), ("/v1/completions", c(top_k=1e20)),
        ("/v1/completions", f'{{"model": {m}, "prompt": "x", "temperature": NaN}}'),
        ("/v1/completions", f'{{"model": {m}, "prompt": "x", "top_p": NaN}}'),
        ("/v1/completions", f'{{"model": {m}, "prompt": "x", "temperature": Infinity}}'),
        ("/v1/completions", c(temperature=3)), ("/v1/completions", c(top_p=0)), ("/v1/completions", c(top_p=1.5)),
        ("/v1/completions", c(n=0)), ("/v1/completions", c(n=17)), ("/v1/completions", c(max_tokens=0)),
        ("/v1/completions", c(prompt=["x"] * 17)), ("/v1/completions", c(prompt=["x"] * 16, n=3)),
        ("/v1/completions", c(prompt="word " * 2000)), ("/v1/completions", c(prompt="x" * 100_000)),
        ("/v1/completions", c(stop=["a"] * 5)), ("/v1/completions", c(stop=[""])), ("/v1/completions", c(stop=3)),
        ("/v1/completions", c(logprobs=9)), ("/v1/completions", c(echo=True)), ("/v1/completions", c(model="nope")),
        ("/v1/completions", c(prompt=3)), ("/v1/completions", c(prompt=[])), ("/v1/completions", c(stream="yes")),
        ("/v1/completions", "{not json"), ("/v1/completions", "[1, 2]"), ("/v1/completions", b"\xff\xfe"),
        ("/v1/chat/completions", {"model": model, "messages": "hi"}),
        ("/v1/chat/completions", {"model": model, "messages": [{"role": "wizard", "content": "x"}]}),
        ("/v1/internal/attention", {"model": model, "prompt": "x", "completion_token_ids": [10**9]}),
        ("/v1/internal/attention", {"model": model, "prompt": "x", "position": 99}),
        ("/v1/nothing-here", {}),
    ]


def random_bodies(model: str, n: int, seed: int) -> Iterator[tuple[str, bytes | str | dict]]:
    """A seeded mix of malformed bodies: wrong types and out-of-range values in every field."""
    rng = random.Random(seed)
    junk = [None, True, -1, 0, 2**70, -(2**70), 1e308, -1e-9, "", "x" * 50, [], [1, "a"], {}, {"a": {"b": []}},
            "\u202e\u0000", 3.5, [None] * 3]
    keys = ["prompt", "n", "max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "logprobs",
            "stream", "stream_options", "messages", "max_completion_tokens", "top_logprobs"]
    for _ in range(n):
        body: dict = {"model": rng.choice([model, model, 3, None, "other"])}
        for key in rng.sample(keys, rng.randint(1, 4)):
            body[key] = rng.choice(junk)
        if rng.random() < 0.3:
            body["prompt"] = "Tom"
        yield rng.choice(["/v1/completions", "/v1/chat/completions"]), body


@pytest.mark.slow
def test_fuzz_every_bad_request_is_a_4xx_and_the_server_still_serves(served: Served) -> None:
    for path, body in probes(served.model):
        assert_client_error(post(served, path, body), (path, str(body)[:80]))
    r = httpx.get(served.url + "/v1/completions")  # wrong method: the same error shape
    assert r.status_code == 405 and "error" in r.json()
    for path, body in random_bodies(served.model, 150, seed=0):
        r = post(served, path, body)
        if r.status_code == 200:  # junk that happens to be valid is answered properly
            assert r.json()["choices"], body
        else:
            assert_client_error(r, (path, body))
    ok = post(served, "/v1/completions", {"model": served.model, "prompt": "Tom", "max_tokens": 5, "n": 8})
    assert ok.status_code == 200 and len(ok.json()["choices"]) == 8


MALFORMED = {  # bytes on the wire -> what the parser names
    b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: ten\r\n\r\n": "Content-Length",
    b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n": "header",
    b"\x16\x03\x01 garbage, not HTTP\r\n\r\n": "request line",
    b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n": "Content-Length",
}


def raw_exchange(s: Served, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes on a fresh connection; the status, headers and body of the answer."""
    with socket.create_connection(("127.0.0.1", s.port), timeout=10) as sock:
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(65536):  # the server closes after a malformed request
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
    return int(status_line.split()[1]), headers, body


@pytest.mark.parametrize("data", MALFORMED, ids=["bad length", "bad header", "not http", "two lengths"])
def test_malformed_http_gets_the_openai_error_shape(served: Served, data: bytes) -> None:
    status, headers, body = raw_exchange(served, data)
    assert status == 400 and headers["content-type"] == "application/json", (status, headers, body)
    error = json.loads(body)["error"]
    assert error["type"] == "invalid_request_error" and error["param"] is None and error["code"] is None
    assert error["message"].startswith("malformed HTTP request: ") and MALFORMED[data] in error["message"], error
    assert httpx.get(served.url + "/v1/models").status_code == 200  # and the server goes on serving


def test_a_bad_request_never_fails_a_neighbour(served: Served) -> None:
    results: dict[str, int] = {}

    def good() -> None:
        results["good"] = post(served, "/v1/completions", {"model": served.model, "prompt": "Tom", "max_tokens": 40,
                                                           "n": 8, "temperature": 1.0, "seed": 1}).status_code

    t = threading.Thread(target=good)
    t.start()
    for bad in ({"top_k": 1e20}, {"top_k": 2**63}, {"temperature": float("nan")}, {"seed": 2**64}):
        r = post(served, "/v1/completions", json.dumps({"model": served.model, "prompt": "x", **bad}))
        assert_client_error(r, bad)
    t.join()
    assert results["good"] == 200


def test_a_client_that_hangs_up_stops_its_rows(tiny_model_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A non-streaming client that leaves: its rows stop at once, not when they would have
    finished, and the server logs no error for an ordinary hang-up."""
    loaded = load_any(tiny_model_dir)
    app = create_app({"m": loaded})
    engine = app.state.served["m"].engine
    # Slow every forward pass down, so the request would run for seconds.
    slow = loaded.model.norm.register_forward_hook(lambda *_: time.sleep(0.02))  # (every decode path runs it)
    try:
        with running(app) as url:
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(url + "/v1/completions", timeout=0.3,
                           json={"model": "m", "prompt": "Once", "n": 4, "max_tokens": 120, "temperature": 1.0})
            left = time.monotonic()
            while engine.rows or engine.scheduler.waiting:
                assert time.monotonic() - left < 1.5, "rows kept running after the client left"
                time.sleep(0.02)
            time.sleep(0.3)  # (the endpoint notices within 0.25 s)
    finally:
        slow.remove()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def test_a_big_request_cannot_starve_a_small_one(tiny_model_dir: Path) -> None:
    """The small request is admitted at the next step and needs only its own steps, whatever the big one's size."""
    loaded = load_any(tiny_model_dir)
    eos = loaded.tokenizer.eos_id
    waits = []
    for big_rows in (16, 64):
        engine = Engine(loaded.model, loaded.tokenizer, max_batch=16, start=False, reserved=2)
        big = [engine.submit([eos, 5], SamplingParams(max_new_tokens=100, temperature=1.0, seed=i,
                                                      stop_at_eos=False), lambda ev: None, job="big")
               for i in range(big_rows)]
        for _ in range(3):
            engine.step(engine.scheduler.pick(engine.rows))
        done: list[Event] = []
        engine.submit([eos, 7], SamplingParams(max_new_tokens=5, temperature=0), done.append, job="small")
        start = engine.steps
        while not (done and done[-1].finish_reason):
            engine.step(engine.scheduler.pick(engine.rows))
        waits.append(engine.steps - start)
        assert sum(not r.finished for r in big) > 0  # the big one is still running
    assert waits[0] == waits[1] <= 5 + 1  # its own five tokens (the first comes with the admission)


@pytest.mark.slow
def test_sigterm_stops_the_server_promptly(tiny_model_dir: Path) -> None:
    """With many seconds of work queued, SIGTERM gives running requests the grace period, then
    cancels their rows, closes every connection and exits."""
    s = Served(tiny_model_dir, "--shutdown-grace-s", "1")
    try:
        ended: list[int | str] = []

        def ask(stream: bool) -> None:
            body = {"model": s.model, "prompt": ["Once"] * 16, "n": 16, "max_tokens": 120, "stream": stream}
            try:
                with httpx.stream("POST", s.url + "/v1/completions", timeout=60, json=body) as r:
                    for _ in r.iter_lines():
                        pass
                    ended.append(r.status_code)
            except httpx.HTTPError as exc:
                ended.append(type(exc).__name__)

        threads = [threading.Thread(target=ask, args=(i % 4 == 0,)) for i in range(8)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        start = time.monotonic()
        s.proc.send_signal(signal.SIGTERM)
        s.proc.wait(timeout=30)
        took = time.monotonic() - start
        for t in threads:
            t.join(10)
        assert took < 5, f"took {took:.1f} s to stop"
        assert len(ended) == 8  # every client got an answer or a closed connection, none left hanging
    finally:
        s.stop()
