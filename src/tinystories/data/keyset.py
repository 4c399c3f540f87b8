"""A set of 64-bit keys in 8 bytes each: a sorted numpy array plus a small Python set.

A Python set of ints costs 60-90 bytes an entry; at the paper's 2.1M stories (10M band keys
for the near-duplicate index) that is most of a gigabyte. Here the keys live in one sorted
uint64 array, searched with `searchsorted`; keys added since the last merge wait in a Python
set that is merged into the array when it reaches an eighth of it (at least 64K keys), so
the array is re-sorted O(log n) times over a run and the set never holds more than ~n/8.
"""

from __future__ import annotations

import numpy as np

MERGE_MIN = 1 << 16  # keys held in the Python set before the first merge


class KeySet:
    def __init__(self) -> None:
        self._sorted = np.zeros(0, np.uint64)
        self._recent: set[int] = set()

    def contains_any(self, keys: np.ndarray) -> bool:
        """True if any of `keys` (uint64) is in the set."""
        if any(int(k) in self._recent for k in keys):
            return True
        if len(self._sorted):
            at = np.searchsorted(self._sorted, keys)
            at[at == len(self._sorted)] = 0
            return bool((self._sorted[at] == keys).any())
        return False

    def __contains__(self, key: int) -> bool:
        if key in self._recent:
            return True
        keys = self._sorted
        at = int(keys.searchsorted(np.uint64(key)))
        return at < len(keys) and int(keys[at]) == key

    def add(self, keys: np.ndarray | list[int]) -> None:
        self._recent.update(int(k) for k in keys)
        if len(self._recent) >= max(MERGE_MIN, len(self._sorted) // 8):
            self._merge()

    def add_many(self, keys: np.ndarray) -> None:
        """Add a large array of keys at once (one sort)."""
        if keys.size:
            self._merge(np.asarray(keys, np.uint64).ravel())

    def _merge(self, more: np.ndarray | None = None) -> None:
        parts = [self._sorted, np.fromiter(self._recent, np.uint64, len(self._recent))]
        if more is not None:
            parts.append(more)
        self._sorted = np.sort(np.concatenate(parts))
        self._recent = set()

    def __len__(self) -> int:
        """Keys held (a key added twice counts twice until merged; callers add each once)."""
        return len(self._sorted) + len(self._recent)
