"""Tail latency of small requests while one large request runs: does a big job starve the rest?

Starts `tinystories serve` (the real CLI, a separate process, one torch thread) from a source
tree (`--src`, default this checkout; point it at an older checkout to measure "before"),
serving a model of the demo preset's shape with random weights. One client sends a large
non-streaming request (`--prompts` x `--n` rows of `--max-tokens`); meanwhile another sends a
small request (5 tokens) every 0.25 s until the large one ends. Reports the small requests'
latency percentiles and the large request's duration, with the load average.

    python bench/bench_fairness.py                       # this checkout
    python bench/bench_fairness.py --src /tmp/old/src    # another checkout, same model and load
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from bench_server import make_model, pct, start_server


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", default=str(Path(__file__).parents[1] / "src"), help="source tree of the server")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=128)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_model(Path(tmp))
        proc, url = start_server(folder, 1, {"PYTHONPATH": args.src})
        try:
            small = {"model": folder.name, "prompt": "Once upon a time", "max_tokens": 5, "temperature": 0}
            httpx.post(url + "/v1/completions", json=small, timeout=60).raise_for_status()  # warm-up
            alone = []
            for _ in range(5):
                t0 = time.perf_counter()
                httpx.post(url + "/v1/completions", json=small, timeout=60).raise_for_status()
                alone.append(time.perf_counter() - t0)
            big = {"model": folder.name, "prompt": ["Once upon a time"] * args.prompts, "n": args.n,
                   "max_tokens": args.max_tokens, "temperature": 1.0, "seed": 0}
            result: dict[str, float] = {}

            def run_big() -> None:
                t0 = time.perf_counter()
                r = httpx.post(url + "/v1/completions", json=big, timeout=3600)
                result["status"], result["seconds"] = r.status_code, time.perf_counter() - t0

            thread = threading.Thread(target=run_big)
            thread.start()
            time.sleep(0.5)
            waits = []
            while thread.is_alive():
                t0 = time.perf_counter()
                httpx.post(url + "/v1/completions", json=small, timeout=3600).raise_for_status()
                waits.append(time.perf_counter() - t0)
                time.sleep(0.25)
            thread.join()
            print(f"server source {args.src}; big request: {args.prompts} prompts x n={args.n} = "
                  f"{args.prompts * args.n} rows of {args.max_tokens} tokens, HTTP {result['status']:.0f}, "
                  f"{result['seconds']:.1f} s; load average {os.getloadavg()[0]:.1f}")
            print(f"small request alone: p50 {pct(alone, 50):.0f} ms")
            print(f"small requests during the big one: {len(waits)}, p50 {pct(waits, 50):.0f} ms, "
                  f"p95 {pct(waits, 95):.0f} ms, max {max(waits) * 1000:.0f} ms")
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
