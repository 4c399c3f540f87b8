"""Memorisation check speed: the n-gram index of `tinystories.eval.rouge` vs brute-force `rouge-score`.

For each "completion" (bundled validation stories stand in for generated ones) the highest
Rouge-2 precision against every bundled training story, computed both ways; the results must
be identical. Then the index alone on the training set repeated to a larger size, to show how
it scales toward the full 2M-story training set.

    python bench/bench_rouge.py [--completions 40] [--scale 20]
"""

from __future__ import annotations

import argparse
import os
import time

from rouge_score import rouge_scorer

from tinystories.data.corpus import read_stories
from tinystories.eval.rouge import max_rouge_precision


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--completions", type=int, default=40)
    parser.add_argument("--scale", type=int, default=20, help="training set repeated this many times for the "
                                                               "scaling run")
    args = parser.parse_args()
    training, _ = read_stories("bundled:train")
    completions = read_stories("bundled:valid")[0][: args.completions]
    print(f"{len(completions)} completions x {len(training)} training stories (Rouge-2 precision, max)")

    start = time.perf_counter()
    ours = max_rouge_precision(completions, training, progress=False)
    t_index = time.perf_counter() - start

    scorer = rouge_scorer.RougeScorer(["rouge2"], use_stemmer=False)
    start = time.perf_counter()
    brute = [max(scorer.score(story, c)["rouge2"].precision for story in training) for c in completions]
    t_brute = time.perf_counter() - start
    assert [x.precision for x in ours] == brute, "index and rouge-score disagree"
    print(f"  rouge-score brute force : {t_brute:8.2f} s")
    print(f"  n-gram index (build+query): {t_index:6.2f} s   speed-up x{t_brute / t_index:.0f}, identical results")

    big = training * args.scale
    brute_per_pair = t_brute / (len(completions) * len(training))
    print(f"  extrapolated rouge-score brute force on 2.1M stories: ~{brute_per_pair * 2.1e6 * len(completions) / 3600:.1f} h")
    for workers in sorted({1, os.cpu_count() or 1}):
        start = time.perf_counter()
        max_rouge_precision(completions, big, chunk=20_000, workers=workers, progress=False)
        t_big = time.perf_counter() - start
        print(f"  index on {len(big):,} stories, {workers} process(es): {t_big:.2f} s ({len(big) / t_big:,.0f} "
              f"stories/s; 2.1M stories ~{2.1e6 / len(big) * t_big / 60:.1f} min)")

if __name__ == "__main__":
    main()
