"""Sampling throughput: our KV-cache generation vs Hugging Face `generate` on the same weights.

1. Batched: the paper's 1M shape (GPT-Neo, d_model 64, 8 layers, 16 heads, vocab 10K),
   batch 64, 200 new tokens each; peer: `GPTNeoForCausalLM.generate` (KV cache, sampling).
2. Single stream: llama2.c's stories15M shape (Llama, d_model 288, 6 layers, 6 heads,
   vocab 32K), batch 1, 200 new tokens; peer: `LlamaForCausalLM.generate`.

Weights are random, so next-token distributions are nearly flat: the worst case for top-p,
which then has to sort the whole vocabulary (a trained model's nucleus is a few dozen
tokens). Greedy decoding is timed too. No early stop on either side. Run: python bench/bench_sampling.py [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import torch

from tinystories.infer.params import SamplingParams
from tinystories.infer.sampling import generate
from tinystories.model.gpt import GPT, GPTConfig
from tinystories.model.hf import to_transformers


def time_ours(model: GPT, prompts: list[list[int]], new_tokens: int, repeats: int, sample: bool) -> float:
    cfg = SamplingParams(max_new_tokens=new_tokens, temperature=1.0 if sample else 0.0, top_p=0.95, seed=0,
                         stop_at_eos=False)
    generate(model, prompts, cfg, eos_id=0)  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        out = generate(model, prompts, cfg, eos_id=0)
    assert all(len(o) == new_tokens for o in out)
    return repeats * len(prompts) * new_tokens / (time.perf_counter() - start)


@torch.inference_mode()
def time_hf(hf: torch.nn.Module, prompts: list[list[int]], new_tokens: int, repeats: int, sample: bool) -> float:
    idx = torch.tensor(prompts)
    kwargs = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "pad_token_id": 0,
              "attention_mask": torch.ones_like(idx), "do_sample": sample}
    if sample:
        kwargs.update(top_p=0.95, temperature=1.0, top_k=0)
    hf.generate(idx, **kwargs)
    start = time.perf_counter()
    for _ in range(repeats):
        out = hf.generate(idx, **kwargs)
    assert out.shape[1] == idx.shape[1] + new_tokens
    return repeats * len(prompts) * new_tokens / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, {args.new_tokens} new tokens per row")

    cases = [
        ("batched, 1M shape, batch 64", GPTConfig(vocab_size=10_000, context_length=512, n_layer=8, n_head=16,
                                                  d_model=64), 64),
        ("single stream, 15M shape, batch 1", GPTConfig(vocab_size=32_000, context_length=256, n_layer=6,
                                                        n_head=6, d_model=288, arch="modern"), 1),
    ]
    for name, cfg, batch in cases:
        torch.manual_seed(0)
        model = GPT(cfg).eval()
        gen = torch.Generator().manual_seed(1)
        prompts = torch.randint(1, cfg.vocab_size, (batch, 16), generator=gen).tolist()
        hf = to_transformers(model)
        for mode, sample in (("top-p 0.95 sampling", True), ("greedy", False)):
            ours = time_ours(model, prompts, args.new_tokens, args.repeats, sample)
            peer = time_hf(hf, prompts, args.new_tokens, args.repeats, sample)
            print(f"{name}, {mode}: tinystories {ours:,.0f} tokens/s, HF generate {peer:,.0f} tokens/s, "
                  f"ratio {ours / peer:.1f}x")


if __name__ == "__main__":
    main()
