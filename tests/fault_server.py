"""A scripted OpenAI-compatible server on loopback, for the generation tests and benchmark.

Raw asyncio HTTP/1.1 with keep-alive (no framework), so one process serves hundreds of
requests in flight at a fixed delay. It writes stories that use the words the prompt asks for
and, on the first attempt of a chosen share of prompts, injects a fault: 429 with
Retry-After, 500, a timeout (sleeps past the client's), truncated JSON, empty choices, or a
refusal; or, when asked for, "disconnect" (closes the connection without an answer). It also
speaks the Batch API: /v1/files, /v1/batches, /v1/files/{id}/content, and their lists
(newest first, `limit`/`after`/`has_more`) with filenames and batch metadata; it can lose
the answer to an upload or a batch creation it did make. Optionally it serves
https (`certfile`/`keyfile`) and sends answers chunked (`chunked`).

    python tests/fault_server.py '{"delay": 0.05, "fault_rate": 0.3}'   # prints "PORT <n>"
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import random
import re
import ssl
import subprocess
import sys
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

FAULTS = ["429", "500", "timeout", "truncated", "empty", "refusal"]
NAMES = ["Tom", "Lily", "Ben", "Mia", "Sam", "Anna", "Max", "Sue", "Tim", "Zoe", "Leo", "Kim"]
THINGS = ["ball", "tree", "cat", "boat", "cake", "box", "kite", "hat", "dog", "car", "bird",
          "cup", "shoe", "book", "star", "fish", "sock", "drum", "bell", "leaf", "frog", "pie"]
PLACES = ["park", "garden", "house", "beach", "forest", "school", "shop", "farm", "lake", "hill"]
FEELINGS = ["happy", "sad", "tired", "glad", "brave", "calm", "proud", "sleepy", "silly", "kind"]
ACTS = ["jumped", "ran", "played", "sang", "looked", "laughed", "danced", "walked", "smiled"]
REFUSAL = "I'm sorry, but as an AI I can't write that story."
WORDS_RE = re.compile(r'the verb "([^"]+)", the noun "([^"]+)" and the adjective "([^"]+)"')


@functools.lru_cache(maxsize=4096)  # deterministic; the cache keeps the benchmark client-bound
def write_story(prompt: str) -> str:
    """A story of ~100 words using the prompt's words; varied enough not to be near-duplicates."""
    rng = random.Random(hashlib.sha256(prompt.encode()).hexdigest())
    m = WORDS_RE.search(prompt)
    verb, noun, adjective = m.groups() if m else ("play", "toy", "nice")
    name, friend = rng.sample(NAMES, 2)
    sentences = [f"Once upon a time, {name} had a {adjective} {noun}.",
                 f"{name} wanted to {verb} with the {noun} every day."]
    while len(" ".join(sentences).split()) < 100:
        a, b = rng.sample(THINGS, 2)
        sentences.append(rng.choice([
            f"{name} and {friend} {rng.choice(ACTS)} to the {rng.choice(PLACES)} with a {a}.",
            f"The {a} was {rng.choice(FEELINGS)} and the {b} was {rng.choice(FEELINGS)}.",
            f'"Look at the {a}!" said {friend}. {name} {rng.choice(ACTS)} and felt {rng.choice(FEELINGS)}.',
            f"In the {rng.choice(PLACES)}, they found a {b} under a big {a}.",
        ]))
    sentences.append(f"At the end of the day, {name} was {rng.choice(FEELINGS)} and went home.")
    return " ".join(sentences[:3]) + "\n\n" + " ".join(sentences[3:])


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_ASCII_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2013": "-",
                               "\u2014": "-", "\u2026": "..."})


def load_sentences(path: str) -> list[str]:
    """The ASCII sentences (4-40 words) of a TinyStories text file (stories split by <|endoftext|>)."""
    text = Path(path).read_text(encoding="utf-8").translate(_ASCII_QUOTES)
    out = []
    for story in text.split("<|endoftext|>"):
        for sentence in _SENTENCE_END.split(" ".join(story.split())):
            if sentence.isascii() and 4 <= len(sentence.split()) <= 40 and '"' not in sentence:
                out.append(sentence)
    return out


def write_real_story(prompt: str, sentences: list[str]) -> str:
    """A story of ~120 words: the prompt's words in its first two sentences, then real
    TinyStories sentences drawn at random, so every answer differs (no cache: each prompt of a
    large benchmark is new)."""
    rng = random.Random(prompt)
    m = WORDS_RE.search(prompt)
    verb, noun, adjective = m.groups() if m else ("play", "toy", "nice")
    name = rng.choice(NAMES)
    first = [f"Once upon a time, {name} had a {adjective} {noun}.", f"{name} wanted to {verb} with it every day."]
    rest: list[str] = []
    words = 16
    while words < 120:
        rest.append(rng.choice(sentences))
        words += len(rest[-1].split())
    cut = len(rest) // 2
    return " ".join(first + rest[:cut]) + "\n\n" + " ".join(rest[cut:])


