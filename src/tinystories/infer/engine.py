"""Continuous batching: many requests share one forward pass per decode step.

A background thread owns the model. Between decode steps it admits waiting requests
into the running batch: their prompts are prefilled together, and their keys/values are
copied into the batch's KV cache, right-aligned with the rows already running (our GPT
masks left padding and skips it in positions, so every row computes exactly what it
would alone). Finished or cancelled rows leave the batch at the next step. Each row has
its own temperature / top-k / top-p and its own random generator (so a `seed` makes a
request reproducible whatever else is in the batch).

Scheduling is fair across requests (a row carries its request's `job`): a request may hold
at most its share of the batch (the slots divided among the requests running or waiting), and
`reserved` slots beyond `max_batch` are only ever given to requests that don't already fill
a batch, so a newcomer is admitted at the next step however large the requests already
running are, and one large request still gets the whole `max_batch`. A failure while admitting rows fails only those
rows; the running batch goes on.

Rows report to their consumer through a callback, and `after_step` runs once each step's
events are out (the server collects events there and wakes its asyncio loop once per step,
not once per token). Each row's text comes from its `TextStream` (infer/text_stream.py):
incremental, holding back an incomplete UTF-8 character or the possible start of a stop
string.
"""

from __future__ import annotations

import threading
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass

import torch

from tinystories.infer.fast import decoder_for
from tinystories.infer.params import SamplingParams
from tinystories.infer.sampler import new_generator, sample
from tinystories.infer.sampling import left_pad
from tinystories.infer.text_stream import TextStream
from tinystories.model.checkpoint import LoadedModel
from tinystories.model.gpt import KVCache


@dataclass
class Event:
    """New text of one row; `finish_reason` is set on the row's last event."""
    text: str
    token_ids: list[int]
    logprobs: list[float]  # log-probability of each new token under the model (temperature 1)
    top_logprobs: list[dict[int, float]]
    finish_reason: str | None = None
    completion_tokens: int = 0


class Row:
    def __init__(self, prompt: list[int], params: SamplingParams, emit: Callable[[Event], None],
                 job: object = None) -> None:
        self.prompt, self.params, self.emit = prompt, params, emit
        self.job = job if job is not None else self  # the request the row belongs to (fair shares)
        self.stream = TextStream(params.stop)
        self.ids = self.stream.ids  # the new tokens
        self.cancelled = False
        self.finish_reason: str | None = None
        self.generator = new_generator(params)
        self.pending_ids: list[int] = []
        self.pending_lp: list[float] = []
        self.pending_top: list[dict[int, float]] = []

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def cancel(self) -> None:
        """Called from any thread (a client went away): the engine drops the row next step."""
        self.cancelled = True


