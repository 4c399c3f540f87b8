"""The running batch's KV cache and its slots: rows join, leave and are compacted here.

The batch has physical rows (slots). A finished row frees its slot (`release`); the next
sequence admitted writes its prompt's keys and values into a free slot in place, right-aligned
with the rows running (the model masks left padding and skips it in positions, so every row
computes exactly what it would alone), so admitting and finishing cost no copy of the other
rows. Free slots still ride along in the forward pass, so the batch is compacted (one copy)
once they are more than a third of it, and slots that are padding in every live row (new rows
are right-aligned) are trimmed once they are a quarter of the cache, and at the context's end.

This is the only code that reshapes a `KVCache`; the model only appends to one.
"""

from __future__ import annotations

import torch

from tinystories.infer.sequence import Sequence
from tinystories.model.gpt import KVCache


def padding(cache: KVCache) -> torch.Tensor:
    """Each row's padding slots (all 0 if the cache was made without)."""
    if cache.pad is None:
        cache.pad = torch.zeros(cache.batch, dtype=torch.long, device=cache.k.device)
    return cache.pad


def free_row(cache: KVCache, row: int) -> None:
    """Row `row` no longer matters: from now on it only sees itself (cheap, and never NaN)."""
    padding(cache)[row] = cache.length


def add_rows(cache: KVCache, n: int) -> None:
    """Grow the batch by `n` free rows."""
    shape = (cache.k.shape[0], n, *cache.k.shape[2:])
    pad = padding(cache)
    cache.k = torch.cat([cache.k, cache.k.new_zeros(shape)], 1)
    cache.v = torch.cat([cache.v, cache.v.new_zeros(shape)], 1)
    cache.pad = torch.cat([pad, pad.new_full((n,), cache.length)])


def write_rows(cache: KVCache, rows: torch.Tensor, other: KVCache) -> None:
    """Put `other`'s rows into rows `rows`, right-aligned with this batch (other is no longer)."""
    assert other.length <= cache.length, "a longer cache must be merged, not written"
    start = cache.length - other.length
    cache.k[:, rows, :, start:cache.length] = other.k[:, :, :, :other.length]
    cache.v[:, rows, :, start:cache.length] = other.v[:, :, :, :other.length]
    padding(cache)[rows] = padding(other) + start


def select(cache: KVCache, rows: torch.Tensor) -> KVCache:
    """A new cache of only `rows`, without the leading slots that are padding in all of them."""
    return _rebuild(cache, cache.k[:, rows, :, :cache.length], cache.v[:, rows, :, :cache.length],
                    padding(cache)[rows])


def merge(cache: KVCache, other: KVCache) -> KVCache:
    """A new cache with `other`'s rows after these, both right-aligned (either may be longer)."""
    length = max(cache.length, other.length)

    def right_aligned(c: KVCache, t: torch.Tensor) -> torch.Tensor:
        t = t[:, :, :, :c.length]
        return torch.cat([t.new_zeros(*t.shape[:3], length - c.length, t.shape[-1]), t], 3)

    return _rebuild(cache, torch.cat([right_aligned(cache, cache.k), right_aligned(other, other.k)], 1),
                    torch.cat([right_aligned(cache, cache.v), right_aligned(other, other.v)], 1),
                    torch.cat([padding(cache) + length - cache.length, padding(other) + length - other.length]))


def _rebuild(like: KVCache, k: torch.Tensor, v: torch.Tensor, pad: torch.Tensor) -> KVCache:
    lead = int(pad.min())  # slots that are padding in every row: drop them
    k, v, pad = k[:, :, :, lead:], v[:, :, :, lead:], pad - lead
    cache = KVCache.__new__(KVCache)
    max_len = like.k.shape[3]
    cache.k = k.new_zeros(*k.shape[:3], max_len, k.shape[-1])
    cache.v = v.new_zeros(*v.shape[:3], max_len, v.shape[-1])
    cache.k[:, :, :, :k.shape[3]] = k
    cache.v[:, :, :, :v.shape[3]] = v
    cache.length, cache.pad = k.shape[3], pad
    return cache