@dataclass
class Script:
    delay: float = 0.0  # seconds before every answer
    fault_rate: float = 0.0  # share of prompts whose first attempt fails
    faults: list[str] = field(default_factory=lambda: list(FAULTS))
    timeout_sleep: float = 2.0  # longer than the client's timeout
    retry_after: str = "0.05"  # the Retry-After header of a 429
    api_key: str | None = None  # if set, other Authorization headers get 401
    batch_polls: int = 1  # "in_progress" answers before a batch completes
    failed_batches: int = 0  # the first this many batches end "failed" with no output
    lost_uploads: int = 0  # the first this many uploads are stored, then the connection drops
    lost_creates: int = 0  # the first this many batches are created, then the connection drops
    chunked: bool = False  # Transfer-Encoding: chunked instead of Content-Length
    certfile: str | None = None  # with keyfile: serve https
    keyfile: str | None = None
    sentences: str | None = None  # a TinyStories .txt file: stories of its real sentences (write_real_story)


class FaultServer:
    def __init__(self, script: Script):
        self.script = script
        self.attempts: Counter[str] = Counter()
        self.stats: Counter[str] = Counter()
        self.files: dict[str, str] = {}
        self.file_meta: dict[str, dict] = {}  # id -> the file object the list endpoint shows
        self.batches: dict[str, dict] = {}
        self.sentences = load_sentences(script.sentences) if script.sentences else []

    def fault_for(self, prompt: str) -> str | None:
        key = hashlib.sha256(prompt.encode()).hexdigest()
        self.attempts[key] += 1
        h = int(key[:8], 16)
        if self.attempts[key] == 1 and (h % 1000) < self.script.fault_rate * 1000:
            return self.script.faults[(h // 1000) % len(self.script.faults)]
        return None

    def answer(self, path: str, body: dict, text: str | None = None) -> tuple[int, dict]:
        """The JSON answer to a chat/completion body (no faults: used by the Batch API too)."""
        prompt = body["messages"][-1]["content"] if "messages" in body else body["prompt"]
        if text is None:
            text = ("Two friends had a fun day together." if prompt.startswith("Summarize")
                    else write_real_story(prompt, self.sentences) if self.sentences else write_story(prompt))
        choice = {"index": 0, "finish_reason": "stop",
                  **({"message": {"role": "assistant", "content": text}} if "chat" in path else {"text": text})}
        usage = {"prompt_tokens": len(prompt.split()), "completion_tokens": len(text.split())}
        return 200, {"id": "cmpl-1", "object": "chat.completion", "choices": [choice], "usage": usage}

    async def handle_completion(self, path: str, body: dict) -> tuple[int, bytes, dict]:
        prompt = body["messages"][-1]["content"] if "messages" in body else body["prompt"]
        fault = self.fault_for(prompt)
        self.stats[fault or "ok"] += 1
        if self.script.delay:
            await asyncio.sleep(self.script.delay)
        if fault == "disconnect":
            raise ConnectionAbortedError("scripted disconnect")  # serve_connection hangs up
        if fault == "429":
            return 429, b'{"error": {"message": "rate limited"}}', {"Retry-After": self.script.retry_after}
        if fault == "500":
            return 500, b'{"error": {"message": "boom"}}', {}
        if fault == "timeout":
            await asyncio.sleep(self.script.timeout_sleep)
        status, answer = self.answer(path, body, REFUSAL if fault == "refusal" else None)
        if fault == "empty":
            answer["choices"] = []
        data = json.dumps(answer).encode()
        return status, data[: len(data) // 2] if fault == "truncated" else data, {}

    def handle_batch(self, method: str, target: str, body: bytes, headers: dict) -> tuple[int, bytes]:
        url = urllib.parse.urlsplit(target)
        path, query = url.path, dict(urllib.parse.parse_qsl(url.query))
        if method == "GET" and path in ("/v1/files", "/v1/batches"):
            items = list(self.file_meta.values()) if path == "/v1/files" else [*map(self._public, self.batches.values())]
            if "purpose" in query:
                items = [i for i in items if i.get("purpose") == query["purpose"]]
            return 200, json.dumps(page(items, query)).encode()
        if method == "POST" and path == "/v1/files":
            filename, content = multipart_file(body, headers["content-type"])
            file_id = f"file-{len(self.files)}"
            self.files[file_id] = content
            self.file_meta[file_id] = {"id": file_id, "object": "file", "purpose": "batch", "filename": filename,
                                       "bytes": len(content), "created_at": int(time.time())}
            self.stats["files_uploaded"] += 1
            if self.stats["files_uploaded"] <= self.script.lost_uploads:
                raise ConnectionAbortedError("scripted lost answer")
            return 200, json.dumps(self.file_meta[file_id]).encode()
        if method == "POST" and path == "/v1/batches":
            req = json.loads(body)
            lines = []
            for line in self.files[req["input_file_id"]].splitlines():
                item = json.loads(line)
                status, answer = self.answer(item["url"], item["body"])
                lines.append(json.dumps({"id": "r", "custom_id": item["custom_id"], "error": None,
                                         "response": {"status_code": status, "body": answer}}))
            out_id = f"file-{len(self.files)}"
            self.files[out_id] = "\n".join(lines) + "\n"
            batch_id = f"batch-{len(self.batches)}"
            self.batches[batch_id] = {"id": batch_id, "status": "validating", "output_file_id": None,
                                      "metadata": req.get("metadata"), "created_at": int(time.time()),
                                      "_out": out_id, "_polls": 0}
            self.stats["batches_created"] += 1
            if self.stats["batches_created"] <= self.script.lost_creates:
                raise ConnectionAbortedError("scripted lost answer")
            return 200, json.dumps(self._public(self.batches[batch_id])).encode()
        if method == "GET" and path.startswith("/v1/batches/"):
            batch = self.batches[path.rsplit("/", 1)[1]]
            batch["_polls"] += 1
            if batch["_polls"] > self.script.batch_polls and int(batch["id"].split("-")[1]) < self.script.failed_batches:
                batch.update(status="failed", errors={"data": [{"message": "scripted failure"}]})
            elif batch["_polls"] > self.script.batch_polls:
                batch.update(status="completed", output_file_id=batch["_out"])
            else:
                batch["status"] = "in_progress"
            return 200, json.dumps(self._public(batch)).encode()
        if method == "GET" and path.startswith("/v1/files/") and path.endswith("/content"):
            return 200, self.files[path.split("/")[3]].encode()
        return 404, b'{"error": {"message": "not found"}}'

    @staticmethod
    def _public(batch: dict) -> dict:
        return {k: v for k, v in batch.items() if not k.startswith("_")}

    async def route(self, method: str, path: str, headers: dict, body: bytes) -> tuple[int, bytes, dict]:
        self.stats["requests"] += 1
        if path == "/_stats":
            return 200, json.dumps(self.stats).encode(), {}
        expected = self.script.api_key
        if expected and headers.get("authorization") != f"Bearer {expected}":
            return 401, b'{"error": {"message": "bad key"}}', {}
        if path in ("/v1/chat/completions", "/v1/completions"):
            return await self.handle_completion(path, json.loads(body))
        return (*self.handle_batch(method, path, body, headers), {})

    async def serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats["connections"] += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                request_line, *header_lines = head.decode("latin-1").split("\r\n")
                method, path, _ = request_line.split(" ", 2)
                headers = {k.strip().lower(): v.strip() for k, v in
                           (h.split(":", 1) for h in header_lines if ":" in h)}
                body = await reader.readexactly(int(headers.get("content-length", 0)))
                status, data, extra = await self.route(method, path, headers, body)
                head_out = [f"HTTP/1.1 {status} X", "Content-Type: application/json",
                            *(f"{k}: {v}" for k, v in extra.items())]
                if self.script.chunked:  # two chunks, to exercise the client's reassembly
                    head_out.append("Transfer-Encoding: chunked")
                    chunks = [c for c in (data[: len(data) // 2], data[len(data) // 2:]) if c]
                    data = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
                else:
                    head_out.append(f"Content-Length: {len(data)}")
                writer.write(("\r\n".join(head_out) + "\r\n\r\n").encode() + data)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def multipart_file(body: bytes, content_type: str) -> tuple[str, str]:
    """The (filename, content) of the file part of a multipart/form-data upload."""
    boundary = content_type.split("boundary=")[1].strip('"').encode()
    for part in body.split(b"--" + boundary):
        if b"filename=" in part:
            name = re.search(rb'filename="([^"]*)"', part)
            return (name.group(1).decode() if name else ""), part.split(b"\r\n\r\n", 1)[1].rsplit(b"\r\n", 1)[0].decode()
    raise ValueError("no file in the upload")


def page(items: list[dict], query: dict[str, str]) -> dict:
    """One page of an OpenAI list: newest first, `limit` items after the id `after`."""
    items = items[::-1]
    if "after" in query:
        items = items[[i["id"] for i in items].index(query["after"]) + 1:]
    limit = int(query.get("limit", 20))
    return {"object": "list", "data": items[:limit], "has_more": len(items) > limit}


async def main(script: Script) -> None:
    server = FaultServer(script)
    tls = None
    if script.certfile:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(script.certfile, script.keyfile)
    srv = await asyncio.start_server(server.serve_connection, "127.0.0.1", 0, backlog=1024, ssl=tls)
    print(f"PORT {srv.sockets[0].getsockname()[1]}", flush=True)
    async with srv:
        await srv.serve_forever()


class ServerProcess:
    """Runs the server in its own process; `url` is its /v1 root."""

    def __init__(self, **script: object):
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), json.dumps(script)],
                                     stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("PORT "):
            self.proc.kill()
            raise RuntimeError(f"fault server did not start: {line!r}")
        scheme = "https" if script.get("certfile") else "http"
        self.url = f"{scheme}://127.0.0.1:{int(line.split()[1])}/v1"

    def stats(self) -> dict[str, int]:
        import httpx

        return httpx.get(self.url.replace("/v1", "/_stats")).json()

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


if __name__ == "__main__":
    try:
        import uvloop  # optional, faster under load
        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main(Script(**json.loads(sys.argv[1] if len(sys.argv) > 1 else "{}"))))
