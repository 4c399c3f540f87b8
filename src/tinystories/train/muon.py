"""Muon whose Newton-Schulz step runs in a dtype the hardware is fast at, matrix by matrix.

`torch.optim.Muon` orthogonalises every update in bfloat16. That is right on a GPU and on a
CPU with native bf16 (AVX-512 BF16, AMX), but a CPU without it (AVX2: AMD Zen 3, most
laptops) emulates bf16 matmuls: measured 31x slower than fp32 on a Zen 3 EPYC, which made the
optimizer step cost more than forward and backward together.

`Muon` below is torch's optimizer (same hyper-parameters, same `momentum_buffer` state, so a
checkpoint moves between machines) with two changes:

* the dtype of Newton-Schulz: `bf16` calls torch's own step; `float32` runs the same iteration
  in fp32, which is also a little more exact. `ns_dtype_for(device)` picks one by timing both
  on a small matrix, once per machine (kept with the training dtype's choices,
  `precision.cache_file`);
* `blocks`: a fused q, k, v matrix is orthogonalised as the three matrices it is.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch.optim._muon import _adjust_lr

from tinystories.train.precision import kept_choice, machine

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # Keller Jordan's quintic, as torch's Muon uses


def newton_schulz(grad: torch.Tensor, dtype: torch.dtype, steps: int = 5,
                  coefficients: tuple[float, float, float] = NS_COEFFICIENTS, eps: float = 1e-7) -> torch.Tensor:
    """The matrix `grad` with its singular values pushed towards 1 (about U V^T), computed in `dtype`.

    The reference iteration, written as torch's `_zeropower_via_newtonschulz` is: the tests
    check that in bf16 they agree exactly.
    """
    a, b, c = coefficients
    x = grad.to(dtype)
    tall = grad.size(0) > grad.size(1)
    if tall:
        x = x.T
    x = x / x.norm().clamp(min=eps)  # spectral norm <= Frobenius norm <= 1
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


class Muon(torch.optim.Muon):
    """`torch.optim.Muon`, with Newton-Schulz in `ns_dtype`, and matrices stacked by rows.

    `blocks` maps a parameter that is several equal matrices stacked by rows (the attention's
    fused q, k, v projection) to how many: each block's update is orthogonalised and scaled
    alone, exactly as if the blocks were parameters of their own (the tests check it against
    torch's Muon on the blocks apart). Like `state`, it is keyed by parameter and not saved:
    the optimizer's state and a checkpoint's layout are the same with or without it.
    """

    def __init__(self, params: Any, ns_dtype: torch.dtype = torch.bfloat16,
                 blocks: Mapping[torch.Tensor, int] | None = None, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self.ns_dtype = ns_dtype
        self.blocks = dict(blocks or {})

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        if self.ns_dtype == torch.bfloat16 and not self.blocks:
            return super().step(closure)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params: list[torch.Tensor] = []
            grads: list[torch.Tensor] = []
            bufs: list[torch.Tensor] = []
            self._init_group(group, params, grads, bufs)
            lr, momentum = float(group["lr"]), group["momentum"]
            for param, grad, buf in zip(params, grads, bufs):  # torch's `_single_tensor_muon`
                buf.lerp_(grad, 1 - momentum)
                update = grad.lerp(buf, momentum) if group["nesterov"] else buf
                parts = [newton_schulz(u, self.ns_dtype, group["ns_steps"], group["ns_coefficients"], group["eps"])
                         for u in update.chunk(self.blocks.get(param, 1))]
                update = parts[0] if len(parts) == 1 else torch.cat(parts)  # (no copy of a lone block)
                param.mul_(1 - lr * group["weight_decay"])
                param.add_(update, alpha=-_adjust_lr(lr, group["adjust_lr_fn"], parts[0].shape))
        return loss


def faster_dtype(bf16_seconds: float, fp32_seconds: float) -> torch.dtype:
    """bf16 only where it is measured faster than fp32 (fp32 is the more exact of the two)."""
    return torch.bfloat16 if bf16_seconds < fp32_seconds else torch.float32


def time_newton_schulz(dtype: torch.dtype, device: torch.device, size: tuple[int, int] = (128, 384),
                       repeats: int = 3) -> float:
    """Best-of-`repeats` seconds of one Newton-Schulz orthogonalisation of a `size` matrix."""
    grad = torch.randn(size, device=device, generator=torch.Generator(device).manual_seed(0))
    newton_schulz(grad, dtype)  # warm-up: first calls pay for kernel selection
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        newton_schulz(grad, dtype)
        best = min(best, time.perf_counter() - start)
    return best


@functools.cache
def ns_dtype_for(device_type: str, threads: int) -> tuple[torch.dtype, str]:
    """The Newton-Schulz dtype for this machine, and why, in words for the start-up summary.

    GPUs keep torch's bf16. On a CPU both dtypes are timed on a demo-sized matrix (a few ms,
    once per process and thread count): bf16 is kept only where the CPU runs it faster.
    """
    if device_type != "cpu":
        return torch.bfloat16, f"bf16 (torch's Muon, on {device_type})"
    def measure() -> tuple[torch.dtype, str]:
        device = torch.device("cpu")
        bf16, fp32 = time_newton_schulz(torch.bfloat16, device), time_newton_schulz(torch.float32, device)
        dtype = faster_dtype(bf16, fp32)
        name = "bf16" if dtype == torch.bfloat16 else "fp32"
        return dtype, f"{name} (measured on this CPU: bf16 {bf16 * 1e3:.1f} ms, fp32 {fp32 * 1e3:.1f} ms)"

    # The two can time alike (the Xeon): kept per machine, so that every process of a run (a
    # resumed one, a test's child) computes the same.
    return kept_choice(["muon newton-schulz", *machine()[:4], threads], measure)