class CacheManager:
    """The running batch: `slots` (a sequence or None = free), their KV cache, each slot's last token."""

    def __init__(self, context: int, device: torch.device) -> None:
        self.context, self.device = context, device
        self.slots: list[Sequence | None] = []
        self.cache: KVCache | None = None
        self.last = torch.zeros(0, dtype=torch.long, device=device)
        self.lead: int | None = None  # slots that are padding in every live row (None: to count again)

    @property
    def rows(self) -> list[Sequence]:
        """The sequences running, in slot order."""
        return [s for s in self.slots if s is not None]

    def live(self) -> list[int]:
        return [i for i, s in enumerate(self.slots) if s is not None]

    def clear(self) -> None:
        self.slots, self.cache, self.lead = [], None, None
        self.last = self.last[:0]

    def release(self) -> None:
        """Free the slots of finished and cancelled sequences; compact once free slots are a third."""
        if self.cache is None:
            return
        for i, s in enumerate(self.slots):
            if s is not None and (s.cancelled or s.finished):
                self.slots[i] = None
                free_row(self.cache, i)
                self.lead = None
        live = self.live()
        if not live:
            self.clear()
        elif 2 * (len(self.slots) - len(live)) > len(live):
            self.compact()

    def admit(self, new: list[Sequence], cache: KVCache) -> torch.Tensor:
        """Put `new` (prefilled into `cache`) into the batch; the slots they took."""
        self.lead = None
        if self.cache is None:  # the new rows become the batch
            self.cache, self.slots = cache, list(new)
            self.last = torch.zeros(len(new), dtype=torch.long, device=self.device)
            return torch.arange(len(new), device=self.device)
        if cache.length > self.cache.length:  # longer than the batch so far: realign everything (copies)
            self.compact()
            assert self.cache is not None
            where = torch.arange(len(self.slots), len(self.slots) + len(new), device=self.device)
            self.cache = merge(self.cache, cache)
            self.slots += new
            self.last = torch.cat([self.last, self.last.new_zeros(len(new))])
            return where
        free = [i for i, s in enumerate(self.slots) if s is None]  # right-align in free slots (grown if needed)
        if len(free) < len(new):
            extra = len(new) - len(free)
            add_rows(self.cache, extra)
            free += list(range(len(self.slots), len(self.slots) + extra))
            self.slots += [None] * extra
            self.last = torch.cat([self.last, self.last.new_zeros(extra)])
        where = torch.tensor(free[:len(new)], device=self.device)
        write_rows(self.cache, where, cache)
        for slot, seq in zip(free, new):
            self.slots[slot] = seq
        return where

    def trim(self) -> None:
        """Before a step: drop slots that are padding in every live row, at the context's end, and
        once they are a quarter of the cache (attention reads every slot at each step, and at
        batch 32 that reading is most of a step; one copy pays for itself in a few steps)."""
        c = self.cache
        assert c is not None
        if self.lead is None:  # counted when rows come and go, not at every step
            self.lead = int(padding(c)[self.live()].min())
        if c.length >= self.context or 4 * self.lead >= c.length:
            self.compact()

    def compact(self) -> None:
        """Keep only the live slots (one copy), and trim slots that are padding in all of them."""
        assert self.cache is not None
        live = self.live()
        sel = torch.tensor(live, device=self.device)
        self.cache = select(self.cache, sel)
        self.slots = [self.slots[i] for i in live]
        self.last = self.last[sel]
        self.lead = None

    def gather(self) -> torch.Tensor | slice:
        """Where the live rows are among the slots (a slice when every slot is live: no copy)."""
        live = self.live()
        return slice(None) if len(live) == len(self.slots) else torch.tensor(live, device=self.device)
