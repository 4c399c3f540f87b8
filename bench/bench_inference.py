"""Inference speed on the CPU, each case against its peer in the same run.

1. Single stream at llama2.c's stories15M shape (d 288, 6 layers, 6 heads, vocab 32K, context
   256), random weights, one prompt token, 255 new tokens; greedy and top-p 0.9; ours with the
   decode step in C (the default where it builds) and, greedy, with `forward` and its KV cache
   (``TINYSTORIES_NATIVE=0``: no C), for contrast. Ours greedy reports nothing but the tokens, so its
   C step finds the most likely token without computing every logit (`DecodeStep.argmax`); the
   row "every logit" is ours greedy reporting log-probabilities (as the server does when asked),
   which computes them all, as the peers do. Peer: llama2.c's
   run.c (../shared/peers/llama2c, built here with ``gcc -Ofast -march=native``, 1 thread; with
   ``-fopenmp`` too, 2 threads) on the very same weights, exported with `export_llama2c`; and
   llama.cpp through llama-cpp-python (1 and 2 threads) on the same weights exported with
   `export_gguf` (f32, like the others), when llama_cpp is importable (``pip install -e '.[gguf]'``).
   Ours is timed as run.c times itself: the tokens after the first (a one-token run's time, set-up
   and prefill included, taken off); llama.cpp's timing includes its first token.
2. Batched at the paper's 1M shape (GPT-Neo, d 64, 8 layers, 16 heads, vocab 10K), batches of
   1, 8 and 64, 200 new tokens; greedy and top-p 0.95, 2 threads (``--batched-threads``). Peer:
   Hugging Face `generate` on the same weights (`to_transformers`).
   ``--only demo``: cases 1 and 2 at the demo preset's shape (modern, d 128, 4 layers, vocab 4K).
3. Under load: case 1 greedy while two other processes keep both cores busy, against the quiet
   figure; ours with the default thread policy (one thread per core other work leaves idle),
   and with 2 threads always, with OpenMP's default waits and with sleeping ones, for contrast.
4. Start-up: `tinystories --help`, and the first token printed by `tinystories sample`.

Random weights make next-token distributions nearly flat: the worst case for top-p, whose
nucleus is then most of the vocabulary (run.c and HF sort it; our sampler selects its cut). Rounds
are interleaved (``--rounds``) so that machine noise hits every contender alike; each figure is
reported as the range over rounds, with the load average.

    python bench/bench_inference.py [--rounds 3] [--only single,batched,demo,load,startup]

An AVX2-only CPU (the AMD EPYC Zen 3) on a newer one: limit torch's kernels and build ours and
run.c for it (llama-cpp-python keeps the code it was built with):

    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 \
        TINYSTORIES_MARCH=znver3 python bench/bench_inference.py
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

from tinystories.infer.offline import TokenIds, generate, run
from tinystories.infer.params import SamplingParams
from tinystories.model.gpt import GPT, GPTConfig

PEER = Path(__file__).parents[2] / "shared" / "peers" / "llama2c"
MARCH = os.environ.get("TINYSTORIES_MARCH") or "native"  # ours (cbuild) and run.c alike
SHAPE_15M = GPTConfig(vocab_size=32_000, context_length=256, n_layer=6, n_head=6, d_model=288, arch="modern")
SHAPE_1M = GPTConfig(vocab_size=10_000, context_length=512, n_layer=8, n_head=16, d_model=64)
SHAPE_DEMO = GPTConfig(vocab_size=4096, context_length=256, n_layer=4, n_head=4, d_model=128, arch="modern")


def ours_tok_s(model: GPT, prompts: list[list[int]], params: SamplingParams, after_first: bool = False,
               logprobs: bool = False) -> float:
    """Tokens per second of the engine, offline; `after_first`: of the tokens after each row's first,
    as run.c reports its own rate (the time of a one-token run taken off: set-up, prefill, first draw);
    `logprobs`: each token's log-probability reported too (so every logit is computed)."""
    def seconds(p: SamplingParams) -> float:
        start = time.perf_counter()
        out = [s.ids for s in run(model, TokenIds(0), prompts, p, emit=lambda i, ev: None, logprobs=True)] \
            if logprobs else generate(model, TokenIds(0), prompts, p)
        assert all(len(o) == p.max_new_tokens for o in out)
        return time.perf_counter() - start

    n = params.max_new_tokens
    if not after_first:
        return len(prompts) * n / seconds(params)
    first = seconds(dataclasses.replace(params, max_new_tokens=1))
    return len(prompts) * (n - 1) / (seconds(params) - first)


