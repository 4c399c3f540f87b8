"""A sequence: one row of generation, from its prompt to its finish, and what it reports.

The engine's unit of work (nano-vllm's `Sequence`). It owns its `SamplingParams`, its
random generator (so a `seed` gives the same story whatever else is in the batch) and its
`TextStream`; `advance` records one chosen token and decides whether the row is done. A row
ends at the end-of-story token, after `max_new_tokens`, at the context's end (its own prompt
plus its new tokens fill the context), or before a stop string.

A consumer that streams passes `emit`, called with an `Event` whenever new text is final.
One that only wants the ids at the end (offline sampling, evaluation) passes none: the row
then decodes nothing until it finishes, unless it has stop strings to look for.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from tinystories.infer.params import SamplingParams
from tinystories.infer.sampler import new_generator
from tinystories.infer.text_stream import Decode, TextStream


@dataclass
class Event:
    """New text of one row; `finish_reason` is set on the row's last event."""
    text: str
    token_ids: list[int]
    logprobs: list[float]  # log-probability of each new token under the model (temperature 1; 0.0 unless asked)
    top_logprobs: list[dict[int, float]]
    finish_reason: str | None = None
    completion_tokens: int = 0
    error: Exception | None = None  # on the last event of a row that failed ("error"): why


class Sequence:
    """One prompt being continued. `adds`: vectors added at hook points at every step (steering:
    ``{"blocks.1.hook_resid_post": alpha * direction}``); they act on this row only. `logprobs`:
    whether its events carry the model's log-probabilities (else 0.0 and no alternatives; not
    computing them lets a greedy single stream skip most of the output layer, `DecodeStep.argmax`)."""

    def __init__(self, prompt: list[int], params: SamplingParams, emit: Callable[[Event], None] | None = None,
                 job: object = None, adds: Mapping[str, torch.Tensor] | None = None, logprobs: bool = False) -> None:
        self.prompt, self.params, self.emit = prompt, params, emit
        self.logprobs = logprobs or params.logprobs > 0
        self.adds = dict(adds or {})
        self.job = job if job is not None else self  # the request the row belongs to (fair shares)
        self.stream = TextStream(params.stop)
        self.ids = self.stream.ids  # the new tokens
        self.cancelled = False
        self.finish_reason: str | None = None
        self.error: Exception | None = None  # why the row failed (finish_reason "error"); its text stays its own
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

    def end(self, reason: str, error: Exception | None = None) -> None:
        """End the row now (cancelled, failed with `error`, or nothing to write), telling its consumer why."""
        if not self.finished:
            self.finish_reason, self.error = reason, error
            if self.emit is not None:
                self.emit(Event("", [], [], [], reason, len(self.ids), error))

    @property
    def text(self) -> str:
        """The text written so far (up to a stop string); final once the row has finished."""
        return self.stream.sent

    def advance(self, token: int, logprob: float, top: dict[int, float], eos_id: int, context: int,
                decode: Decode) -> None:
        """Record the chosen `token`; finish the row if it is done; tell the consumer what is new."""
        eos = token == eos_id and self.params.stop_at_eos
        length = not eos and (len(self.ids) + 1 >= self.params.max_new_tokens
                              or len(self.prompt) + len(self.ids) + 1 >= context)
        final = eos or length
        if self.emit is None and not self.params.stop:  # nobody reads text before the end
            if not eos:
                self.ids.append(token)
            if final:
                self.stream.push([], decode, final=True)
                self.finish_reason = "stop" if eos else "length"
            return
        if not eos:
            self.pending_ids.append(token)
            self.pending_lp.append(logprob)
            self.pending_top.append(top)
        delta = self.stream.push([] if eos else [token], decode, final=final)
        finish = "stop" if eos or self.stream.stopped else "length" if length else None
        if finish is None and not delta:
            return  # nothing printable yet: wait for more tokens
        self.finish_reason = finish
        if self.emit is not None:
            self.emit(Event(delta, self.pending_ids, self.pending_lp, self.pending_top, finish, len(self.ids)))
        self.pending_ids, self.pending_lp, self.pending_top = [], [], []
