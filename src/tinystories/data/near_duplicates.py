"""The near-duplicate index of `generate`: MinHash LSH band keys in sorted numpy arrays.

datasketch's `MinHashLSH` keeps, per band, a dict from the band's bytes to a set of story
keys: hundreds of bytes of Python objects per story, rebuilt from every story's text on each
start. Its query only asks "does any band of this MinHash equal a band of an indexed one?",
so the same answer comes from a set of fixed-size band keys: each band (a slice of `r`
hash values, with `b` and `r` exactly as `MinHashLSH(threshold, num_perm)` picks them) is
hashed with its band number to 8 bytes. Keys live in one sorted uint64 array (searched with
`searchsorted`) plus a small Python set of keys added since the last merge, merged when it
reaches an eighth of the array, so memory is `8 * b` bytes per accepted story (40 bytes at
the defaults, b=5) plus that bounded set, and a restart loads the keys from `OUT/index/`
instead of hashing every story again. A false match needs two different bands to collide in
64 bits: at 2M stories (10M keys) the chance of one anywhere is about 3e-6.
"""

from __future__ import annotations

import hashlib

import numpy as np
from datasketch import MinHashLSH

MERGE_MIN = 1 << 16  # keys held in the Python set before the first merge


def lsh_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows per band) as datasketch's MinHashLSH chooses them (false positives and
    negatives weighted alike)."""
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    return lsh.b, lsh.r


class BandIndex:
    def __init__(self, threshold: float, num_perm: int):
        self.b, self.r = lsh_bands(threshold, num_perm)
        self._sorted = np.zeros(0, np.uint64)
        self._recent: set[int] = set()

    def keys(self, hashvalues: np.ndarray) -> np.ndarray:
        """The b band keys (uint64) of a MinHash's hash values."""
        values = np.ascontiguousarray(hashvalues, dtype=np.uint64)
        out = np.empty(self.b, np.uint64)
        for i in range(self.b):
            digest = hashlib.blake2b(values[i * self.r:(i + 1) * self.r].tobytes(), digest_size=8,
                                     person=i.to_bytes(2, "little"))
            out[i] = int.from_bytes(digest.digest(), "little")
        return out

    def contains_any(self, keys: np.ndarray) -> bool:
        """True if any band key is indexed: MinHashLSH.query would return a candidate."""
        if any(int(k) in self._recent for k in keys):
            return True
        if len(self._sorted):
            at = np.searchsorted(self._sorted, keys)
            at[at == len(self._sorted)] = 0
            return bool((self._sorted[at] == keys).any())
        return False

    def add(self, keys: np.ndarray) -> None:
        self._recent.update(int(k) for k in keys)
        if len(self._recent) >= max(MERGE_MIN, len(self._sorted) // 8):
            self._merge()

    def add_many(self, keys: np.ndarray) -> None:
        """Add rows of keys at once (a restart loading OUT/index/bands.bin)."""
        if keys.size:
            self._merge(np.asarray(keys, np.uint64).ravel())

    def _merge(self, more: np.ndarray | None = None) -> None:
        parts = [self._sorted, np.fromiter(self._recent, np.uint64, len(self._recent))]
        if more is not None:
            parts.append(more)
        self._sorted = np.sort(np.concatenate(parts))
        self._recent = set()

    def __len__(self) -> int:
        """Keys held (b per indexed story)."""
        return len(self._sorted) + len(self._recent)