def build_run_c(tmp: Path) -> dict[str, Path]:
    if not (PEER / "run.c").exists() or not shutil.which("gcc"):
        print(f"run.c or gcc missing ({PEER}): the llama2.c peer is skipped")
        return {}
    out = {}
    for name, flags in (("run.c 1 thread", []), ("run.c OpenMP", ["-fopenmp"])):
        exe = tmp / name.replace(" ", "_").replace(".", "")
        subprocess.run(["gcc", "-Ofast", f"-march={MARCH}", *flags, "-o", str(exe), str(PEER / "run.c"), "-lm"],
                       check=True)
        out[name] = exe
    return out


def run_c_tok_s(exe: Path, model: Path, temperature: float, top_p: float, threads: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    p = subprocess.run([str(exe), str(model), "-z", str(PEER / "tokenizer.bin"), "-n", "256", "-t", str(temperature),
                        "-p", str(top_p), "-s", "1", "-i", ""], capture_output=True, text=True, env=env, check=True)
    found = re.search(r"achieved tok/s: ([\d.]+)", p.stderr)
    if found is None:  # run.c prints its rate only after two tokens; it stops early at token id 1 (BOS)
        raise RuntimeError(f"{exe.name} printed no rate (stopped at BOS at once?): {p.stderr[-300:]!r}")
    return float(found.group(1))


def gguf_peer(model: GPT, tmp: Path) -> Path | None:
    """The model as an f32 GGUF for llama.cpp (a small tokenizer: only token ids matter here)."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        print("llama_cpp is not importable (pip install -e '.[gguf]'): the llama.cpp peer is skipped")
        return None
    from tinystories.data.corpus import read_stories
    from tinystories.model.checkpoint import LoadedModel
    from tinystories.model.gguf import export_gguf
    from tinystories.tokenizer import train_bpe

    tok = train_bpe(read_stories("bundled:train")[0][:200], vocab_size=300)
    return export_gguf(LoadedModel(model, tok, {}, tmp, "m15"), tmp / "m15.gguf", "f32", SamplingParams())


def llama_cpp_tok_s(path: Path, temperature: float, top_p: float, threads: int) -> float:
    """255 new tokens after token id 1, as ours; llama.cpp's own sampler chain, nothing cut but top-p."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_ctx=256, n_threads=threads, n_threads_batch=threads, verbose=False,
                seed=1)
    kwargs = {"temp": temperature, "top_k": 0, "top_p": top_p, "min_p": 0.0, "repeat_penalty": 1.0}
    for n, _ in enumerate(llm.generate([1], **kwargs)):  # warm-up
        if n == 7:
            break
    start = time.perf_counter()
    for n, _ in enumerate(llm.generate([1], **kwargs), 1):  # never stops by itself (EOS included)
        if n == 255:
            break
    seconds = time.perf_counter() - start
    llm.close()
    return 255 / seconds


def spread(values: list[float]) -> str:
    return f"{min(values):,.0f}" if len(values) == 1 else f"{min(values):,.0f}-{max(values):,.0f}"


def forward_tok_s(model: GPT, params: SamplingParams) -> float:
    """`ours_tok_s` without the C step: `forward` with its KV cache (the C step turned off meanwhile)."""
    from tinystories.model import decode, native

    os.environ["TINYSTORIES_NATIVE"] = "0"
    native.library.cache_clear()
    decode._DECODE_STEPS.pop(model, None)
    try:
        return ours_tok_s(model, [[1]], params, after_first=True)
    finally:
        del os.environ["TINYSTORIES_NATIVE"]
        native.library.cache_clear()
        decode._DECODE_STEPS.pop(model, None)


def peer_safe_model(shape: GPTConfig) -> GPT:
    """Random weights whose greedy run from token 1 never emits token 1 again: run.c stops at BOS
    (id 1) and ours does not, so such a model would time run.c on a shorter, cheaper story."""
    greedy = SamplingParams(max_new_tokens=255, temperature=0, stop_at_eos=False)
    for seed in range(100):
        torch.manual_seed(seed)
        model = GPT(shape).eval()
        if 1 not in generate(model, TokenIds(0), [[1]], greedy)[0]:
            return model
    raise RuntimeError(f"no seed below 100 gives a greedy run without token 1 at {shape}")


