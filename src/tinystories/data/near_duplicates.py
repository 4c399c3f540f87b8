"""The near-duplicate index of `generate`: MinHash LSH band keys in sorted numpy arrays.

datasketch's `MinHashLSH` keeps, per band, a dict from the band's bytes to a set of story
keys: hundreds of bytes of Python objects per story, rebuilt from every story's text on each
start. Its query only asks "does any band of this MinHash equal a band of an indexed one?",
so the same answer comes from a set of fixed-size band keys: each band (a slice of `r`
hash values, with `b` and `r` exactly as `MinHashLSH(threshold, num_perm)` picks them) is
hashed with its band number to 8 bytes. Keys live in a `KeySet` (one sorted uint64 array
plus a small Python set of recent keys), so memory is `8 * b` bytes per accepted story (40
bytes at the defaults, b=5) plus that bounded set, and a restart loads the keys from `OUT/index/`
instead of hashing every story again. A false match needs two different bands to collide in
64 bits: at 2M stories (10M keys) the chance of one anywhere is about 3e-6.
"""

from __future__ import annotations

import hashlib

import numpy as np
from datasketch import MinHashLSH

from tinystories.data.keyset import KeySet


def lsh_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows per band) as datasketch's MinHashLSH chooses them (false positives and
    negatives weighted alike)."""
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    return lsh.b, lsh.r


class BandIndex:
    def __init__(self, threshold: float, num_perm: int):
        self.b, self.r = lsh_bands(threshold, num_perm)
        self._keys = KeySet()

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
        return self._keys.contains_any(keys)

    def add(self, keys: np.ndarray) -> None:
        self._keys.add(keys)

    def add_many(self, keys: np.ndarray) -> None:
        """Add rows of keys at once (a restart loading OUT/index/bands.bin)."""
        self._keys.add_many(keys)

    def __len__(self) -> int:
        """Keys held (b per indexed story)."""
        return len(self._keys)
