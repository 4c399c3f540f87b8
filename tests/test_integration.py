"""The pipelines together, as separate real processes: our own server is the teacher of
`generate` and the judge of `eval`, through the same OpenAI-compatible API a user would use."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch

from tinystories.model.checkpoint import save_model
from tinystories.model.gpt import GPT, GPTConfig
from tinystories.tokenizer import Tokenizer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer: Tokenizer) -> Path:
    """A random-weight model with a context long enough for the paper's generation prompt."""
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=tokenizer.vocab_size, context_length=1024, n_layer=1, n_head=2, d_model=32)
    return save_model(tmp_path_factory.mktemp("teacher"), GPT(cfg).eval(), tokenizer)


@pytest.fixture(scope="module")
def served(model_dir: Path) -> Iterator[tuple[str, str]]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tinystories.cli", "serve", str(model_dir),
                             "--port", str(port), "--threads", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                models = httpx.get(f"{url}/models", timeout=2).json()["data"]
                break
            except httpx.HTTPError:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                assert time.monotonic() < deadline, "server did not start"
                time.sleep(0.3)
        yield url, models[0]["id"]
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tinystories.cli", *args], capture_output=True, text=True,
                          timeout=240, check=False, env={**os.environ, **(env or {})})


@pytest.mark.slow
def test_our_server_as_the_teacher(served: tuple[str, str], tmp_path: Path) -> None:
    url, model = served
    out = tmp_path / "gen"
    # A random-weight student writes no real stories, so only the structural filters stay on.
    p = run_cli("generate", "--base-url", url, "--model", model, "--api", "completion", "--num-stories", "6",
                "--out", str(out), "--no-progress", "--api-key-env", "TS_TEST_KEY",
                "--set", "filters.require_words=false", "--set", "filters.min_words=1",
                "--set", "filters.min_stopword_ratio=0", "--set", "filters.ascii_only=false",
                "--set", "filters.near_duplicate_threshold=1", "--set", "teacher.max_tokens=40",
                env={"TS_TEST_KEY": "unused"})
    assert p.returncode == 0, p.stderr[-2000:]
    records = [json.loads(line) for f in sorted((out / "data").glob("*.jsonl"))
               for line in f.read_text().splitlines()]
    assert len(records) == 6 and len({r["id"] for r in records}) == 6
    assert all(r["text"] and r["prompt"].startswith("Write a short story") for r in records)


@pytest.mark.slow
def test_our_server_as_a_judge_that_cannot_grade(served: tuple[str, str], model_dir: Path, tmp_path: Path) -> None:
    url, model = served
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps(["Once upon a time, there was a cat.", "Tom saw a big dog."]))
    out = tmp_path / "eval"
    p = run_cli("eval", "gpt-eval", str(model_dir), "--prompts", str(prompts), "-n", "1",
                "--max-new-tokens", "20", "--judge-url", url, "--judge-model", model, "--judge-max-tokens", "30",
                "--judge-api-key-env", "TS_TEST_KEY", "--yes", "--no-progress", "--out", str(out),
                env={"TS_TEST_KEY": "unused"})
    # The untrained "judge" answers gibberish: every judgment is missing, none is counted as 0, and
    # the run says so and fails, with the reasons and a sample of what the judge wrote.
    assert p.returncode == 1, p.stderr[-2000:]
    assert "2 of 2 judgments missing" in p.stderr and "no JSON block" in p.stderr
    assert "the end of one unusable answer" in p.stderr
    judgments = json.loads((out / "judgments.json").read_text())
    assert len(judgments) == 2
    assert all(j["parsed"] is None and j["attempts"] >= 1 and j["answer"] for j in judgments)
    results = json.loads((out / "results.json").read_text())
    assert '"missing": 2' in json.dumps(results)
    assert (out / "report.html").exists() and "judgments missing entirely" in (out / "report.md").read_text()
