"""The training step's dtype for `dtype: auto`: measured on a CPU, not guessed.

bfloat16 autocast speeds a step up only where the CPU multiplies bfloat16 natively (AMX on
Intel Xeons since Sapphire Rapids, avx512_bf16 on AMD Zen 4); where it is emulated (AVX2: Zen
3, most laptops) it is far slower, and at tiny widths the casts can cost more than the matmuls
save. So `auto` is bfloat16 on GPUs and, on a CPU, whichever dtype runs this model's own
forward and backward faster, timed on a small batch. float32, the more exact, is kept unless
bfloat16 is clearly faster.

A timing can fall either side of the line on a busy machine, and a run's numbers follow its
dtype, so the first measurement on a machine is kept (``$XDG_CACHE_HOME/tinystories/dtype.json``,
by CPU, the ISA torch may use, torch version, thread count and model shape): the same command
on the same machine trains the same way every time, and a restarted run as its first start did.
A CPU without native bfloat16 is not timed at all.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from tinystories.model.gpt import GPT
from tinystories.utils import NATIVE_BF16, atomic_write, cpu_model_and_flags

MARGIN = 0.9  # bfloat16 must take under 90% of float32's time: a near tie is noise, and fp32 is exact


def step_seconds(model: GPT, idx: torch.Tensor, dtype: torch.dtype) -> float:
    """Seconds of one training loss, forward and backward, under `dtype` autocast (float32: none)."""
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        loss = model.loss(idx[:, :-1], idx[:, 1:])
    loss.backward()
    return time.perf_counter() - start


def probe_cpu_dtype(model: GPT, rows: int = 2, repeats: int = 3) -> tuple[torch.dtype, str]:
    """float32 or bfloat16 for training `model` on this CPU, and why in words for the summary.

    Both are timed alternately, best of `repeats` after a warm-up, on `rows` windows of the
    model's context. The model's gradients are cleared after and the RNG is left as it was, so
    a run is the same as if nothing had been timed. Measured once per machine, model shape and
    thread count (`cache_file`).
    """
    flags = cpu_model_and_flags()[1]
    if flags and not flags & NATIVE_BF16:  # emulated: 10-30x slower, nothing to time (bench/README)
        return torch.float32, "no native bf16 on this CPU (no avx512_bf16 or amx_bf16 flag)"
    return kept_choice([*machine(), asdict(model.cfg)], lambda: _probe(model, rows, repeats))


def machine() -> list[Any]:
    """What a measured choice depends on besides the work itself: the CPU, the ISA torch may use
    (as limited), torch's version and its thread count."""
    name, flags = cpu_model_and_flags()
    isa = [torch.backends.cpu.get_cpu_capability(), os.environ.get("ONEDNN_MAX_CPU_ISA", "")]
    return [name, sorted(flags), isa, torch.__version__, torch.get_num_threads()]


def kept_choice(parts: list[Any], measure: Callable[[], tuple[torch.dtype, str]]) -> tuple[torch.dtype, str]:
    """The dtype this machine chose the first time for `parts`, and why; else `measure()`'s, kept
    in `cache_file` for the next process."""
    key = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]
    path = cache_file()
    known: Any = {}
    with contextlib.suppress(OSError, ValueError):
        known = json.loads(path.read_text())
    kept = known.get(key) if isinstance(known, dict) else None
    if isinstance(kept, list) and len(kept) == 2 and kept[0] in ("float32", "bfloat16"):
        return getattr(torch, kept[0]), f"{kept[1]}, kept from this machine's first measure"
    known = known if isinstance(known, dict) else {}  # (a damaged file is measured over)
    chosen, why = measure()
    with contextlib.suppress(OSError):  # (a read-only home: measured again next time)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as f:
            json.dump({**known, key: [str(chosen).removeprefix("torch."), why]}, f, indent=1)
    return chosen, why


def cache_file() -> Path:
    """Where each machine's measured choices are kept."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tinystories" / "dtype.json"


def _probe(model: GPT, rows: int, repeats: int) -> tuple[torch.dtype, str]:
    ctx = model.cfg.context_length
    with torch.random.fork_rng(devices=[]):
        idx = torch.randint(0, model.cfg.vocab_size, (rows, ctx + 1), generator=torch.Generator().manual_seed(0))
        best = {torch.float32: float("inf"), torch.bfloat16: float("inf")}
        for i in range(repeats + 1):
            for dtype, so_far in best.items():
                seconds = step_seconds(model, idx, dtype)
                if i:  # the first round pays for kernel selection
                    best[dtype] = min(so_far, seconds)
    model.zero_grad(set_to_none=True)
    fp32, bf16 = best[torch.float32], best[torch.bfloat16]
    dtype = torch.bfloat16 if bf16 < MARGIN * fp32 else torch.float32
    return dtype, (f"measured on this CPU: a {rows}x{ctx}-token step in bf16 {bf16 * 1e3:.0f} ms, "
                   f"fp32 {fp32 * 1e3:.0f} ms")
