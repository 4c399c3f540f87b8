"""Rouge-k overlap, exactly as `rouge-score` computes it, with an inverted index for memorisation.

The paper checks that generated stories are not copied from the training set: for each
completion, the highest Rouge-2 precision (the fraction of the completion's bigrams, counts
clipped, found in one training story) against every training story. A brute-force scan is
(completions x 2M stories) Counter intersections; here the training set is read once, in
chunks, into indexes holding only the n-grams that occur in the completions (n-gram -> story
ids and counts), and each completion sums its clipped matches over its own n-grams' postings.
"""

from __future__ import annotations

import re
from array import array
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from itertools import islice
from typing import Any

import numpy as np
from tqdm import tqdm

_ALNUM_RUN = re.compile(r"[a-z0-9]+")


def rouge_tokens(text: str) -> list[str]:
    """`rouge_score.tokenize.tokenize(text, stemmer=None)`: lowercase, non-alphanumerics replaced
    by spaces, split; i.e. the runs of [a-z0-9] in the lowercased text."""
    return _ALNUM_RUN.findall(text.lower())


def ngram_counts(text: str, n: int = 2) -> Counter[tuple[str, ...]]:
    tokens = rouge_tokens(text)
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def rouge_n(target: Counter, prediction: Counter) -> tuple[float, float, float]:
    """(precision, recall, F) of `prediction` against `target`, as rouge-score's _score_ngrams."""
    overlap = sum(min(count, prediction[g]) for g, count in target.items())
    precision = overlap / max(sum(prediction.values()), 1)
    recall = overlap / max(sum(target.values()), 1)
    f = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return precision, recall, f


@dataclass
class NearestStory:
    precision: float  # max Rouge-n precision of the completion against one training story
    story: int  # index of that story (-1 if no n-gram is shared with any story)


class NgramIndex:
    """n-gram id -> (story ids, counts) over a chunk of stories, in CSR arrays; only the n-grams
    in `ids` (those of the completions) are kept, so memory is bounded by the chunk."""

    def __init__(self, ids: dict[tuple[str, ...], int], stories: Sequence[str], n: int = 2):
        gram_ids, story_ids, counts = array("q"), array("i"), array("i")
        for sid, story in enumerate(stories):
            tokens = rouge_tokens(story)
            found = Counter(g for g in zip(*(tokens[k:] for k in range(n))) if g in ids)
            gram_ids.extend(ids[g] for g in found)
            story_ids.extend([sid] * len(found))
            counts.extend(found.values())
        grams = np.frombuffer(gram_ids, dtype=np.int64) if gram_ids else np.zeros(0, np.int64)
        order = np.argsort(grams, kind="stable")
        self.n_stories = len(stories)
        self.story_ids = np.frombuffer(story_ids, dtype=np.int32)[order] if story_ids else np.zeros(0, np.int32)
        self.counts = np.frombuffer(counts, dtype=np.int32)[order] if counts else np.zeros(0, np.int32)
        self.offsets = np.zeros(len(ids) + 1, dtype=np.int64)
        np.cumsum(np.bincount(grams, minlength=len(ids)), out=self.offsets[1:])

    def best_overlap(self, query: list[tuple[int, int]]) -> tuple[int, int]:
        """(largest clipped n-gram overlap, its story) for a query of (n-gram id, count) pairs."""
        overlap = np.zeros(self.n_stories, dtype=np.int32)
        for i, c in query:
            lo, hi = self.offsets[i], self.offsets[i + 1]
            # story ids are unique within one posting list, so plain fancy-index += is exact
            overlap[self.story_ids[lo:hi]] += np.minimum(self.counts[lo:hi], c)
        if self.n_stories == 0:
            return 0, -1
        best = int(overlap.argmax())
        return int(overlap[best]), best


_WORKER: dict[str, Any] = {}  # what every worker process needs, set once by its initializer


def _init_worker(ids: dict[tuple[str, ...], int], queries: list[list[tuple[int, int]]], n: int) -> None:
    _WORKER.update(ids=ids, queries=queries, n=n)


def _chunk_best(batch: list[str], ids: dict[tuple[str, ...], int], queries: list[list[tuple[int, int]]],
                n: int) -> list[tuple[int, int]]:
    index = NgramIndex(ids, batch, n)
    return [index.best_overlap(q) for q in queries]


def _worker_chunk_best(batch: list[str]) -> list[tuple[int, int]]:
    return _chunk_best(batch, _WORKER["ids"], _WORKER["queries"], _WORKER["n"])


def max_rouge_precision(completions: Sequence[str], training: Iterable[str], n: int = 2,
                        total: int | None = None, chunk: int = 100_000, workers: int = 1,
                        progress: bool = True) -> list[NearestStory]:
    """For each completion, its highest Rouge-n precision against any training story.

    The training stories stream through in chunks (an index per chunk, built in `workers`
    processes), so the full 2M-story set is never indexed at once.
    """
    grams = [ngram_counts(c, n) for c in completions]
    ids = {g: i for i, g in enumerate(sorted(set().union(*grams)))} if grams else {}
    queries = [[(ids[g], c) for g, c in counts.items()] for counts in grams]
    best = [(0, -1)] * len(completions)
    bar = tqdm(total=total, desc="Rouge index over training stories", unit="story", disable=not progress,
               mininterval=1.0)
    iterator = iter(training)

    def chunks() -> Iterator[list[str]]:
        batch = list(islice(iterator, chunk))
        while batch:
            yield batch
            batch = []  # let go of this chunk before reading the next: one chunk in memory, not two
            batch = list(islice(iterator, chunk))

    def merge(offset: int, found: list[tuple[int, int]], size: int) -> None:
        for k, (overlap, story) in enumerate(found):
            if overlap > best[k][0]:  # strictly greater: the earliest best story wins ties
                best[k] = (overlap, offset + story)
        bar.update(size)

    offset = 0
    if workers <= 1:
        for batch in chunks():
            size = len(batch)
            found = _chunk_best(batch, ids, queries, n)
            del batch  # (the generator frees its reference when it resumes)
            merge(offset, found, size)
            offset += size
    else:
        with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(ids, queries, n)) as pool:
            in_flight: deque[tuple[int, int, Future]] = deque()  # bounded: chunks are not all copied at once
            for batch in chunks():
                in_flight.append((offset, len(batch), pool.submit(_worker_chunk_best, batch)))
                offset += len(batch)
                if len(in_flight) >= 2 * workers:
                    start, size, future = in_flight.popleft()
                    merge(start, future.result(), size)
            for start, size, future in in_flight:
                merge(start, future.result(), size)
    bar.close()
    return [NearestStory(overlap / max(sum(g.values()), 1), story) for (overlap, story), g in zip(best, grams)]


def within_prompt_overlap(groups: Sequence[Sequence[str]], n: int = 2) -> list[float]:
    """Rouge-n F between every two completions of the same prompt (one value per pair)."""
    scores = []
    for group in groups:
        counts = [ngram_counts(c, n) for c in group]
        for i in range(len(counts)):
            for j in range(i + 1, len(counts)):
                scores.append(rouge_n(counts[i], counts[j])[2])
    return scores
