"""Training throughput on the CPU: our GPT vs Hugging Face GPT-Neo vs a plain eager nanoGPT.

All three get the identical shape (default: the paper's 1M model: d_model 64, 8 layers,
16 heads, vocab 10K, context 256, batch 16), the same thread count and the same batches.
HF GPT-Neo starts from our initial weights, and the first steps' losses are printed side
by side to show the same math. Run: python bench/bench_train.py [--steps 10] [--compile]
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from tinystories.model.gpt import GPT, GPTConfig
from tinystories.model.hf import to_transformers


class NanoBlock(nn.Module):
    """nanoGPT's block, as people write it: LayerNorm, SDPA attention, GELU MLP."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc, self.out = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).contiguous().view(B, T, C))
        return x + self.out(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))


class NanoGPT(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.wpe = nn.Embedding(cfg.context_length, cfg.d_model)
        self.blocks = nn.ModuleList(NanoBlock(cfg.d_model, cfg.n_head) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.head.weight = self.wte.weight

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)


class Contender:
    """One model under test with its own optimizer; `step` trains on one batch and returns the loss."""

    def __init__(self, name: str, model: nn.Module, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
                 ) -> None:
        self.name, self.loss_fn = name, loss_fn
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
        self.seconds = 0.0
        self.losses: list[float] = []

    def step(self, x: torch.Tensor, y: torch.Tensor, timed: bool) -> None:
        start = time.perf_counter()
        loss = self.loss_fn(x, y)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if timed:
            self.seconds += time.perf_counter() - start
        self.losses.append(float(loss.detach()))


def race(contenders: list[Contender], batches: list[tuple[torch.Tensor, torch.Tensor]], warmup: int) -> None:
    """Interleave the contenders step by step, so a change in machine load hits all alike."""
    for i, (x, y) in enumerate(batches):
        for c in contenders:
            c.step(x, y, timed=i >= warmup)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per model")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--vocab", type=int, default=10_000)
    parser.add_argument("--context", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--compile", action="store_true", help="also time ours under torch.compile")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = GPTConfig(vocab_size=args.vocab, context_length=args.context, n_layer=args.layers,
                    n_head=args.heads, d_model=args.d_model)
    gen = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(args.warmup + args.steps):
        window = torch.randint(0, args.vocab, (args.batch, args.context + 1), generator=gen)
        # Ignore the last position so HF's internal shift scores the same 255 predictions.
        x, y = window[:, :-1], window[:, 1:].clone()
        y[:, -1] = -1
        batches.append((x, y))
    print(f"shape: d_model {args.d_model}, {args.layers} layers, {args.heads} heads, vocab {args.vocab}, "
          f"context {args.context}, batch {args.batch}; {args.threads} threads; torch {torch.__version__}")

    torch.manual_seed(0)
    ours = GPT(cfg)
    hf = to_transformers(ours).train()
    nano = NanoGPT(cfg)
    contenders = [Contender("HF transformers GPTNeoForCausalLM", hf, lambda x, y: hf(input_ids=x, labels=x).loss),
                  Contender("plain eager nanoGPT (SDPA)", nano, nano),
                  Contender("tinystories GPT (fused loss)", ours, ours.loss)]
    if args.compile:
        torch.manual_seed(0)
        fresh = GPT(cfg)
        compiled = torch.compile(fresh)
        contenders.append(Contender("tinystories GPT + torch.compile", fresh, lambda x, y: compiled.loss(x, y)))
    race(contenders, batches, args.warmup)
    timed_tokens = args.steps * batches[0][0].numel()
    speed = {c.name: timed_tokens / c.seconds for c in contenders}
    for name, tok_s in speed.items():
        print(f"  {name:<34} {tok_s:>9,.0f} tokens/s")
    hf_losses, our_losses = contenders[0].losses, contenders[2].losses
    print("first losses (HF vs ours, same initial weights and batches):")
    for a, b in list(zip(hf_losses, our_losses))[:3]:
        print(f"  {a:.5f}  {b:.5f}")
    assert all(math.isclose(a, b, rel_tol=1e-3) for a, b in zip(hf_losses[:3], our_losses[:3])), "math differs"
    best = max(speed[c.name] for c in contenders[2:])
    print(f"ours / HF GPT-Neo:     {best / speed[contenders[0].name]:.2f}x  (goal >= 8x)")
    print(f"ours / eager nanoGPT:  {best / speed[contenders[1].name]:.2f}x  (goal >= 1.5x)")

if __name__ == "__main__":
    main()
