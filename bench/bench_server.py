"""Load test of `tinystories serve`: throughput and latency vs concurrency, and a memory soak.

The server runs as a separate process (the real CLI) on loopback, serving a model of the
demo preset's shape with *random weights* (throughput does not depend on what the
weights say; random stories rarely end early, so nearly every request runs to
max_tokens). Clients stream /v1/completions with httpx. For each concurrency level
(1 = sequential serving, the peer every ratio is measured against) it reports
requests/s, generated tokens/s and first-token / total latency percentiles, and checks
that no request was dropped (every stream ends with ``data: [DONE]`` and a finish_reason).
The machine may be shared, so it also reports the server's CPU use, tokens per second of
server CPU (what the server would do with a core of its own) and the load average.

    python bench/bench_server.py                    # 1, 8, 32 clients
    python bench/bench_server.py --soak-seconds 120 # plus the memory soak (RSS over time, plot)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch

from tinystories.data.corpus import read_stories
from tinystories.model.checkpoint import save_model
from tinystories.model.gpt import GPT
from tinystories.model.presets import get_preset
from tinystories.tokenizer import train_bpe

HERE = Path(__file__).parent


def make_model(folder: Path, arch: str | None = None) -> Path:
    """The demo preset's shape with random weights; `arch` (neo or modern) swaps the preset's block."""
    demo = get_preset("demo")
    stories = read_stories("bundled:train")[0]
    tokenizer = train_bpe(stories, vocab_size=demo.vocab_size)
    torch.manual_seed(0)
    model = GPT(get_preset("demo", vocab_size=tokenizer.vocab_size, arch=arch or demo.arch)).eval()
    return save_model(folder / "demo-random", model, tokenizer)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(folder: Path, threads: int, env: dict[str, str] | None = None
                 ) -> tuple[subprocess.Popen[bytes], str]:
    """`tinystories serve folder` in its own process on a free loopback port, once it answers."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "tinystories.cli", "serve", str(folder), "--port", str(port),
                             "--threads", str(threads)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    deadline = time.monotonic() + 60
    while True:
        try:
            httpx.get(url + "/v1/models", timeout=1).raise_for_status()
            return proc, url
        except httpx.HTTPError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise SystemExit(f"server did not start: {proc.stderr.read().decode()}") from None  # type: ignore[union-attr]
            time.sleep(0.2)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def one_request(client: httpx.AsyncClient, url: str, prompt: str, max_tokens: int, seed: int) -> dict:
    t0 = time.perf_counter()
    first, tokens, finish, done = None, 0, None, False
    body = {"model": "demo-random", "prompt": prompt, "max_tokens": max_tokens, "temperature": 1.0,
            "seed": seed, "stream": True, "stream_options": {"include_usage": True}}
    async with client.stream("POST", url + "/v1/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                done = True
                break
            msg = json.loads(line[6:])
            if msg.get("usage"):
                tokens = msg["usage"]["completion_tokens"]
            for c in msg["choices"]:
                if first is None and c["text"]:
                    first = time.perf_counter() - t0
                finish = c["finish_reason"] or finish
    return {"ok": done and finish in ("stop", "length"), "first": first or float("nan"),
            "total": time.perf_counter() - t0, "tokens": tokens}


async def load(url: str, clients: int, requests: int, prompts: list[str], max_tokens: int,
               stop_at: float | None = None) -> tuple[list[dict], float]:
    """`clients` concurrent streams, `requests` in all (or until `stop_at`, for the soak)."""
    results: list[dict] = []
    counter = iter(range(10**9))
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=clients + 4)) as client:
        async def worker() -> None:
            while True:
                i = next(counter)
                if (stop_at is None and i >= requests) or (stop_at is not None and time.monotonic() > stop_at):
                    return
                try:
                    results.append(await one_request(client, url, prompts[i % len(prompts)], max_tokens, i))
                except httpx.HTTPError as exc:
                    results.append({"ok": False, "error": str(exc), "first": float("nan"),
                                    "total": float("nan"), "tokens": 0})

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        return results, time.perf_counter() - t0


def pct(values: list[float], q: float) -> float:
    values = sorted(v for v in values if not math.isnan(v))
    return values[min(len(values) - 1, int(q / 100 * len(values)))] * 1000 if values else float("nan")


def summarize(clients: int, results: list[dict], seconds: float) -> dict:
    tokens = sum(r["tokens"] for r in results)
    firsts, totals = [r["first"] for r in results], [r["total"] for r in results]
    return {"clients": clients, "requests": len(results), "dropped": sum(not r["ok"] for r in results),
            "req_s": len(results) / seconds, "tok_s": tokens / seconds,
            **{f"first_p{q}": pct(firsts, q) for q in (50, 95, 99)},
            **{f"total_p{q}": pct(totals, q) for q in (50, 95, 99)}}


