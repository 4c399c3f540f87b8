"""GPU training throughput and model-FLOPs utilisation (MFU) of the paper's 33M preset.

bf16 autocast + torch.compile (what `tinystories train` does on a GPU) against the same
model in eager fp32. MFU = achieved model FLOP/s / the GPU's dense bf16 peak, with the
peak looked up for the GPU actually present (or given with --peak-tflops).
Model FLOPs per token: 6 * parameters + 12 * layers * context * d_model (attention).
Run on a GPU machine: python bench/bench_gpu.py [--steps 30]
"""

from __future__ import annotations

import argparse
import time

import torch

from tinystories.model.gpt import GPT
from tinystories.model.presets import get_preset

# Dense bf16 tensor-core peaks (TFLOP/s) from the vendors' data sheets, without sparsity.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0,
                    "L40S": 362.0, "L4": 121.0, "A10G": 70.0, "RTX 4090": 165.0, "RTX 3090": 71.0}


def peak_tflops(name: str) -> float | None:
    for key, value in PEAK_BF16_TFLOPS.items():  # most specific keys first
        if key in name:
            return value
    return None


def run(model: torch.nn.Module, loss_fn, batches: list[torch.Tensor], dtype: torch.dtype | None,
        warmup: int) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, fused=True)
    for i, xy in enumerate(batches):
        if i == warmup:
            torch.cuda.synchronize()
            start = time.perf_counter()
        with torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
            loss = loss_fn(xy[:, :-1], xy[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    return (len(batches) - warmup) * batches[0][:, :-1].numel() / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="33M")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--peak-tflops", type=float, help="override the GPU's dense bf16 peak")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU here: this benchmark needs one")
    name = torch.cuda.get_device_name()
    peak = args.peak_tflops or peak_tflops(name)
    cfg = get_preset(args.preset)
    gen = torch.Generator(device="cuda").manual_seed(0)
    batches = [torch.randint(0, cfg.vocab_size, (args.batch, cfg.context_length + 1), device="cuda", generator=gen)
               for _ in range(args.warmup + args.steps)]
    torch.manual_seed(0)
    model = GPT(cfg).cuda()
    flops_per_token = 6 * model.num_params() + 12 * cfg.n_layer * cfg.context_length * cfg.d_model
    torch.backends.cuda.matmul.allow_tf32 = False
    eager = run(model, model.loss, batches, None, args.warmup)
    torch.manual_seed(0)
    fast_model = GPT(cfg).cuda()
    compiled = torch.compile(fast_model)
    fast = run(fast_model, lambda x, y: compiled.loss(x, y), batches, torch.bfloat16, args.warmup)
    print(f"{name}, torch {torch.__version__}, preset {args.preset}, batch {args.batch} x {cfg.context_length}")
    for label, tok_s in (("eager fp32", eager), ("bf16 + torch.compile", fast)):
        mfu = f"{100 * tok_s * flops_per_token / (peak * 1e12):.1f}% MFU" if peak else "peak unknown"
        print(f"  {label:<22} {tok_s:>12,.0f} tokens/s  {mfu}")
    print(f"  speed-up: {fast / eager:.2f}x (peak used: {peak} TFLOP/s bf16)")


if __name__ == "__main__":
    main()