class Engine:
    """Serves one model; `submit` is thread-safe and returns at once.

    The batch has physical rows (`slots`); a finished row frees its slot, and the next
    request admitted writes its prompt's keys/values into that slot in place, so admitting
    and finishing cost no copy of the other rows. Free slots still ride along in the
    forward pass, so the batch is compacted (one copy) once they are more than a third, or
    once slots that are padding in every row (new rows are right-aligned) are a quarter of it.
    """

    def __init__(self, loaded: LoadedModel, max_batch: int = 64, start: bool = True,
                 after_step: Callable[[], None] | None = None, reserved: int = 0) -> None:
        self.model, self.tokenizer = loaded.model, loaded.tokenizer
        self.ctx = self.model.cfg.context_length
        self.device = self.model.tok_emb.weight.device
        self.max_batch = max_batch
        self.reserved = reserved
        self.slots: list[Row | None] = []
        self.waiting: list[Row] = []
        self.cache: KVCache | None = None
        self.last = torch.zeros(0, dtype=torch.long, device=self.device)  # each slot's latest token
        self.wake = threading.Condition()
        self.stopped = False
        self.steps = 0  # decode steps run (batches, not tokens): for tests and stats
        self.after_step = after_step  # called once each step's events are emitted (to hand them on together)
        self.thread = threading.Thread(target=self._loop, name="tinystories-engine", daemon=True)
        if start:  # (tests drive an unstarted engine step by step)
            self.thread.start()

    @property
    def rows(self) -> list[Row]:
        """The requests being generated now."""
        return [r for r in self.slots if r is not None]

    def submit(self, prompt: list[int], params: SamplingParams, emit: Callable[[Event], None],
               job: object = None) -> Row:
        row = Row(prompt, params, emit, job)
        with self.wake:
            self.waiting.append(row)
            self.wake.notify()
        return row

    def close(self) -> None:
        """Stop: rows still waiting or running end with finish_reason "cancelled"."""
        with self.wake:
            self.stopped = True
            self.wake.notify()
        if self.thread.is_alive():
            self.thread.join()  # one step at most; after it no other thread touches the rows
        with self.wake:
            left, self.waiting = [*self.waiting, *self.rows], []
        for row in left:
            self._fail(row, "cancelled", "")
        if left and self.after_step is not None:
            self.after_step()

    def pick(self) -> list[Row]:
        """The waiting rows to admit now (call with `self.wake` held): round robin over requests,
        each up to its fair share of `max_batch + reserved` slots and never beyond `max_batch`."""
        self.waiting = [r for r in self.waiting if not r.cancelled]
        if not self.waiting:
            return []
        running = Counter(r.job for r in self.rows)
        jobs = list(dict.fromkeys([*running, *(r.job for r in self.waiting)]))
        slots = self.max_batch + self.reserved
        share = min(self.max_batch, -(-slots // len(jobs)))
        queues = {j: deque(r for r in self.waiting if r.job is j) for j in jobs}
        room, picked = slots - len(self.rows), []
        while room > 0:
            ready = [j for j in jobs if queues[j] and running[j] < share]
            if not ready:
                break
            for j in ready[:room]:
                picked.append(queues[j].popleft())
                running[j] += 1
            room = slots - len(self.rows) - len(picked)
        chosen = {id(r) for r in picked}
        self.waiting = [r for r in self.waiting if id(r) not in chosen]
        return picked

    def _fail(self, row: Row, reason: str, message: str) -> None:
        if not row.finished:
            row.finish_reason = reason
            row.emit(Event(message, [], [], [], reason, len(row.ids)))

    # ------------------------------------------------------------ the loop
    def _loop(self) -> None:
        while True:
            with self.wake:
                while not self.stopped and not self.waiting and not self.rows:
                    self.wake.wait()
                if self.stopped:
                    return
                new = self.pick()
            try:
                self.step(new)
            except Exception as exc:  # noqa: BLE001 -- one bad step must not kill the server: fail its rows
                for row in self.rows + new:
                    self._fail(row, "error", f"[engine error: {exc}]")
                self.slots, self.cache = [], None
                self.last = self.last[:0]
            if self.after_step is not None:
                self.after_step()

    @torch.inference_mode()
    def step(self, new: list[Row]) -> None:
        """Admit `new` rows, then run one decode step for the whole batch."""
        self._release_finished()
        new = [r for r in new if not r.cancelled]
        if new:
            try:
                self._admit(new)
            except Exception as exc:  # noqa: BLE001 -- only the rows being admitted fail; the batch runs on
                for row in new:
                    self._fail(row, "error", f"[engine error: {exc}]")
            self._release_finished()
        if self.rows:
            c = self.cache
            assert c is not None and c.pad is not None
            # Trim slots that are padding in every live row: at the context's end, and also once
            # they are a quarter of the cache (attention reads every slot at each step, and at
            # batch 32 that reading is most of a step; one copy pays for itself in a few steps).
            if c.length >= self.ctx or 4 * int(c.pad[self._live()].min()) >= c.length:
                self._compact()
            self._decode()

    def _live(self) -> list[int]:
        return [i for i, r in enumerate(self.slots) if r is not None]

    def _release_finished(self) -> None:
        if self.cache is None:
            return
        for i, r in enumerate(self.slots):
            if r is not None and (r.cancelled or r.finished):
                self.slots[i] = None
                self.cache.free_row(i)
        live = self._live()
        if not live:
            self.slots, self.cache = [], None
            self.last = self.last[:0]
        elif 2 * (len(self.slots) - len(live)) > len(live):
            self._compact()

    def _admit(self, new: list[Row]) -> None:
        """Prefill the new prompts together and put them into the running batch.

        Everything that can fail (the forward pass, the first draw) happens before the
        batch is touched, so a failure here leaves the running rows as they were.
        """
        idx, pad = left_pad([r.prompt for r in new], self.tokenizer.eos_id, self.device)
        cache = self.model.new_cache(len(new), self.ctx, pad)
        logits, _ = self.model(idx, cache=cache)
        nxt, logprobs = self._choose(logits[:, -1], new)
        if self.cache is None:  # the new rows become the batch
            self.cache, self.slots = cache, list(new)
            self.last = torch.zeros(len(new), dtype=torch.long, device=self.device)
            where = torch.arange(len(new), device=self.device)
        elif cache.length > self.cache.length:  # longer than the batch so far: realign everything (copies)
            self._compact()
            assert self.cache is not None
            where = torch.arange(len(self.slots), len(self.slots) + len(new), device=self.device)
            self.cache = self.cache.merge(cache)
            self.slots += new
            self.last = torch.cat([self.last, self.last.new_zeros(len(new))])
        else:  # right-align the new rows with the batch, in free slots (grown if needed)
            free = [i for i, r in enumerate(self.slots) if r is None]
            if len(free) < len(new):
                extra = len(new) - len(free)
                self.cache.add_rows(extra)
                free += list(range(len(self.slots), len(self.slots) + extra))
                self.slots += [None] * extra
                self.last = torch.cat([self.last, self.last.new_zeros(extra)])
            where = torch.tensor(free[:len(new)], device=self.device)
            self.cache.write_rows(where, cache)
            for slot, row in zip(free, new):
                self.slots[slot] = row
        self._report(new, nxt, logprobs, where)

    def _compact(self) -> None:
        """Keep only the live slots (one copy), and trim slots that are padding in all of them."""
        assert self.cache is not None
        live = self._live()
        sel = torch.tensor(live, device=self.device)
        self.cache = self.cache.select(sel)
        self.slots = [self.slots[i] for i in live]
        self.last = self.last[sel]

    def _decode(self) -> None:
        assert self.cache is not None
        fast = decoder_for(self.model)  # the fused decode step, unless hooks must see the forward pass
        if fast is not None:
            logits = fast.step(self.last, self.cache)[:, None]
        else:
            logits, _ = self.model(self.last[:, None], cache=self.cache)
        self.steps += 1
        live = self._live()
        where: torch.Tensor | slice = slice(None)  # no free slot: no gather needed
        if len(live) < len(self.slots):
            where = torch.tensor(live, device=self.device)  # the rows in the live slots, in order
        rows = self.rows
        self._report(rows, *self._choose(logits[where, -1], rows), where)

    # ------------------------------------------------------------ sampling and output
    def _choose(self, logits: torch.Tensor, rows: list[Row]) -> tuple[torch.Tensor, torch.Tensor]:
        """The next token of each row, and the model's log-probabilities (temperature 1, as OpenAI's
        logprobs report)."""
        logprobs = logits.float().log_softmax(-1)
        return sample(logits, [r.params for r in rows], [r.generator for r in rows], logprobs), logprobs

    def _report(self, rows: list[Row], nxt: torch.Tensor, logprobs: torch.Tensor,
                where: torch.Tensor | slice) -> None:
        """Record the chosen tokens of `rows` (in batch slots `where`) and tell their consumers."""
        self.last[where] = nxt
        chosen, chosen_lp = nxt.tolist(), logprobs.gather(1, nxt[:, None])[:, 0].tolist()
        for i, row in enumerate(rows):
            top = {}
            if row.params.logprobs:
                values, ids = logprobs[i].topk(row.params.logprobs)
                top = dict(zip(ids.tolist(), values.tolist()))
            self._advance(row, chosen[i], chosen_lp[i], top)

    def _advance(self, row: Row, token: int, logprob: float, top: dict[int, float]) -> None:
        eos = token == self.tokenizer.eos_id and row.params.stop_at_eos
        if not eos:
            row.pending_ids.append(token)
            row.pending_lp.append(logprob)
            row.pending_top.append(top)
        length = not eos and (len(row.ids) + 1 >= row.params.max_new_tokens
                              or len(row.prompt) + len(row.ids) + 1 >= self.ctx)
        delta = row.stream.push([] if eos else [token], self.tokenizer.decode, final=eos or length)
        finish = "stop" if eos or row.stream.stopped else "length" if length else None
        if finish is None and not delta:
            return  # nothing printable yet: wait for more tokens
        row.finish_reason = finish
        row.emit(Event(delta, row.pending_ids, row.pending_lp, row.pending_top, finish, len(row.ids)))
        row.pending_ids, row.pending_lp, row.pending_top = [], [], []