def soak(url: str, pid: int, seconds: float, clients: int, prompts: list[str], max_tokens: int) -> list[tuple[float, float]]:
    samples: list[tuple[float, float]] = []
    t0 = time.monotonic()

    async def sample() -> None:
        while time.monotonic() - t0 < seconds:
            samples.append((time.monotonic() - t0, rss_mb(pid)))
            await asyncio.sleep(2)

    async def both() -> list[dict]:
        task = asyncio.create_task(sample())
        results, _ = await load(url, clients, 0, prompts, max_tokens, stop_at=t0 + seconds)
        await task
        return results

    results = asyncio.run(both())
    samples.append((time.monotonic() - t0, rss_mb(pid)))
    print(f"soak: {len(results)} requests, {sum(not r['ok'] for r in results)} dropped; RSS MB "
          f"start {samples[0][1]:.0f} -> after warm-up {samples[min(5, len(samples) - 1)][1]:.0f} -> "
          f"end {samples[-1][1]:.0f} (max {max(s[1] for s in samples):.0f})")
    return samples


def plot_soak(samples: list[tuple[float, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3))
    ax.plot([s[0] for s in samples], [s[1] for s in samples], marker=".")
    ax.set_xlabel("seconds under load (32 streaming clients)")
    ax.set_ylabel("server RSS (MB)")
    ax.set_ylim(0, max(s[1] for s in samples) * 1.2)
    ax.set_title("tinystories serve: memory during the soak")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--levels", default="1,8,32", help="concurrency levels (comma-separated)")
    ap.add_argument("--requests-per-client", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--server-threads", type=int, default=1,
                    help="torch threads of the server (1: the load generator shares the machine's cores)")
    ap.add_argument("--soak-seconds", type=float, default=0, help="also run a memory soak this long")
    ap.add_argument("--plot", default=str(HERE / "server_soak.png"))
    ap.add_argument("--arch", choices=["neo", "modern"], default=None,
                    help="the model's block (default: the demo preset's, modern since 2026-11-25)")
    args = ap.parse_args()
    arch = args.arch or get_preset("demo").arch
    prompts = [s[:120] for s in read_stories("bundled:valid")[0][:64]]
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_model(Path(tmp), arch)
        proc, url = start_server(folder, args.server_threads)
        try:
            asyncio.run(load(url, 4, 8, prompts, 16))  # warm-up
            print(f"model: demo preset shape ({arch}), random weights; max_tokens {args.max_tokens}; "
                  f"server torch threads {args.server_threads}; {os.cpu_count()} CPUs")
            rows = []
            for clients in [int(c) for c in args.levels.split(",")]:
                cpu0, own0 = cpu_seconds(proc.pid), time.process_time()
                results, seconds = asyncio.run(load(url, clients, clients * args.requests_per_client, prompts,
                                                    args.max_tokens))
                server_cpu = cpu_seconds(proc.pid) - cpu0
                rows.append({**summarize(clients, results, seconds), "server_cpu": server_cpu / seconds,
                             "client_cpu": (time.process_time() - own0) / seconds,
                             "tok_cpu_s": sum(r["tokens"] for r in results) / server_cpu,
                             "load": os.getloadavg()[0]})
            base, base_cpu = rows[0]["tok_s"], rows[0]["tok_cpu_s"]
            print("| clients | requests | dropped | req/s | tokens/s | vs 1 client | first token p50/p95/p99 ms "
                  "| total p50/p95/p99 ms | server / client CPU (cores) | tokens per server CPU-s (vs 1) "
                  "| load avg |")
            print("|---|---|---|---|---|---|---|---|---|---|---|")
            for r in rows:
                print(f"| {r['clients']} | {r['requests']} | {r['dropped']} | {r['req_s']:.2f} | {r['tok_s']:.0f} "
                      f"| {r['tok_s'] / base:.1f}x | {r['first_p50']:.0f} / {r['first_p95']:.0f} / "
                      f"{r['first_p99']:.0f} | {r['total_p50']:.0f} / {r['total_p95']:.0f} / {r['total_p99']:.0f} "
                      f"| {r['server_cpu']:.2f} / {r['client_cpu']:.2f} | {r['tok_cpu_s']:.0f} "
                      f"({r['tok_cpu_s'] / base_cpu:.1f}x) | {r['load']:.1f} |")
            if args.soak_seconds:
                plot_soak(soak(url, proc.pid, args.soak_seconds, 32, prompts, args.max_tokens), Path(args.plot))
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
