"""Runs the model for the engine: a prefill of new prompts, and a decode step of the batch.

The decode step is the model's own (`decode.decode_step`, derived from `model/gpt.py` and pinned
to `forward` by the tests), unless this thread has hooks on the model (an intervention being
sampled with, `interpret.hooks.patched`) or the model is training: then `forward` runs, so the
hooks see and change what is generated. Hooks of other threads (the playground's attention
view, another client) never act here, so they never slow this batch down.

Every row is prefilled as it would be alone, so that its story never depends on the rows
that arrive with it: a matrix product's rounding depends on how many rows it multiplies (1e-7
to 4e-6 in a logit at our shapes), and a batched `forward` made a seeded story change, now and
then, with its neighbours (bench/README.md, Server). The C decode step computes each row by
itself, the same bit for bit in any batch (tests/test_sampling.py), so every prompt goes
through it (`DecodeStep.prefill`): all positions of all new prompts as the rows of a call (256
at most), each computed as a step of its own would, the output layer only at each prompt's
last. Its matrices are read once for all of them, with no module calls: for a 30-token prompt
2-3.5x faster than a `forward` of it alone (bench/README.md, Inference). Identical prompts
without additions go through once.

Without the C step (no compiler, another device or dtype) decoding's batched products round
by the batch too, so nothing is gained by passes alone: prompts of one token take the PyTorch
step, longer ones one batched `forward`; with hooks on this thread (or additions the step cannot
make) every prompt goes through that `forward`, so the hooks see it.

Per-row additions at hook points (steering, `Sequence.adds`: the residual stream's points and
the MLP's neurons, `decode.addable`, the only ones `Engine.submit` lets in) stay on the fast step, so
one steered request never takes the batch off it; in a `forward` prefill they run as hooks
that add the row's vector.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

import torch

from tinystories.infer.cache_manager import repeat_rows
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
        self.best = torch.empty(0, dtype=torch.long, device=self.device)  # `decode`'s most likely tokens

    @contextlib.contextmanager
    def _adding(self, adds: Adds) -> Iterator[None]:
        """`forward` with adds[name][row] added at every position of each row."""
        def hook(add: torch.Tensor):  # type: ignore[no-untyped-def]
            return lambda x: x + add[:, None].to(x.dtype)
        with self.model.hooked({name: hook(add) for name, add in adds.items()}):
            yield

    def prefill(self, seqs: list[Sequence], pad_id: int) -> tuple[torch.Tensor, KVCache]:
        """Prompts of `seqs` into a new cache; the logits of each one's next token [n, V]. With the
        C step each row is prefilled as it would be alone (see the module doc). The prompts are
        as `Engine.submit` let them in: 1 to context tokens, each in the vocabulary (the C step
        indexes the embedding table unchecked)."""
        idx, pad = left_pad([s.prompt for s in seqs], pad_id, self.device)
        self.step = decode_step(self.model)  # looked up once per admission, not at every step
        adds = batch_adds(list(seqs), self.device, self.dtype)
        step = self._step_for(adds)
        if step is None or (step.native is None and idx.shape[1] > 1):
            return self._forward_together(idx, pad, adds)
        # Identical prompts (without additions) once: `sample -n`, evaluation's samples per prompt.
        keys = [tuple(s.prompt) if not s.adds else i for i, s in enumerate(seqs)]
        first = {key: i for i, key in reversed(list(enumerate(keys)))}
        if len(first) == len(seqs):
            cache = self.model.new_cache(len(seqs), self.context, pad)
            return step.prefill(idx, cache, adds), cache
        unique = sorted(first.values())
        place = {i: j for j, i in enumerate(unique)}
        of = torch.tensor([place[first[key]] for key in keys], device=self.device)
        cache = self.model.new_cache(len(unique), self.context, pad[unique])
        logits = step.prefill(idx[unique], cache, {n: a[unique] for n, a in adds.items()})
        repeat_rows(cache, of)
        return logits[of], cache

    def _forward_together(self, idx: torch.Tensor, pad: torch.Tensor, adds: Adds) -> tuple[torch.Tensor, KVCache]:
        """Left-padded prompts `idx` [n, T] through one `forward`: the logits [n, V] after them,
        and their cache."""
        cache = self.model.new_cache(idx.shape[0], self.context, pad)
        with self._adding(adds) if adds else contextlib.nullcontext():
            logits, _ = self.model(idx, cache=cache, last=True)
        return logits[:, -1], cache

    def _step_for(self, adds: Adds) -> DecodeStep | None:
        """The decode step, if it computes what `forward` with these additions would."""
        return self.step if self.step is not None and all(addable(name) for name in adds) else None

    def decode(self, tokens: torch.Tensor, cache: KVCache, slots: list[Sequence | None], greedy: bool = False,
               logits: bool = True) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Logits [B, V] of the next token of every slot after `tokens` [B], appended to `cache`;
        and, if `greedy` (some row wants it) and the decode step ran, each slot's most likely token
        (valid until the next call: the same tensor is reused, a new one costs ~3 us a step).
        `logits=False` (every row greedy, none reporting log-probabilities): the logits are None
        when the decode step ran (`DecodeStep.argmax` then skips most of the output layer)."""
        adds = batch_adds(slots, self.device, self.dtype) if any(s is not None and s.adds for s in slots) else {}
        step = self._step_for(adds)
        if step is not None:
            best = None
            if greedy or not logits:
                if self.best.shape[0] != len(slots):
                    self.best = torch.empty(len(slots), dtype=torch.long, device=self.device)
                best = self.best
            if not logits:
                step.argmax(tokens, cache, adds, self.best)
                return None, self.best
            return step.step(tokens, cache, adds, best), best
        with self._adding(adds) if adds else contextlib.nullcontext():
            return self.model(tokens[:, None], cache=cache)[0][:, -1], None