def single_stream(rounds: int, tmp: Path, shape: GPTConfig = SHAPE_15M, thread_counts: tuple[int, ...] = (1, 2)
                  ) -> dict[str, list[float]]:
    from tinystories.model.llama2c import export_llama2c

    model = peer_safe_model(shape)
    export_llama2c(model, tmp / "m15.bin", eos_id=1)  # llama2.c's own tokenizer: its BOS is id 1
    peers = build_run_c(tmp)
    gguf = gguf_peer(model, tmp)
    results: dict[str, list[float]] = defaultdict(list)
    modes = {"greedy": (0.0, 1.0), "top-p 0.9": (1.0, 0.9)}
    for _ in range(rounds):
        for mode, (t, p) in modes.items():
            params = SamplingParams(max_new_tokens=255, temperature=t, top_p=p, seed=1, stop_at_eos=False)
            for threads in thread_counts:
                torch.set_num_threads(threads)
                ours_tok_s(model, [[1]], SamplingParams(max_new_tokens=8, temperature=0, stop_at_eos=False))
                results[f"{mode} | tinystories, {threads} thread(s)"].append(
                    ours_tok_s(model, [[1]], params, after_first=True))
                if t == 0:
                    results[f"{mode} | tinystories, every logit, {threads} thread(s)"].append(
                        ours_tok_s(model, [[1]], params, after_first=True, logprobs=True))
                    results[f"{mode} | tinystories, forward (no C), {threads} thread(s)"].append(
                        forward_tok_s(model, params))
            for name, exe in peers.items():
                for threads in {1} & set(thread_counts) if "1 thread" in name else {2} & set(thread_counts):
                    results[f"{mode} | {name}, {threads} thread(s)"].append(
                        run_c_tok_s(exe, tmp / "m15.bin", t, p, threads))
            for threads in thread_counts if gguf is not None else ():
                results[f"{mode} | llama.cpp (llama-cpp-python, f32), {threads} thread(s)"].append(
                    llama_cpp_tok_s(gguf, t, p, threads))
    return results


def batched(rounds: int, shape: GPTConfig = SHAPE_1M, threads: int = 2) -> dict[str, list[float]]:
    from tinystories.model.hf import to_transformers

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = GPT(shape).eval()
    hf = to_transformers(model)
    results: dict[str, list[float]] = defaultdict(list)

    @torch.inference_mode()
    def hf_tok_s(prompts: list[list[int]], sample: bool) -> float:
        idx = torch.tensor(prompts)
        kwargs = {"max_new_tokens": 200, "min_new_tokens": 200, "pad_token_id": 0,
                  "attention_mask": torch.ones_like(idx), "do_sample": sample}
        if sample:
            kwargs.update(top_p=0.95, temperature=1.0, top_k=0)
        start = time.perf_counter()
        out = hf.generate(idx, **kwargs)
        assert out.shape[1] == idx.shape[1] + 200
        return len(prompts) * 200 / (time.perf_counter() - start)

    gen = torch.Generator().manual_seed(1)
    for _ in range(rounds):
        for batch in (1, 8, 64):
            prompts = torch.randint(1, shape.vocab_size, (batch, 16), generator=gen).tolist()
            for mode, sample in (("greedy", False), ("top-p 0.95", True)):
                params = SamplingParams(max_new_tokens=200, temperature=1.0 if sample else 0.0, top_p=0.95, seed=0,
                                        stop_at_eos=False)
                hf_tok_s(prompts[:1], sample)  # warm-ups (ours: the C files built, once per source and compiler)
                ours_tok_s(model, prompts[:1], dataclasses.replace(params, max_new_tokens=8))
                results[f"batch {batch}, {mode} | HF generate"].append(hf_tok_s(prompts, sample))
                results[f"batch {batch}, {mode} | tinystories"].append(ours_tok_s(model, prompts, params))
    return results


BUSY = "import time\nend = time.time() + {s}\nwhile time.time() < end: pass\n"


