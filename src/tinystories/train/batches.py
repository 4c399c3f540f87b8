"""Training windows from a token file, in three orders, each resumable exactly.

* ``random``: windows at uniformly random positions (a seeded generator whose state is saved).
* ``shuffled``: each epoch cuts the tokens into windows at a random offset and visits every
  window once, in a random order: no part of a small corpus is seen twice before all of it
  was seen once.
* ``stories``: each window starts at a story's start (the end-of-text token before it), as
  evaluation reads stories; a story longer than a window goes on in the next windows, so
  every token is still seen each epoch. Once per epoch each, in a random order. On short
  stories (TinyStories at context 256) the model learns to begin a story from the
  end-of-text token with a whole story of context behind each position, not half-windows
  cut mid-story: the recipe benchmark measured 0.02 bits per byte from it.

The state is (epoch, position) and the permutation of an epoch is a pure function of
(seed, epoch), so a resumed run draws exactly the windows an uninterrupted one would.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from tinystories.errors import TinyStoriesError


class TokenBatches:
    def __init__(self, tokens: np.ndarray, context: int, batch: int, seed: int, order: str = "random",
                 eos_id: int = 0) -> None:
        if len(tokens) <= context + 1:
            raise TinyStoriesError(f"token file has {len(tokens)} tokens, fewer than one context "
                                   f"window of {context + 1}: use more data or a shorter context")
        self.tokens, self.context, self.batch, self.seed, self.order = tokens, context, batch, seed, order
        self.rng = np.random.Generator(np.random.PCG64(seed))
        self.epoch, self.pos = 0, 0
        last = len(tokens) - context - 1  # the last start with a whole window after it
        if order == "stories":
            self.story_starts = story_windows(np.asarray(tokens), eos_id, context + 1)
            self.story_starts = self.story_starts[self.story_starts <= last]
        self._epoch_starts: np.ndarray | None = None

    def _starts_of_epoch(self) -> np.ndarray:
        if self._epoch_starts is None:
            rng = np.random.Generator(np.random.PCG64([self.seed, self.epoch]))
            if self.order == "stories":
                starts = self.story_starts
            else:
                window = self.context + 1
                offset = int(rng.integers(0, window))
                starts = np.arange(offset, len(self.tokens) - window + 1, window)
            self._epoch_starts = starts[rng.permutation(len(starts))]
        return self._epoch_starts

    def _next_starts(self) -> np.ndarray:
        if self.order == "random":
            return self.rng.integers(0, len(self.tokens) - self.context - 1, size=self.batch)
        out: list[int] = []
        while len(out) < self.batch:
            starts = self._starts_of_epoch()
            take = starts[self.pos:self.pos + self.batch - len(out)]
            out.extend(take.tolist())
            self.pos += len(take)
            if self.pos >= len(starts):
                self.epoch, self.pos, self._epoch_starts = self.epoch + 1, 0, None
        return np.asarray(out)

    def next(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        window = np.stack([self.tokens[s:s + self.context + 1] for s in self._next_starts()]).astype(np.int64)
        xy = torch.from_numpy(window)
        if device.type == "cuda":
            xy = xy.pin_memory().to(device, non_blocking=True)
        return xy[:, :-1].to(device), xy[:, 1:].to(device)

    def state(self) -> Mapping[str, Any]:
        return {"rng": self.rng.bit_generator.state, "epoch": self.epoch, "pos": self.pos}

    def load_state(self, state: Mapping[str, Any]) -> None:
        if "rng" not in state:  # a checkpoint from before the other orders: the generator's state alone
            self.rng.bit_generator.state = state
            return
        self.rng.bit_generator.state = state["rng"]
        self.epoch, self.pos, self._epoch_starts = state["epoch"], state["pos"], None


def story_windows(tokens: np.ndarray, eos_id: int, window: int) -> np.ndarray:
    """Window starts: each story's start, then every `window` tokens while the story goes on,
    so long documents are covered whole. Token files end every story with EOS, so a story
    starts at the EOS before it (as `encode_story` writes it), the first at token 0."""
    eos = np.flatnonzero(tokens[:-1] == eos_id)
    starts = np.concatenate([[0], eos[eos > 0]]).astype(np.int64)
    lengths = np.diff(np.append(starts, len(tokens)))
    counts = -(-lengths // window)  # windows per story, rounded up
    first = np.repeat(np.cumsum(counts) - counts, counts)  # the index of each window's story's first window
    return np.repeat(starts, counts) + window * (np.arange(counts.sum()) - first)


def story_bounds(tokens: np.ndarray, eos_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) of each story in a token file: a story runs to and includes its EOS (a
    last story without one runs to the end of the file)."""
    ends = np.flatnonzero(np.asarray(tokens) == eos_id) + 1
    if not len(ends) or ends[-1] != len(tokens):
        ends = np.append(ends, len(tokens))
    return np.concatenate([[0], ends[:-1]]).astype(np.int64), ends.astype(np.int64)


def hold_out_stories(tokens: np.ndarray, eos_id: int, percentage: float, seed: int,
                     min_tokens: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Split a token file into (training tokens, held-out tokens, held-out story count): whole
    stories, drawn at random with `seed` (so every process and every resume draws the same),
    `percentage` of them and at least enough for `min_tokens` (one validation window). Each part
    keeps the file's order and its story-EOS layout; no training window can touch a held-out
    token, since they are no longer in the training array."""
    starts, ends = story_bounds(tokens, eos_id)
    lengths = ends - starts
    order = np.random.Generator(np.random.PCG64([seed, 2**40 + 7])).permutation(len(starts))
    wanted = max(1, round(len(starts) * percentage / 100))
    enough = int(np.searchsorted(np.cumsum(lengths[order]), min_tokens)) + 1  # stories for min_tokens
    count = max(wanted, enough)
    if count >= len(starts):
        raise TinyStoriesError(f"the training data ({len(tokens):,} tokens, {len(starts):,} stories) is too small "
                               f"to hold out a validation window of {min_tokens} tokens and still train: give a "
                               "validation corpus (`--valid` of pretokenize or demo), or set "
                               "validation_split_percentage=0")
    held = np.zeros(len(starts), dtype=bool)
    held[order[:count]] = True
    mask = np.repeat(held, lengths)
    tokens = np.asarray(tokens)
    return tokens[~mask], tokens[mask], count


def split_stories(tokens: np.ndarray, eos_id: int) -> list[np.ndarray]:
    """Each story's tokens, without its EOS (empty stories left out)."""
    starts, ends = story_bounds(tokens, eos_id)
    stories = [np.asarray(tokens[a:b]) for a, b in zip(starts, ends)]
    return [s[:-1] if s[-1] == eos_id else s for s in stories if len(s) and not (len(s) == 1 and s[0] == eos_id)]
