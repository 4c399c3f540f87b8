"""The teacher client's transport against real loopback servers: keep-alive reuse, chunked
answers, dropped connections, multipart uploads, and https with certificate verification."""

from __future__ import annotations

import asyncio
import subprocess
import time

import pytest

from fault_server import ServerProcess
from tinystories.data.prompts import PromptBuilder
from tinystories.errors import TinyStoriesError
from tinystories.llm_client import ClientConfig, LLMClient, LLMError, multipart_body

PROMPTS = [PromptBuilder(seed=3).prompt(i).text for i in range(12)]


def complete_all(cfg: ClientConfig, prompts: list[str]) -> tuple[list[str], LLMClient]:
    async def go() -> tuple[list[str], LLMClient]:
        client = LLMClient(cfg)
        try:
            return [c.text for c in await asyncio.gather(*map(client.complete, prompts))], client
        finally:
            await client.aclose()

    return asyncio.run(go())


def config(url: str, **kw) -> ClientConfig:
    return ClientConfig(**{"base_url": url, "model": "scripted", "api_key_env": "TS_TEACHER_TEST_NO_KEY",
                            "timeout_s": 2.0, "backoff_base_s": 0.01, "backoff_max_s": 0.05, **kw})


def test_keep_alive_reuses_connections_and_reads_chunked_answers():
    server = ServerProcess(chunked=True)
    try:
        texts, client = complete_all(config(server.url, concurrency=3), PROMPTS)
        stats = server.stats()
    finally:
        server.close()
    assert all(t.startswith("Once upon a time") and len(t.split()) >= 100 for t in texts)
    assert len(set(texts)) == len(PROMPTS) and client.usage.retries == 0
    assert stats["connections"] <= 3 + 1  # three workers' connections (+ the stats request)


def test_dropped_connections_are_retried():
    server = ServerProcess(fault_rate=1.0, faults=["disconnect"])  # every first attempt is cut
    try:
        texts, client = complete_all(config(server.url, concurrency=4), PROMPTS[:6])
        stats = server.stats()
    finally:
        server.close()
    assert len(texts) == 6 and stats["disconnect"] == 6
    assert client.usage.errors == {"connection error": 6} and client.usage.retries == 6


def test_retry_after_is_honoured():
    server = ServerProcess(fault_rate=1.0, faults=["429"], retry_after="0.6")
    try:
        start = time.monotonic()
        texts, client = complete_all(config(server.url, backoff_base_s=0.001, backoff_max_s=0.001), PROMPTS[:2])
        elapsed = time.monotonic() - start
    finally:
        server.close()
    assert len(texts) == 2 and client.usage.errors == {"HTTP 429": 2}
    assert elapsed >= 0.6  # the backoff alone would wait at most 1 ms


def test_retries_run_out_with_a_clear_error():
    server = ServerProcess(fault_rate=1.0, faults=["500"])
    try:
        with pytest.raises(LLMError, match="gave up after 1 attempts; last: HTTP 500"):
            complete_all(config(server.url, max_retries=0), PROMPTS[:1])
    finally:
        server.close()


def test_multipart_body_round_trips():
    body, content_type = multipart_body({"purpose": "batch"}, "batch.jsonl", b'{"a": 1}\n', "application/jsonl")
    boundary = content_type.split("boundary=")[1]
    assert body.startswith(f"--{boundary}\r\n".encode()) and body.endswith(f"--{boundary}--\r\n".encode())
    assert b'name="purpose"\r\n\r\nbatch\r\n' in body
    assert b'filename="batch.jsonl"\r\nContent-Type: application/jsonl\r\n\r\n{"a": 1}\n\r\n' in body


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1 (its own CA)."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    return cert, key


def test_https_verifies_the_certificate(certificate, monkeypatch):
    cert, key = certificate
    server = ServerProcess(certfile=str(cert), keyfile=str(key))
    try:
        assert server.url.startswith("https://")
        # Not signed by a trusted CA: a clear error at once, not retries.
        with pytest.raises(TinyStoriesError, match="certificate .* failed verification.*SSL_CERT_FILE"):
            complete_all(config(server.url, max_retries=8, backoff_base_s=10.0), PROMPTS[:1])
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # trust it: the same request now succeeds
        texts, _ = complete_all(config(server.url), PROMPTS[:2])
    finally:
        server.close()
    assert all(t.startswith("Once upon a time") for t in texts)
