"""The generation loop: every story this project writes is written here.

The engine wires nano-vllm's parts together: a `Scheduler` picks waiting sequences fairly
across requests; the `Runner` prefills their prompts (logits at the last position only) and
runs decode steps; the `CacheManager` puts prefilled rows into the running batch's KV cache
and takes finished ones out; the sampler (`infer/sampler.sample`) picks each row's next token
with the row's own params and generator; each `Sequence` records its token and decides whether
it is done.

Two ways to drive it, one loop:

* a server starts it (`start=True`): a background thread owns the model, `submit` is
  thread-safe and returns at once, rows report through their `emit` callback, and
  `after_step` runs once each step's events are out (the server wakes its asyncio loop once
  per step, not once per token);
* offline callers (`tinystories sample`, `eval`, the demo, the trainer's samples: see
  `infer/offline.py`) submit everything to an unstarted engine and `run` it to completion in
  their own thread; no thread is made.

`submit` is where a row's input is checked, once, for every caller: its prompt (1 to context
tokens, each in the vocabulary: `check_prompt`) and its additions at hook points (`check_adds`).
What it refuses raises a `PromptError` or `SteeringError` naming the field, and nothing is
queued; past it the runner and the model take the row as given.

A failure while admitting rows fails only those rows; the running batch goes on. A failure in
a decode step fails the rows in the batch, and the engine goes on with the next requests. A
failed row keeps its exception (`Sequence.error`) apart from its text.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Protocol

import torch

from tinystories.errors import PromptError, SteeringError
from tinystories.infer.cache_manager import CacheManager
from tinystories.infer.params import SamplingParams
from tinystories.infer.runner import Runner
from tinystories.infer.sampler import sample, seen_tokens
from tinystories.infer.scheduler import Scheduler
from tinystories.infer.sequence import Event, Sequence
from tinystories.model.decode import addable
from tinystories.model.gpt import GPT
from tinystories.utils import inference

__all__ = ["Engine", "Event", "Sequence", "check_adds", "check_prompt"]


class Detokenizer(Protocol):
    """What the engine needs of a tokenizer."""
    @property
    def eos_id(self) -> int: ...
    def decode(self, ids: list[int]) -> str: ...


class Engine:
    def __init__(self, model: GPT, tokenizer: Detokenizer, max_batch: int = 64, start: bool = True,
                 after_step: Callable[[], None] | None = None, reserved: int = 0) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.context = model.cfg.context_length
        self.runner = Runner(model)
        self.scheduler = Scheduler(max_batch, reserved)
        self.batch = CacheManager(self.context, self.runner.device)
        self.wake = threading.Condition()
        self.stopped = False
        self.steps = 0  # decode steps run (batches, not tokens): for tests and stats
        self.after_step = after_step  # called once each step's events are emitted (to hand them on together)
        self.thread = threading.Thread(target=self._loop, name="tinystories-engine", daemon=True)
        if start:
            self.thread.start()

    @property
    def rows(self) -> list[Sequence]:
        """The sequences being generated now."""
        return self.batch.rows

    def submit(self, prompt: list[int], params: SamplingParams, emit: Callable[[Event], None] | None = None,
               job: object = None, adds: Mapping[str, torch.Tensor] | None = None, logprobs: bool = False
               ) -> Sequence:
        """Queue one row: `prompt` continued by `params`, its events to `emit`; `job` the request it
        belongs to (fair shares), `adds` its vectors at hook points, `logprobs` whether its events
        report log-probabilities. Raises `PromptError` / `SteeringError` (nothing queued) for a
        prompt or additions the model cannot take. Thread-safe."""
        check_prompt(self.model, prompt)
        if adds:
            check_adds(self.model, adds)
        seq = Sequence(prompt, params, emit, job, adds, logprobs)
        if params.max_new_tokens == 0:
            seq.end("length")
            return seq
        with self.wake:
            self.scheduler.add(seq)
            self.wake.notify()
        return seq

    def run(self) -> None:
        """Offline: step until every submitted sequence has finished (an unstarted engine only)."""
        assert not self.thread.is_alive(), "a started engine runs itself"
        with torch.inference_mode():  # once, not at every step
            while True:
                new = self.scheduler.pick(self.rows)
                if not new and not self.rows:
                    return
                self.step(new)

    def close(self) -> None:
        """Stop: rows still waiting or running end with finish_reason "cancelled"."""
        with self.wake:
            self.stopped = True
            self.wake.notify()
        if self.thread.is_alive():
            self.thread.join()  # one step at most; after it no other thread touches the rows
        with self.wake:
            left = [*self.scheduler.drain(), *self.rows]
        for seq in left:
            seq.end("cancelled")
        if left and self.after_step is not None:
            self.after_step()

    def _loop(self) -> None:
        while True:
            with self.wake:
                while not self.stopped and not self.scheduler.waiting and not self.rows:
                    self.wake.wait()
                if self.stopped:
                    return
                new = self.scheduler.pick(self.rows)
            try:
                self.step(new)
            except Exception as exc:  # noqa: BLE001 -- one bad step must not kill the server: fail its rows
                for seq in self.rows + new:
                    seq.end("error", exc)
                self.batch.clear()
            if self.after_step is not None:
                self.after_step()

    @inference
    def step(self, new: list[Sequence]) -> None:
        """Admit `new` sequences, then run one decode step for the whole batch."""
        self.batch.release()
        new = [s for s in new if not s.cancelled]
        if new:
            try:
                self._admit(new)
            except Exception as exc:  # noqa: BLE001 -- only the rows being admitted fail; the batch runs on
                for seq in new:
                    seq.end("error", exc)
            self.batch.release()
        if self.rows:
            self.batch.trim()
            self._decode()

    def _admit(self, new: list[Sequence]) -> None:
        """Prefill the new prompts (`Runner.prefill`), choose their first tokens, and put them in the batch.

        Everything that can fail (the forward pass, the first draw) happens before the batch is
        touched, so a failure here leaves the running rows as they were.
        """
        logits, cache = self.runner.prefill(new, self.tokenizer.eos_id)
        chosen = self._choose(logits, new)
        self._report(new, *chosen, self.batch.admit(new, cache))

    def _decode(self) -> None:
        b = self.batch
        assert b.cache is not None
        rows = b.rows
        # No row needs the logits themselves: every row greedy, none reporting or penalizing them.
        only_best = all(r.params.greedy and not r.logprobs and not r.params.penalized for r in rows)
        logits, best = self.runner.decode(b.last, b.cache, b.slots, logits=not only_best)
        self.steps += 1
        where = b.gather()
        if not isinstance(where, slice):  # free slots rode along
            logits, best = None if logits is None else logits[where], None if best is None else best[where]
        self._report(rows, *self._choose(logits, rows, best), where)

    def _choose(self, logits: torch.Tensor | None, rows: list[Sequence], best: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The next token of each row (`sampler.sample`), and the model's log-probabilities
        (temperature 1, as OpenAI's logprobs report) when some row reports them (`Sequence.logprobs`).
        `best`: every row's most likely token, where the step found it instead of the logits."""
        logprobs = logits.float().log_softmax(-1) if logits is not None and any(r.logprobs for r in rows) else None
        seen = [seen_tokens(r.prompt + r.ids, self.tokenizer.eos_id) if r.params.penalized else [] for r in rows]
        return sample(logits, [r.params for r in rows], [r.generator for r in rows], best, seen), logprobs

    def _report(self, rows: list[Sequence], nxt: torch.Tensor, logprobs: torch.Tensor | None,
                where: torch.Tensor | slice) -> None:
        """Record the chosen tokens of `rows` (in batch slots `where`) and tell their consumers."""
        self.batch.last[where] = nxt
        chosen = nxt.tolist()
        chosen_lp = logprobs.gather(1, nxt[:, None])[:, 0].tolist() if logprobs is not None else None
        eos, decode = self.tokenizer.eos_id, self.tokenizer.decode
        for i, seq in enumerate(rows):
            top = {}
            if seq.params.logprobs and logprobs is not None:
                values, ids = logprobs[i].topk(seq.params.logprobs)
                top = dict(zip(ids.tolist(), values.tolist()))
            seq.advance(chosen[i], chosen_lp[i] if chosen_lp is not None else 0.0, top, eos, self.context, decode)


