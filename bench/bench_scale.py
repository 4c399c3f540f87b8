"""The data pipeline at the paper's scale: wall time and peak memory of every stage vs N stories.

For each N (default 10K, 100K, 1M), in a fresh folder, each stage runs as its own process
(GNU `time` gives that process's peak RSS):

- `generate` against a fast local teacher: tests/fault_server.py in its own process, a real
  OpenAI-compatible HTTP server answering at once with a different story of real TinyStories
  sentences each time (`Script.sentences`), concurrency 256. The run is SIGKILLed when the
  teacher has answered N/2 prompts and started again; `generate` is both parts together
  (time summed, the larger peak RSS), `resume` is the restart's time to its first new request;
- `rerun` of the finished folder (must ask the teacher nothing);
- `corpus` of the folder to a JSONL file, `pretokenize` (BPE 4096, bundled validation);
- `memorisation`: `eval.rouge.max_rouge_precision` of 40 completions against every story;
- `train`: a few optimizer steps (demo preset) reading the N-story token file.

Then the growth exponent of each figure: the log-log slope of time and of memory against N
(1.0 = linear). Results also go to OUT/results.jsonl.

    python bench/bench_scale.py [--sizes 10000,100000,1000000] [--out /tmp/bench_scale] [--stages ...]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from fault_server import ServerProcess

SENTENCES = ROOT / "src" / "tinystories" / "resources" / "train_sample.txt"  # the bundled real stories
CLI = [sys.executable, "-m", "tinystories.cli"]
STAGES = ["generate", "rerun", "corpus", "pretokenize", "memorisation", "train"]
MEMORISATION = """
import sys
from tinystories.data.corpus import iter_stories, read_stories
from tinystories.eval.rouge import max_rouge_precision
completions = read_stories("bundled:valid")[0][:40]
found = max_rouge_precision(completions, iter_stories(sys.argv[1]), progress=False)
print(sum(f.precision for f in found) / len(found))
"""


def answered(url: str) -> int:
    return int(httpx.get(url.replace("/v1", "/_stats"), timeout=10).json().get("ok", 0))


def run(cmd: list[str], kill_when: float | None = None, url: str = "", n_kill: int = 0,
        first_request: bool = False) -> dict[str, float]:
    """Run `cmd`; its wall time and peak RSS (MB). With `kill_when`, SIGKILL it once the teacher
    has answered `n_kill` prompts; with `first_request`, also the time to its first new request."""
    out: dict[str, float] = {}
    base = answered(url) if url else 0
    rss_file = Path(f"/tmp/bench_scale_rss_{os.getpid()}")
    # GNU time reports its child's own peak: a child forked straight from this process would
    # start its peak at this process's size (Linux keeps ru_maxrss across exec).
    start = time.perf_counter()
    proc = subprocess.Popen(["/usr/bin/time", "-q", "-f", "%M", "-o", str(rss_file), *cmd],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if kill_when is not None or first_request:
        while proc.poll() is None:
            done = answered(url) - base
            if first_request and "first_request_s" not in out and done > 0:
                out["first_request_s"] = time.perf_counter() - start
                if kill_when is None:
                    break
            if kill_when is not None and done >= n_kill:
                for child in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split():
                    os.kill(int(child), signal.SIGKILL)
                break
            time.sleep(0.01 if first_request else 0.2)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    status = proc.wait()
    out["wall_s"] = time.perf_counter() - start
    out["rss_mb"] = int(rss_file.read_text().split()[-1]) / 1024
    rss_file.unlink()
    if kill_when is None and status != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} failed:\n{err[-3000:]}")
    return out


def bench_size(n: int, root: Path, stages: list[str], concurrency: int) -> dict[str, dict[str, float]]:
    folder = root / f"n{n}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    gen_out = folder / "run"
    results: dict[str, dict[str, float]] = {}
    server = ServerProcess(sentences=str(SENTENCES))
    try:
        gen = [*CLI, "generate", "--base-url", server.url, "--model", "bench", "--num-stories", str(n),
               "--concurrency", str(concurrency), "--out", str(gen_out), "--set", "progress=false",
               "--set", "filters.min_words=40", "--set", "teacher.max_retries=2"]
        if "generate" in stages:
            first = run(gen, kill_when=0.5, url=server.url, n_kill=n // 2)
            second = run(gen, url=server.url, first_request=True)
            results["generate"] = {"wall_s": first["wall_s"] + second["wall_s"],
                                   "rss_mb": max(first["rss_mb"], second["rss_mb"])}
            results["resume"] = {"wall_s": second["first_request_s"], "rss_mb": second["rss_mb"]}
            print(f"  N={n} generate {results['generate']} resume {results['resume']}", flush=True)
        if "rerun" in stages:
            before = answered(server.url)
            results["rerun"] = run(gen)
            assert answered(server.url) == before, "a rerun of a finished run asked the teacher"
            print(f"  N={n} rerun {results['rerun']}", flush=True)
    finally:
        server.close()
    manifest = json.loads((gen_out / "manifest.json").read_text())
    assert manifest["status"] == "complete", manifest["counts"]
    results["counts"] = {"accepted": manifest["counts"]["accepted"], "rejected": manifest["counts"]["rejected"]}
    if "corpus" in stages:
        results["corpus"] = run([*CLI, "corpus", str(gen_out), "--out", str(folder / "corpus.jsonl")])
        print(f"  N={n} corpus {results['corpus']}", flush=True)
    tokens = folder / "tokens"
    if "pretokenize" in stages:
        results["pretokenize"] = run([*CLI, "pretokenize", "--train", str(gen_out), "--valid", "bundled:valid",
                                      "--vocab-size", "4096", "--out", str(tokens)])
        print(f"  N={n} pretokenize {results['pretokenize']}", flush=True)
    if "memorisation" in stages:
        results["memorisation"] = run([sys.executable, "-c", MEMORISATION, str(gen_out)])
        print(f"  N={n} memorisation {results['memorisation']}", flush=True)
    if "train" in stages and tokens.exists():
        results["train"] = run([*CLI, "train", "--data", str(tokens), "--out", str(folder / "model"),
                                "--max-steps", "5", "--batch-size", "8", "--eval-samples", "0", "--threads", "1",
                                "--set", "eval_interval=1000000"])
        print(f"  N={n} train {results['train']}", flush=True)
    return results


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of log y against log x."""
    lx, ly = [math.log(x) for x in xs], [math.log(max(y, 1e-6)) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / max(sum((a - mx) ** 2 for a in lx), 1e-12)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated story counts")
    ap.add_argument("--out", default="/tmp/bench_scale", help="work folder (each size's folder is replaced)")
    ap.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    ap.add_argument("--concurrency", type=int, default=256)
    ap.add_argument("--report", action="store_true", help="only print the table of OUT/results.jsonl "
                                                            "(the latest row of each N)")
    args = ap.parse_args()
    os.environ.pop("OPENAI_API_KEY", None)
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])
    sizes = [int(s) for s in args.sizes.split(",")]
    stages = args.stages.split(",")
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    cpu = subprocess.run([sys.executable, "-c", "from tinystories.utils import describe_cpu; print(describe_cpu())"],
                         check=False, capture_output=True, text=True).stdout.strip()
    model = next((line.split(":", 1)[1].strip() for line in subprocess.run(
        ["lscpu"], check=False, capture_output=True, text=True).stdout.splitlines() if line.startswith("Model name")), "?")
    print(f"# {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {model}: {cpu}, {os.cpu_count()} cores, "
          f"load {os.getloadavg()[0]:.1f}", flush=True)
    table: dict[int, dict[str, dict[str, float]]] = {}
    if args.report:
        for line in (root / "results.jsonl").read_text().splitlines():
            row = json.loads(line)
            table[row["n"]] = row
        sizes = sorted(table)
    for n in [] if args.report else sizes:
        table[n] = bench_size(n, root, stages, args.concurrency)
        with open(root / "results.jsonl", "a") as f:
            f.write(json.dumps({"n": n, "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                "load": os.getloadavg()[0], **table[n]}) + "\n")
    print_table(table, sizes)


def print_table(table: dict[int, Any], sizes: list[int]) -> None:
    names = [s for s in ["generate", "resume", "rerun", "corpus", "pretokenize", "memorisation", "train"]
             if all(s in table[n] for n in sizes)]
    print(f"\n# load average at the end {os.getloadavg()[0]:.1f}; accepted/rejected stories: "
          + ", ".join(f"{n:,}: {table[n]['counts']['accepted']:,}/{table[n]['counts']['rejected']:,}"
                      for n in sizes if "counts" in table[n]))
    print("| stage | " + " | ".join(f"N={n:,}" for n in sizes) + " | time exponent | memory exponent |")
    print("|---|" + "---:|" * (len(sizes) + 2))
    for s in names:
        cells = [f"{table[n][s]['wall_s']:.2f} s, {table[n][s]['rss_mb']:.0f} MB" for n in sizes]
        exps = ["-", "-"] if len(sizes) < 2 else [
            f"{slope(sizes, [table[n][s][k] for n in sizes]):.2f}" for k in ("wall_s", "rss_mb")]
        print(f"| {s} | " + " | ".join(cells) + f" | {exps[0]} | {exps[1]} |")


if __name__ == "__main__":
    main()
