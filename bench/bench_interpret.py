"""Cost of looking inside a model, relative to just running it.

* `run_with_cache` (explicit softmax attention, every activation kept) vs `model(idx)`
  (fused `scaled_dot_product_attention`), on the same batch.
* The streamed top-k neuron search (`top_activations`, all neurons of one layer, k=10) vs a
  plain forward pass over the same corpus batches: tokens/s of each.

Random weights of a preset (speed does not depend on training), bundled validation stories.

    python bench/bench_interpret.py [--preset demo] [--batch 8] [--stories 200] [--repeats 5]
"""

from __future__ import annotations

import argparse
import time

import torch

from tinystories.data.corpus import read_stories
from tinystories.interpret.hooks import run_with_cache
from tinystories.interpret.neurons import corpus_batches, top_activations
from tinystories.model.gpt import GPT
from tinystories.model.presets import get_preset
from tinystories.tokenizer import train_bpe


def best_of(repeats: int, fn) -> float:
    fn()  # warm-up: first-call allocations
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--stories", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    stories = read_stories("bundled:valid")[0][: args.stories]
    tok = train_bpe(read_stories("bundled:train")[0], vocab_size=1024)
    cfg = get_preset(args.preset)
    cfg.vocab_size = tok.vocab_size
    model = GPT(cfg).eval()
    T = cfg.context_length
    print(f"preset {args.preset}: {cfg.n_layer} layers, d_model {cfg.d_model}, {cfg.n_head} heads, context {T}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    idx = torch.randint(0, cfg.vocab_size, (args.batch, T))
    t_fwd = best_of(args.repeats, lambda: model(idx))
    t_cache = best_of(args.repeats, lambda: run_with_cache(model, idx))
    print(f"batch {args.batch}x{T}: model(idx) {t_fwd * 1e3:.1f} ms, run_with_cache {t_cache * 1e3:.1f} ms "
          f"(ratio {t_cache / t_fwd:.2f}x)")

    batches = list(corpus_batches(stories, tok, T, args.batch))
    n_tokens = sum(int(lengths.sum()) for _, lengths, _ in batches)
    t_plain = best_of(args.repeats, lambda: [model(ids) for ids, _, _ in batches])
    t_topk = best_of(args.repeats, lambda: top_activations(model, batches, layer=0, k=10))
    print(f"{len(stories)} stories, {n_tokens} tokens: forward {n_tokens / t_plain:,.0f} tokens/s, "
          f"top-k search of {cfg.ffn_dim} neurons {n_tokens / t_topk:,.0f} tokens/s "
          f"(ratio {t_topk / t_plain:.2f}x the time)")


if __name__ == "__main__":
    main()
