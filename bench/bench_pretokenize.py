"""Pretokenization throughput (MB of text per second) on the bundled TinyStories sample.

Ours: `tinystories.data.pretokenize.pretokenize` (batched `encode_batch` on all cores,
numpy concatenation, streamed to disk). Peer: the loop people write first, one
`tokenizer.encode` call per story appended to a Python list, then `np.array`.
Run: python bench/bench_pretokenize.py [--repeat 8]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from tinystories.data.corpus import read_stories
from tinystories.data.pretokenize import load_tokens, pretokenize
from tinystories.tokenizer import train_bpe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=8, help="passes over the sample (8 x 2 MB)")
    args = parser.parse_args()
    stories = read_stories("bundled:train")[0] * args.repeat
    megabytes = sum(len(s.encode()) + 1 for s in stories) / 1e6
    tokenizer = train_bpe(stories[:2317], vocab_size=4096)

    start = time.perf_counter()
    ids: list[int] = []
    for story in stories:
        ids.extend(tokenizer.encode(story))
        ids.append(tokenizer.eos_id)
    reference = np.array(ids, dtype=np.uint16)
    loop_s = time.perf_counter() - start

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        pretokenize(stories, tokenizer, Path(tmp) / "train.bin", progress=False)
        ours_s = time.perf_counter() - start
        tokens, _ = load_tokens(Path(tmp) / "train.bin")
        assert np.array_equal(tokens, reference), "pretokenize differs from the plain loop"

    print(f"{megabytes:.1f} MB of stories, {len(reference):,} tokens")
    print(f"  per-story encode loop: {megabytes / loop_s:6.1f} MB/s")
    print(f"  tinystories pretokenize: {megabytes / ours_s:6.1f} MB/s  ({loop_s / ours_s:.1f}x)")


if __name__ == "__main__":
    main()
