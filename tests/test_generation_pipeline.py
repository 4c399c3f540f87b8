"""The generation run against a real scripted OpenAI-compatible server on loopback.

Faults (429 + Retry-After, 500, timeouts, truncated JSON, empty choices, refusals), a SIGKILL
mid-run and a restart, the Batch API, and the API key's secrecy.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from fault_server import ServerProcess
from tinystories.data.corpus import read_stories
from tinystories.data.filters import FilterConfig
from tinystories.data.generate import GenerateConfig, generate
from tinystories.data.prompts import PromptBuilder
from tinystories.errors import TinyStoriesError
from tinystories.llm_client import ClientConfig, LLMClient, RateLimiter, parse_retry_after

KEY = "sk-test-Secret-7f3a9c"  # the scripted server answers 401 to any other key
KEY_ENV = "TS_GEN_TEST_KEY"
CLI = [sys.executable, "-m", "tinystories.cli"]


@pytest.fixture(scope="module")
def server():
    s = ServerProcess(fault_rate=0.3, timeout_sleep=1.0, api_key=KEY)
    yield s
    s.close()


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)


def make_config(url: str, out: Path, **kw) -> GenerateConfig:
    teacher = ClientConfig(base_url=url, model="scripted", api_key_env=KEY_ENV, timeout_s=0.4,
                            backoff_base_s=0.02, backoff_max_s=0.1, concurrency=8,
                            price_input_per_1m=1.0, price_output_per_1m=2.0, batch_poll_s=0.05)
    teacher = dataclasses.replace(teacher, **{k: kw.pop(k) for k in list(kw) if hasattr(teacher, k)})
    return GenerateConfig(out=str(out), progress=False, teacher=teacher, filters=FilterConfig(min_words=40), **kw)


def records(out: Path) -> tuple[list[dict], list[dict]]:
    accepted = [json.loads(line) for p in sorted((out / "data").glob("*.jsonl")) for line in p.open()]
    rejected = [json.loads(line) for line in (out / "rejected.jsonl").open()]
    return accepted, rejected


def assert_exactly_once(out: Path, n: int) -> list[dict]:
    accepted, rejected = records(out)
    indices = [r["index"] for r in accepted + rejected]
    assert sorted(indices) == list(range(n)), "every prompt index ends exactly once"
    assert len({r["id"] for r in accepted}) == len(accepted)
    assert len({r["text"] for r in accepted}) == len(accepted)
    return accepted


def test_every_story_arrives_once_after_faults(server, tmp_path):
    before = server.stats()
    cfg = make_config(server.url, tmp_path, n=60, seed=1)
    manifest = generate(cfg)
    stats = {k: v - before.get(k, 0) for k, v in server.stats().items()}
    for fault in ["429", "500", "timeout", "truncated", "empty", "refusal"]:
        assert stats.get(fault, 0) >= 1, f"the server injected no {fault}: {stats}"
    accepted = assert_exactly_once(tmp_path, 60)
    _, rejected = records(tmp_path)
    assert {r["reason"] for r in rejected} == {"refusal"} and len(rejected) == stats["refusal"]
    assert manifest["status"] == "complete" and manifest["counts"]["accepted"] == len(accepted)
    reasons = manifest["usage"]["this_session"]["retry_reasons"]
    assert {"HTTP 429", "HTTP 500", "timeout", "malformed answer"} <= set(reasons)
    # Each record carries its prompt, words and features, as the real dataset does.
    for r in accepted:
        assert r["prompt"] == cfg_prompt(cfg, r["index"]) and len(r["words"]) == 3
        assert all(w in r["prompt"] for w in r["words"])
    usage = manifest["usage"]["this_session"]
    assert usage["cost_usd"] == pytest.approx((usage["prompt_tokens"] + 2 * usage["completion_tokens"]) / 1e6)
    assert 0 < manifest["vocabulary_coverage"]["prompts"]["all"] <= manifest["vocabulary_coverage"]["stories"]["all"]
    # The training pipeline's corpus reader reads the output folder directly.
    stories, _ = read_stories(str(tmp_path / "data"))
    assert sorted(stories) == sorted(r["text"] for r in accepted)
    card = (tmp_path / "README.md").read_text()
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["configs"][0]["data_files"][0]["path"] == "data/*.jsonl"

    # A rerun of a finished run asks nothing; a larger --n only does the new prompts.
    answered = server.stats()["ok"]
    assert generate(cfg)["counts"]["accepted"] == len(accepted)
    assert server.stats()["ok"] == answered
    cfg = dataclasses.replace(cfg, n=75)
    generate(cfg)
    assert_exactly_once(tmp_path, 75)


def cfg_prompt(cfg: GenerateConfig, index: int) -> str:
    return PromptBuilder(cfg.prompts, cfg.seed).prompt(index).text


def test_resume_refuses_other_settings(server, tmp_path):
    generate(make_config(server.url, tmp_path, n=3, seed=1))
    with pytest.raises(TinyStoriesError, match="another seed"):
        generate(make_config(server.url, tmp_path, n=3, seed=2))


@pytest.mark.slow
def test_kill_and_restart_loses_and_duplicates_nothing(tmp_path):
    slow = ServerProcess(delay=0.02, fault_rate=0.2, faults=["429", "500", "truncated"], api_key=KEY)
    out, n = tmp_path / "run", 300
    cmd = [*CLI, "generate", "--base-url", slow.url, "--model", "scripted", "--api-key-env", KEY_ENV,
           "--num-stories", str(n), "--seed", "5", "--concurrency", "2", "--out", str(out), "-v",
           "--set", "filters.min_words=40", "--set", "teacher.backoff_base_s=0.02"]
    logs = tmp_path / "logs.txt"
    try:
        with logs.open("w") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
            shard = out / "data" / "stories-00000.jsonl"
            deadline = time.time() + 30
            while time.time() < deadline and not (shard.exists() and shard.read_bytes().count(b"\n") >= 40):
                time.sleep(0.01)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            assert shard.read_bytes().count(b"\n") < n, "killed mid-run"
            with shard.open("a") as f:  # what a kill in the middle of a write leaves behind
                f.write('{"id": "torn", "index": 3, "text": "Once upon')
            done = subprocess.run(cmd, check=False, stdout=log, stderr=subprocess.STDOUT, timeout=60)
        assert done.returncode == 0, logs.read_text()[-2000:]
        assert_exactly_once(out, n)
        assert json.loads((out / "manifest.json").read_text())["status"] == "complete"
        assert "cutting a torn last line" in logs.read_text()
        assert "HTTP Request: POST" in logs.read_text()  # -v logs requests and retries ...
        assert "HTTP 429; retry 1 in" in logs.read_text()
        for path in [logs, *out.rglob("*")]:  # ... but the key appears nowhere
            if path.is_file():
                assert KEY not in path.read_text(errors="replace"), path
    finally:
        slow.close()


def test_wrong_key_is_a_clear_error_without_the_key(server, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-wrong-Key-123")
    with pytest.raises(TinyStoriesError, match="authentication failed") as exc:
        generate(make_config(server.url, tmp_path, n=2))
    assert "sk-wrong-Key-123" not in str(exc.value)


def test_batch_api_with_instruct(server, tmp_path):
    before = server.stats().get("batches_created", 0)
    manifest = generate(make_config(server.url, tmp_path, n=20, instruct=True, batch_api=True))
    assert server.stats()["batches_created"] - before == 2  # stories, then their summaries
    assert manifest["status"] == "complete" and not (tmp_path / "batch_state.json").exists()
    accepted = assert_exactly_once(tmp_path, 20)
    for r in accepted:
        assert r["summary"] == "Two friends had a fun day together."
        assert r["text"].endswith("Story: " + r["story"])
        assert "Summary" not in r["instruction"] or f"Summary: {r['summary']}\n" in r["text"]


def test_completion_api_online_instruct(server, tmp_path):
    generate(make_config(server.url, tmp_path, n=15, instruct=True, api="completion"))
    accepted = assert_exactly_once(tmp_path, 15)
    for r in accepted:
        header, _, story = r["text"].partition("Story: ")
        assert r["summary"] and story == r["story"] and header.endswith("\n")


def test_rate_limits_and_retry_after():
    async def burst() -> float:
        limiter = RateLimiter(per_minute=600)  # 10/s, bucket of 100
        start = time.monotonic()
        for _ in range(105):
            await limiter.acquire(1)
        return time.monotonic() - start

    assert 0.4 < asyncio.run(burst()) < 2
    assert parse_retry_after("2.5") == 2.5
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    client = LLMClient(ClientConfig(base_url="http://127.0.0.1:9/v1", backoff_base_s=0.01))
    assert client._backoff(0, retry_after=3.0) >= 3.0
    assert all(0 <= client._backoff(3, None) <= 0.08 for _ in range(50))
    asyncio.run(client.aclose())


def test_cli_reports_user_mistakes_without_traceback(tmp_path, capsys):
    from tinystories.cli import main

    assert main(["generate", "--set", "teacher.modle=x", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown key(s) ['modle']" in err and "Traceback" not in err
    assert main(["vocab", "--word", "hang"]) == 0
    assert "hung" in capsys.readouterr().out


def test_failed_batch_is_not_polled_forever(tmp_path):
    failing = ServerProcess(api_key=KEY, failed_batches=1)
    try:
        first = generate(make_config(failing.url, tmp_path, n=10, batch_api=True))
        assert first["status"] != "complete" and not (tmp_path / "batch_state.json").exists()
        assert records(tmp_path)[0] == []
        second = generate(make_config(failing.url, tmp_path, n=10, batch_api=True))  # submits them afresh
        assert second["status"] == "complete"
        assert len(records(tmp_path)[0]) + len(records(tmp_path)[1]) == 10
        assert failing.stats()["batches_created"] == 2
    finally:
        failing.close()


def test_a_batch_that_cannot_be_polled_is_kept_for_the_next_run(tmp_path):
    """A network outage while a paid batch runs: one-line error, and the batch id is not forgotten."""
    import threading

    slow = ServerProcess(api_key=KEY, batch_polls=10**6)  # the batch never finishes
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            generate(make_config(slow.url, tmp_path, n=5, batch_api=True))
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            outcome.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    try:
        deadline, state = time.monotonic() + 30, {}
        while not state.get("batch_id") and time.monotonic() < deadline:  # the state is written before the batch
            time.sleep(0.05)
            if (tmp_path / "batch_state.json").exists():
                state = json.loads((tmp_path / "batch_state.json").read_text())
    finally:
        slow.close()  # the teacher goes away while the batch is being polled
        worker.join(60)
    assert len(outcome) == 1 and isinstance(outcome[0], TinyStoriesError), outcome
    assert "run the same command again to go on collecting it" in str(outcome[0])
    assert json.loads((tmp_path / "batch_state.json").read_text()) == state


def test_a_full_disk_ends_with_one_line_and_the_rerun_finishes(small_disk, capsys):
    from conftest import fill
    from tinystories.cli import main
    from tinystories.data.shards import iter_jsonl_repairing

    server = ServerProcess(api_key=KEY)
    out, n = small_disk / "gen", 40
    argv = ["generate", "--base-url", server.url, "--model", "scripted", "--api-key-env", KEY_ENV, "--num-stories",
            str(n), "--concurrency", "4", "--out", str(out), "--set", "filters.min_words=40", "--set", "progress=false"]
    try:
        filler = fill(small_disk, leave=40_000)  # room for about half of the stories
        assert main(argv) == 2
        err = capsys.readouterr().err.splitlines()[-1]
        assert err.startswith(f"error: {out}/") and "no space left on the device" in err, err
        written = [r["index"] for p in [out / "rejected.jsonl", *(out / "data").glob("*.jsonl")]
                   for r in iter_jsonl_repairing(p)]
        assert 0 < len(written) < n and len(set(written)) == len(written)
        filler.unlink()
        assert main(argv) == 0
    finally:
        server.close()
    assert_exactly_once(out, n)