def check_prompt(model: GPT, prompt: list[int]) -> None:
    """Raise `PromptError` unless `prompt` is 1 to context token ids, each in the model's vocabulary."""
    ctx, vocab = model.cfg.context_length, model.cfg.vocab_size
    if not 0 < len(prompt) <= ctx:
        raise PromptError(f"a prompt of {len(prompt)} tokens: it needs 1 to {ctx} (the model's context); "
                          "an empty story starts with the end-of-story token",
                          "context_length_exceeded" if prompt else "invalid_value")
    if min(prompt) < 0 or max(prompt) >= vocab:
        bad = next(t for t in prompt if not 0 <= t < vocab)
        raise PromptError(f"token id {bad} in a prompt is outside the model's vocabulary (0 to {vocab - 1})")


def check_adds(model: GPT, adds: Mapping[str, torch.Tensor]) -> None:
    """Raise `SteeringError` unless each addition is a vector as wide as its hook point's last
    dimension: the residual stream's points (``hook_embed``, ``blocks.L.hook_resid_post``, ...;
    d_model wide) and the MLP's neurons (``blocks.L.mlp.hook_post``; ffn wide), the points the
    decode step adds at (`decode.addable`)."""
    points = model.hook_points()
    for name, vec in adds.items():
        if name not in points:
            raise SteeringError(f"no hook point named {name!r}; e.g. blocks.0.hook_resid_post")
        if not addable(name):
            raise SteeringError(f"cannot add a vector at {name!r}: choose a residual-stream point "
                                "(hook_embed, blocks.L.hook_resid_pre/mid/post, hook_attn_out, hook_mlp_out) "
                                "or blocks.L.mlp.hook_post")
        width = model.cfg.ffn_dim if name.endswith("mlp.hook_post") else model.cfg.d_model
        if not isinstance(vec, torch.Tensor) or vec.dim() != 1 or vec.shape[0] != width:
            shape = list(vec.shape) if isinstance(vec, torch.Tensor) else type(vec).__name__
            raise SteeringError(f"the vector for {name} has shape {shape}; it needs [{width}]")
        if not bool(torch.isfinite(vec).all()):
            raise SteeringError(f"the vector for {name} has NaN or infinite values")
