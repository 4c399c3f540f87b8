"""Runs the model for the engine: a prefill of new prompts, and a decode step of the batch.

Which path runs, and why, is decided here:

* the C decode step (`decode.decode_step`, pinned to `forward` by the tests) where it exists:
  a float32 model on the CPU with a C compiler, in eval mode, with no hooks on this thread.
  It computes every row by itself, the same bit for bit in any batch, so a story never depends
  on the rows that arrive or run with it (tests/test_sampling.py). Every prompt goes through
  it (`DecodeStep.prefill`: all positions of all new prompts as the rows of a call);
* for a batch of one row that wants only its most likely token (greedy, nothing reported: a
  single greedy stream), `DecodeStep.argmax`, which reads half of the output layer;
* otherwise `forward` with its KV cache: no compiler, another device or dtype, training, or
  hooks on this thread (an intervention being sampled with, `interpret.hooks.patched`), so the
  hooks see and change what is generated. Hooks of other threads (the playground's attention
  view, another client) never act here. Batched products round by the batch there (1e-7 to
  4e-6 in a logit at our shapes), so a seeded story can change with its neighbours.

Per-row additions at hook points (steering, `Sequence.adds`: the residual stream's points and
the MLP's neurons, `decode.addable`, the only ones `Engine.submit` lets in) stay on the C step,
so one steered request never takes the batch off it; in `forward` they run as hooks that add
the row's vector.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

import torch

from tinystories.infer.sampling import left_pad
from tinystories.infer.sequence import Sequence
from tinystories.model.decode import DecodeStep, addable, decode_step
from tinystories.model.gpt import GPT, KVCache

Adds = Mapping[str, torch.Tensor]  # hook point -> [B, width] one vector per batch row (zeros: none)


def batch_adds(rows: list[Sequence | None], device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The rows' additions as one [B, d] tensor per hook point (free slots and rows without: zero)."""
    names = {name for s in rows if s is not None for name in s.adds}
    out = {}
    for name in names:
        vecs = [s.adds.get(name) if s is not None else None for s in rows]
        d = next(v for v in vecs if v is not None).shape[-1]
        out[name] = torch.stack([v.to(device, dtype) if v is not None else torch.zeros(d, device=device, dtype=dtype)
                                 for v in vecs])
    return out


class Runner:
    def __init__(self, model: GPT) -> None:
        self.model = model
        self.context = model.cfg.context_length
        self.device = model.tok_emb.weight.device
        self.dtype = model.tok_emb.weight.dtype
        self.step: DecodeStep | None = None

    @contextlib.contextmanager
    def _adding(self, adds: Adds) -> Iterator[None]:
        """`forward` with adds[name][row] added at every position of each row."""
        def hook(add: torch.Tensor):  # type: ignore[no-untyped-def]
            return lambda x: x + add[:, None].to(x.dtype)
        with self.model.hooked({name: hook(add) for name, add in adds.items()}) if adds else contextlib.nullcontext():
            yield

    def _step_for(self, adds: Adds) -> DecodeStep | None:
        """The C step, if it computes what `forward` with these additions would."""
        return self.step if self.step is not None and all(addable(name) for name in adds) else None

    def prefill(self, seqs: list[Sequence], pad_id: int) -> tuple[torch.Tensor, KVCache]:
        """Prompts of `seqs` into a new cache; the logits of each one's next token [n, V]. The
        prompts are as `Engine.submit` let them in: 1 to context tokens, each in the vocabulary
        (the C step indexes the embedding table unchecked)."""
        idx, pad = left_pad([s.prompt for s in seqs], pad_id, self.device)
        self.step = decode_step(self.model)  # looked up once per admission, not at every step
        adds = batch_adds(list(seqs), self.device, self.dtype)
        step = self._step_for(adds)
        cache = self.model.new_cache(len(seqs), self.context, pad)
        if step is not None:
            return step.prefill(idx, cache, adds), cache
        with self._adding(adds):
            logits, _ = self.model(idx, cache=cache, last=True)
        return logits[:, -1], cache

    def decode(self, tokens: torch.Tensor, cache: KVCache, slots: list[Sequence | None], logits: bool = True
               ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """One step of every slot after `tokens` [B], appended to `cache`: (logits [B, V], None), or,
        where `logits` is False (every row greedy, none reporting log-probabilities) and the batch
        is one row on the C step, (None, its most likely token [1]) from `DecodeStep.argmax`."""
        adds = batch_adds(slots, self.device, self.dtype) if any(s is not None and s.adds for s in slots) else {}
        step = self._step_for(adds)
        if step is None:
            with self._adding(adds):
                return self.model(tokens[:, None], cache=cache)[0][:, -1], None
        if not logits and len(slots) == 1:
            return None, step.argmax(tokens, cache, adds)
        return step.step(tokens, cache, adds), None
