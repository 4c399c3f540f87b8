"""Runs the model for the engine: a prefill of new prompts, and a decode step of the batch.

The decode step is the model's own (`GPT.decode_step`, derived from `model/gpt.py` and pinned
to `forward` by the tests), unless this thread has hooks on the model (an intervention being
sampled with, `interpret.hooks.patched`) or the model is training: then `forward` runs, so the
hooks see and change what is generated. Hooks of other threads (the playground's attention
view, another client) never act here, so they never slow this batch down.

Every row is prefilled as it would be alone, so that its story never depends on the rows
that arrive with it: a matrix product's rounding depends on how many rows it multiplies (1e-7
to 4e-6 in a logit at our shapes), and a batched `forward` made a seeded story change, now and
then, with its neighbours (bench/README.md, Server). The C decode step computes each row by
itself, the same bit for bit in any batch (tests/test_sampling.py), so:

* prompts of up to `STEPPED` tokens go through the decode step together, one position at a
  time (the output layer only at the last): for one token `forward`'s module calls cost 4-9x
  a step, and a batch of short prompts costs as many steps as its longest has tokens, each
  reading the weights once for all rows (bench/README.md, Inference);
* longer ones through `forward`, one prompt at a time (identical prompts once), whose products
  over all positions at once win there. Which way a row goes depends on its own length only.

Without the C step (no compiler, another device or dtype, hooks on this thread) decoding's
batched products round by the batch too, so nothing is gained by passes alone: prompts of one
token take the step, longer ones one batched `forward`.

Per-row additions at hook points (steering, `Sequence.adds`: the residual stream's points and
the MLP's neurons, `gpt.addable`, the only ones `check_adds` lets in) stay on the fast step, so
one steered request never takes the batch off it; in a `forward` prefill they run as hooks
that add the row's vector.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

import torch

from tinystories.infer.sampling import left_pad
from tinystories.infer.sequence import Sequence
from tinystories.model.gpt import GPT, DecodeStep, KVCache, addable

Adds = Mapping[str, torch.Tensor]  # hook point -> [B, width] one vector per batch row (zeros: none)
STEPPED = 16  # prompts up to this many tokens prefill through the C decode step (see above)


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


def _place(cache: KVCache, i: int, src: KVCache, j: int, n: int, end: int) -> None:
    """Row j's last `n` keys and values in `src` into row i of `cache`, ending at slot `end`."""
    cache.k[:, i, :, end - n:end] = src.k[:, j, :, src.length - n:src.length]
    cache.v[:, i, :, end - n:end] = src.v[:, j, :, src.length - n:src.length]


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
        C step each row is prefilled as it would be alone (see the module doc)."""
        idx, pad = left_pad([s.prompt for s in seqs], pad_id, self.device)
        if idx.shape[1] > self.context:
            raise ValueError(f"prompt of {idx.shape[1]} tokens is longer than the model's context of "
                             f"{self.context}")
        vocab = self.model.cfg.vocab_size
        if int(idx.min()) < 0 or int(idx.max()) >= vocab:  # the C step indexes the embedding table unchecked
            bad = next(t for s in seqs for t in s.prompt if not 0 <= t < vocab)
            raise ValueError(f"token id {bad} in a prompt is outside the model's vocabulary (0 to {vocab - 1})")
        self.step = self.model.decode_step()  # looked up once per admission, not at every step
        adds = batch_adds(list(seqs), self.device, self.dtype)
        step = self._step_for(adds)
        end = idx.shape[1]
        if step is None or step.native is None:  # no C step: decoding rounds by the batch anyway
            if end == 1 and step is not None:
                return self._stepped(step, idx, pad, adds, self.context)
            return self._forward_together(idx, pad, adds)
        short = [i for i, s in enumerate(seqs) if len(s.prompt) <= STEPPED]
        if len(short) == len(seqs):
            return self._stepped(step, idx, pad, adds, self.context)
        cache = self.model.new_cache(len(seqs), self.context, pad)
        logits: dict[int, torch.Tensor] = {}
        if short:
            sub_idx, sub_pad = left_pad([seqs[i].prompt for i in short], pad_id, self.device)
            sub_logits, sub = self._stepped(step, sub_idx, sub_pad, {n: a[short] for n, a in adds.items()},
                                            sub_idx.shape[1])
            for j, i in enumerate(short):
                _place(cache, i, sub, j, len(seqs[i].prompt), end)
                logits[i] = sub_logits[j]
        passes: dict[object, tuple[KVCache, torch.Tensor]] = {}
        for i, s in enumerate(seqs):
            if i in logits:
                continue
            key = tuple(s.prompt) if not s.adds else i  # a row with additions passes by itself
            if key not in passes:
                passes[key] = self._forward_alone(s.prompt, {n: a[i:i + 1] for n, a in adds.items() if n in s.adds})
            row, logits[i] = passes[key]
            _place(cache, i, row, 0, len(s.prompt), end)
        cache.length = end
        return torch.stack([logits[i] for i in range(len(seqs))]), cache

    def _stepped(self, step: DecodeStep, idx: torch.Tensor, pad: torch.Tensor, adds: Adds, max_len: int
                 ) -> tuple[torch.Tensor, KVCache]:
        """Left-padded prompts `idx` [n, T] through the decode step, one position at a time (no
        output layer before the last): the logits [n, V] after them, and their cache."""
        cache = self.model.new_cache(idx.shape[0], max_len, pad)
        for t in range(idx.shape[1] - 1):
            step.fill(idx[:, t], cache, adds)
        return step.step(idx[:, -1], cache, adds), cache

    def _forward_together(self, idx: torch.Tensor, pad: torch.Tensor, adds: Adds) -> tuple[torch.Tensor, KVCache]:
        """Left-padded prompts `idx` [n, T] through one `forward`: the logits [n, V] after them,
        and their cache."""
        cache = self.model.new_cache(idx.shape[0], self.context, pad)
        with self._adding(adds) if adds else contextlib.nullcontext():
            logits, _ = self.model(idx, cache=cache, last=True)
        return logits[:, -1], cache

    def _forward_alone(self, prompt: list[int], adds: Adds) -> tuple[KVCache, torch.Tensor]:
        """One prompt through `forward` by itself: its cache, and the logits [V] after it."""
        cache = self.model.new_cache(1, len(prompt))
        with self._adding(adds) if adds else contextlib.nullcontext():
            out, _ = self.model(torch.tensor([prompt], device=self.device), cache=cache, last=True)
        return cache, out[0, -1]

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


def check_adds(model: GPT, adds: Mapping[str, torch.Tensor]) -> None:
    """Raise ValueError unless each addition is a vector as wide as its hook point's last dimension:
    the residual stream's points (``hook_embed``, ``blocks.L.hook_resid_post``, ...; d_model wide) and
    the MLP's neurons (``blocks.L.mlp.hook_post``; ffn wide). Checked once, where a request comes in."""
    points = model.hook_points()
    for name, vec in adds.items():
        if name not in points:
            raise ValueError(f"no hook point named {name!r}; e.g. blocks.0.hook_resid_post")
        width = model.cfg.ffn_dim if name.endswith("mlp.hook_post") else model.cfg.d_model
        if not addable(name):
            raise ValueError(f"cannot add a vector at {name!r}: choose a residual-stream point "
                             "(hook_embed, blocks.L.hook_resid_pre/mid/post, hook_attn_out, hook_mlp_out) "
                             "or blocks.L.mlp.hook_post")
        if vec.dim() != 1 or vec.shape[0] != width:
            raise ValueError(f"the vector for {name} has shape {list(vec.shape)}; it needs [{width}]")
        if not bool(torch.isfinite(vec).all()):
            raise ValueError(f"the vector for {name} has NaN or infinite values")
