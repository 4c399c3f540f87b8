"""Teacher client throughput against a loopback server that answers after a fixed delay.

The server (tests/fault_server.py, raw asyncio) runs in its own process, so it does not share
the client's event loop. At `c` requests in flight and a delay `d`, no client can beat
c / d stories/s; the ratio to that limit is the client's efficiency. Three clients run in turn
at each `c`, in the same run:

- `raw`: a bare keep-alive HTTP/1.1 loop on asyncio streams (no retries, no parsing beyond the
  JSON). It checks the server: if it misses the limit, the server or the machine is the cap.
- `httpx`: the previous transport of LLMClient (httpx, pools of 8 connections), the peer.
- `aiohttp`: LLMClient as shipped.
- `generate` (only if asked for): the whole generation run (`tinystories.data.generate`,
  LLMClient + filters + MinHash + JSONL writes, no progress bar) into a temporary folder.

`--delay 0 --clients raw` measures the server's own capacity (no limit, no ratio).

    python bench/bench_teacher.py [--delay 0.1] [--concurrency 1 32 256] [--seconds 4] [--repeat 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from fault_server import ServerProcess
from tinystories.data.filters import FilterConfig
from tinystories.data.generate import GenerateConfig, generate
from tinystories.data.prompts import PromptBuilder
from tinystories.llm_client import ClientConfig, LLMClient, Response


class HttpxTeacher(LLMClient):
    """LLMClient on its previous transport: httpx, spread over pools of 8 connections
    (httpcore scans the whole pool for every queued request, quadratic at hundreds in flight)."""

    def __init__(self, cfg: ClientConfig):
        super().__init__(cfg)
        size = min(cfg.concurrency, 8)
        limits = httpx.Limits(max_connections=size, max_keepalive_connections=size)
        self._pools = [httpx.AsyncClient(headers=self._headers, timeout=cfg.timeout_s, limits=limits)
                       for _ in range(math.ceil(cfg.concurrency / size))]
        self._in_flight = [0] * len(self._pools)

    async def aclose(self) -> None:
        for pool in self._pools:
            await pool.aclose()

    async def _send(self, method: str, path: str, body: bytes | None, headers: Mapping[str, str] | None) -> Response:
        i = min(range(len(self._pools)), key=self._in_flight.__getitem__)  # least busy pool
        self._in_flight[i] += 1
        try:
            r = await self._pools[i].request(method, self._root + path, content=body, headers=headers)
        finally:
            self._in_flight[i] -= 1
        return Response(r.status_code, r.headers, r.content, str(r.url))


class RawClient:
    """The server check: a bare keep-alive HTTP/1.1 client on asyncio streams (no retries, no
    timeouts, no TLS), with LLMClient's `complete` and `aclose`."""

    def __init__(self, url: str):
        self.host, self.port = urlsplit(url).hostname, urlsplit(url).port
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def complete(self, prompt: str) -> str:
        reader, writer = self.idle.pop() if self.idle else await asyncio.open_connection(self.host, self.port)
        body = json.dumps({"model": "bench", "messages": [{"role": "user", "content": prompt}]}).encode()
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (self.host.encode(), len(body), body))
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        answer = json.loads(await reader.readexactly(length))
        self.idle.append((reader, writer))
        return answer["choices"][0]["message"]["content"]

    async def aclose(self) -> None:
        for _, writer in self.idle:
            writer.close()


async def measure(name: str, url: str, concurrency: int, requests: int, prompts: list[str]) -> tuple[float, float]:
    """(wall seconds, client CPU seconds) for `requests` requests, after a warm-up round that
    opens the connections."""
    cfg = ClientConfig(base_url=url, model="bench", concurrency=concurrency, max_retries=0)
    client = {"raw": lambda: RawClient(url), "httpx": lambda: HttpxTeacher(cfg), "aiohttp": lambda: LLMClient(cfg)}[name]()

    async def run(n: int) -> None:
        todo = iter(range(n))

        async def worker() -> None:
            for i in todo:
                await client.complete(prompts[i % len(prompts)])

        await asyncio.gather(*(worker() for _ in range(concurrency)))

    try:
        await run(concurrency)  # warm-up
        cpu, wall = time.process_time(), time.perf_counter()
        await run(requests)
        return time.perf_counter() - wall, time.process_time() - cpu
    finally:
        await client.aclose()


def measure_generate(url: str, concurrency: int, requests: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of a whole `generate` run of `requests` prompts."""
    teacher = ClientConfig(base_url=url, model="bench", concurrency=concurrency, max_retries=0)
    with tempfile.TemporaryDirectory() as out:
        cfg = GenerateConfig(n=requests, out=out, progress=False, teacher=teacher, filters=FilterConfig(min_words=40))
        cpu, wall = time.process_time(), time.perf_counter()
        generate(cfg)
        return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--delay", type=float, default=0.1, help="server answer delay, seconds")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 32, 256])
    ap.add_argument("--clients", nargs="+", default=["raw", "httpx", "aiohttp"], choices=["raw", "httpx", "aiohttp", "generate"])
    ap.add_argument("--seconds", type=float, default=4.0, help="target duration of each measurement")
    ap.add_argument("--repeat", type=int, default=1, help="rounds over all rows (the machine's load varies)")
    args = ap.parse_args()
    os.environ.pop("OPENAI_API_KEY", None)
    builder = PromptBuilder(seed=0)
    prompts = [builder.prompt(i).text for i in range(1000)]
    server = ServerProcess(delay=args.delay)
    print(f"# {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}, server delay {args.delay * 1000:.0f} ms")
    print("| in flight | client | requests | stories/s | limit (in flight / delay) | ratio "
          "| client CPU / wall | client CPU ms / story | load avg |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    try:
        for _ in range(args.repeat):
            for c in args.concurrency:
                limit = c / args.delay if args.delay else math.inf
                n = max(c, int(min(limit, 5000) * args.seconds))
                for name in args.clients:
                    wall, cpu = (measure_generate(server.url, c, n) if name == "generate"
                                 else asyncio.run(measure(name, server.url, c, n, prompts)))
                    rate = n / wall
                    load = os.getloadavg()[0]  # other processes on the machine slow both sides
                    ratio = f"{rate / limit:.3f}" if args.delay else "-"
                    print(f"| {c} | {name} | {n} | {rate:.1f} | {limit:.1f} | {ratio} "
                          f"| {cpu / wall:.0%} | {cpu / n * 1000:.3f} | {load:.1f} |", flush=True)
    finally:
        server.close()


if __name__ == "__main__":
    main()
