"""The recipe's training step on this CPU: Muon's Newton-Schulz in bf16 (torch's) vs fp32 (ours) vs AdamW.

`torch.optim.Muon` runs Newton-Schulz in bf16, which CPUs without native bf16 (AVX2: AMD Zen
3, most laptops) emulate at a fraction of fp32's speed. This times whole `Trainer.train_step`s
of the default recipe at the demo shape (or `--set` another), interleaved step by step so a
change in machine load hits all alike, and the share of each step spent in Muon's `step`
(optimizer step hooks). The peer is torch's own bf16 path, the default before the dtype probe.
With `--kernels`, also the step's two big kernels: attention by SDPA backend (flash, math,
explicit softmax) and the fused loss by chunk size (and plain `F.cross_entropy`).

    python bench/bench_train_step.py --steps 12 --kernels
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 python bench/bench_train_step.py
    python bench/bench_train_step.py --dtypes --set model=8M-modern --set batch_size=4
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from tinystories.data.prepare import PrepareConfig, prepare
from tinystories.model.gpt import GPTConfig, attention_probs
from tinystories.model.losses import linear_cross_entropy
from tinystories.train.config import build_train_config
from tinystories.train.trainer import Trainer
from tinystories.utils import describe_cpu

CONTENDERS = {
    "recipe, Muon NS in bf16 (torch.optim.Muon)": ["optim.muon_ns_dtype=bfloat16"],
    "recipe, Muon NS in fp32 (ours)": ["optim.muon_ns_dtype=float32"],
    "AdamW everywhere": ["optim.optimizer=adamw"],
}
# --dtypes: the recipe's step in float32 against bfloat16 autocast (what `dtype: auto` chooses between).
DTYPES = {
    "recipe, float32": ["dtype=float32"],
    "recipe, bfloat16 autocast": ["dtype=bfloat16"],
}


def best_ms(fn: Callable[[], object], repeats: int = 5) -> float:
    fn()
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times) * 1e3


def kernels(cfg: GPTConfig, batch: int) -> None:
    """The step's two big kernels on this CPU: attention by SDPA backend, the fused loss by chunk size."""
    B, H, T, D = batch, cfg.n_head, cfg.context_length, cfg.head_dim
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, T, D, generator=gen, requires_grad=True) for _ in range(3))

    def sdpa(backend: SDPBackend) -> Callable[[], None]:
        def run() -> None:
            with sdpa_kernel(backend):
                F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=D ** -0.5).sum().backward()
        return run

    def explicit() -> None:
        probs = attention_probs(q, k, None, D ** -0.5)
        (probs @ v).sum().backward()

    print(f"\nattention, one layer fwd+bwd ({B}x{H} heads of {D}, {T} tokens): " + ", ".join(
        f"{name} {best_ms(fn):.1f} ms" for name, fn in [("flash", sdpa(SDPBackend.FLASH_ATTENTION)),
                                                        ("math", sdpa(SDPBackend.MATH)), ("explicit", explicit)]))
    hidden = torch.randn(B * T, cfg.d_model, generator=gen, requires_grad=True)
    weight = (torch.randn(cfg.vocab_size, cfg.d_model, generator=gen) * 0.02).requires_grad_()
    targets = torch.randint(0, cfg.vocab_size, (B * T,), generator=gen)
    chunks = [c for c in (128, 512, 1024, 2048, B * T) if c <= B * T]
    print(f"fused loss fwd+bwd ({B * T} tokens x vocab {cfg.vocab_size}) by chunk: " + ", ".join(
        f"{c} {best_ms(lambda c=c: linear_cross_entropy(hidden, weight, targets, c).backward()):.1f} ms"
        for c in chunks) + f"; F.cross_entropy {best_ms(lambda: F.cross_entropy(hidden @ weight.T, targets).backward()):.1f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=12, help="timed steps per contender")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="train config KEY=VALUE")
    ap.add_argument("--kernels", action="store_true", help="also time attention backends and loss chunk sizes")
    ap.add_argument("--dtypes", action="store_true", help="float32 against bfloat16 autocast instead of the optimizers")
    args = ap.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="bench-train-step-"))
    data = scratch / "data"
    prepare(PrepareConfig(out_dir=str(data), vocab_size=4096), progress=False)
    trainers, optim_seconds = {}, {}
    for name, overrides in (DTYPES if args.dtypes else CONTENDERS).items():
        cfg = build_train_config(None, [*overrides, *args.overrides], data_dir=str(data),
                                 out_dir=str(scratch / name.replace(" ", "_")), threads=args.threads, progress=False)
        trainer = Trainer(cfg, resume=False)
        opt = trainer.optimizers[0]  # Muon (or the one AdamW)
        optim_seconds[name] = []
        start: list[float] = []
        opt.register_step_pre_hook(lambda *_, s=start: s.append(time.perf_counter()))
        opt.register_step_post_hook(lambda *_, s=start, n=name: optim_seconds[n].append(time.perf_counter() - s.pop()))
        trainers[name] = trainer
    first = next(iter(trainers.values()))
    print(f"{describe_cpu()}, {args.threads} threads, torch {torch.__version__}, load {os.getloadavg()[0]:.1f}; "
          f"{first.summary()[0]}; {first.cfg.tokens_per_step:,} tokens a step")
    steps: dict[str, list[float]] = {name: [] for name in trainers}
    for i in range(args.warmup + args.steps):
        for name, trainer in trainers.items():
            t0 = time.perf_counter()
            trainer.train_step()
            if i >= args.warmup:
                steps[name].append(time.perf_counter() - t0)
    print("\n| step | tokens/s (median, range) | first optimizer's step | its share of a step |\n|---|---:|---:|---:|")
    for name, times in steps.items():
        per_step = first.cfg.tokens_per_step
        opt_s = statistics.median(optim_seconds[name][args.warmup:])
        print(f"| {name} | {per_step / statistics.median(times):,.0f} ({per_step / max(times):,.0f}-"
              f"{per_step / min(times):,.0f}) | {opt_s * 1e3:.1f} ms | {opt_s / statistics.median(times):.1%} |")
    if args.kernels:
        kernels(first.cfg.model, first.cfg.batch_size)
    print(f"load after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