def under_load(rounds: int) -> dict[str, list[float]]:
    """The single-stream greedy case quiet, then beside two busy processes, in a fresh process each
    time (the OpenMP wait policy is read when torch starts)."""
    code = ("import torch, sys; sys.path.insert(0, {bench!r}); from bench_inference import *; "
            "from tinystories.utils import set_threads; torch.manual_seed(0); m = GPT(SHAPE_15M).eval(); "
            "n = set_threads({threads}); p = SamplingParams(max_new_tokens=255, temperature=0, stop_at_eos=False); "
            "ours_tok_s(m, [[1]], SamplingParams(max_new_tokens=8, temperature=0, stop_at_eos=False)); "
            "print(n, ours_tok_s(m, [[1]], p))")
    results: dict[str, list[float]] = defaultdict(list)
    variants = {"default policy (one thread per idle core)": ("0", None),
                "2 threads always": ("2", None),
                "2 threads, idle threads sleep (OMP_WAIT_POLICY=PASSIVE)": ("2", "PASSIVE")}
    for _ in range(rounds):
        for loaded in (False, True):
            busy = [subprocess.Popen([sys.executable, "-c", BUSY.format(s=120)]) for _ in range(2 if loaded else 0)]
            try:
                time.sleep(1.0 if loaded else 0)
                for name, (threads, policy) in variants.items():
                    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
                    env.update({"OMP_WAIT_POLICY": policy} if policy else {})
                    p = subprocess.run([sys.executable, "-c", code.format(bench=str(Path(__file__).parent),
                                                                          threads=threads)],
                                       capture_output=True, text=True, env=env, check=True)
                    used, tok_s = p.stdout.split()[-2:]
                    results[f"{'loaded' if loaded else 'quiet'} | {name} [{used} threads]"].append(float(tok_s))
            finally:
                for b in busy:
                    b.kill()
    return results


def startup(rounds: int, tmp: Path) -> dict[str, list[float]]:
    from tinystories.data.corpus import read_stories
    from tinystories.model.checkpoint import save_model
    from tinystories.model.presets import get_preset
    from tinystories.tokenizer import Tokenizer, train_bpe

    tok: Tokenizer = train_bpe(read_stories("bundled:train")[0][:500], vocab_size=4096)
    torch.manual_seed(0)
    folder = save_model(tmp / "demo-random", GPT(get_preset("demo", vocab_size=tok.vocab_size)).eval(), tok)
    cli = shutil.which("tinystories") or f"{sys.executable} -m tinystories.cli"
    results: dict[str, list[float]] = defaultdict(list)
    for _ in range(rounds):
        start = time.perf_counter()
        subprocess.run(f"{cli} --help", shell=True, capture_output=True, check=True)
        results["tinystories --help | seconds"].append(time.perf_counter() - start)
        start = time.perf_counter()
        p = subprocess.Popen(f"{cli} sample {folder} --prompt 'Once' --max-new-tokens 40", shell=True,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert p.stdout is not None
        p.stdout.read(len("Once") + 1)  # the prompt is echoed, then the first new token's text
        results["tinystories sample: first token | seconds"].append(time.perf_counter() - start)
        p.communicate()
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", default="single,batched,load,startup")
    ap.add_argument("--batched-threads", type=int, default=2,
                    help="threads of the batched cases, both sides (1 where other work holds a core)")
    ap.add_argument("--single-threads", default="1,2", help="thread counts of the single-stream cases")
    args = ap.parse_args()
    from tinystories.utils import describe_cpu

    isa = {k: os.environ[k] for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")
           if k in os.environ}
    print(f"{describe_cpu()}; torch {torch.__version__}; C built with -march={MARCH}; {isa or 'no ISA limits'}; "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    counts = tuple(int(n) for n in args.single_threads.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        for part in args.only.split(","):
            results = {"single": lambda: single_stream(args.rounds, Path(tmp), SHAPE_15M, counts),
                       "batched": lambda: batched(args.rounds, threads=args.batched_threads),
                       "demo": lambda: {**single_stream(args.rounds, Path(tmp), SHAPE_DEMO, counts),
                                        **batched(args.rounds, SHAPE_DEMO, args.batched_threads)},
                       "load": lambda: under_load(args.rounds), "startup": lambda: startup(args.rounds, Path(tmp))
                       }[part]()
            unit = "seconds" if part == "startup" else "tokens/s"
            print(f"\n## {part} (load average now {os.getloadavg()[0]:.1f})\n| case | {unit} (range over rounds) |\n|---|---:|")
            for name, values in results.items():
                shown = f"{min(values):.2f}-{max(values):.2f}" if unit == "seconds" else spread(values)
                print(f"| {name} | {shown} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
