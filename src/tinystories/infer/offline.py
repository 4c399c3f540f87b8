"""Generation without a server: an unstarted `Engine` run to completion in the caller's thread.

`tinystories sample`, `eval`'s completions, the demo and the trainer's samples call these, so
every story is written by the one loop the server runs too, and the same seed and settings
give the same story on every path (each row draws from its own generator).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch

from tinystories.infer import sequence
from tinystories.infer.engine import Detokenizer, Engine, Event
from tinystories.infer.params import SamplingParams
from tinystories.infer.sampling import row_params
from tinystories.model.gpt import GPT
from tinystories.tokenizer import Tokenizer

Emit = Callable[[int, Event], None]  # (row, event): a row's text as it becomes final


class TokenIds:
    """A detokenizer for a model without a tokenizer (random weights in benchmarks and tests):
    the end-of-story id, and text that is the ids written out."""

    def __init__(self, eos_id: int) -> None:
        self.eos_id = eos_id

    def decode(self, ids: list[int]) -> str:
        return "".join(f"<{i}>" for i in ids)


def run(model: GPT, tokenizer: Detokenizer, prompts: list[list[int]],
        params: SamplingParams | Sequence[SamplingParams], max_batch: int | None = None,
        emit: Emit | None = None, adds: Mapping[str, torch.Tensor] | None = None, logprobs: bool = False
        ) -> list[sequence.Sequence]:
    """Every prompt continued; the finished sequences, in order.

    `params`: one for all (row i gets seed + i) or one per prompt. `max_batch`: rows decoded
    together (default: all). `adds`: vectors added at hook points for every row (steering).
    `logprobs`: `emit`'s events carry the model's log-probabilities (`Sequence`). Raises what
    `Engine.submit` raises for a bad prompt or addition (before any row runs), and a failed row's
    own exception.
    """
    rows = row_params(params, len(prompts))
    engine = Engine(model, tokenizer, max_batch=max_batch or max(1, len(prompts)), start=False)

    def to(i: int) -> Callable[[Event], None] | None:
        if emit is None:
            return None
        return lambda ev: emit(i, ev)

    seqs = [engine.submit(p, r, to(i), adds=adds, logprobs=logprobs) for i, (p, r) in enumerate(zip(prompts, rows))]
    engine.run()
    for s in seqs:
        if s.error is not None:
            raise s.error
    return seqs


def generate(model: GPT, tokenizer: Detokenizer, prompts: list[list[int]],
             params: SamplingParams | Sequence[SamplingParams], max_batch: int | None = None,
             emit: Emit | None = None) -> list[list[int]]:
    """New token ids of each prompt (EOS excluded). A row stops at EOS, `max_new_tokens`, a stop
    string, or when its own prompt and new tokens fill the context."""
    return [s.ids for s in run(model, tokenizer, prompts, params, max_batch, emit)]


def complete(model: GPT, tokenizer: Tokenizer, texts: list[str], params: SamplingParams | Sequence[SamplingParams],
             max_batch: int | None = None, emit: Emit | None = None,
             adds: Mapping[str, torch.Tensor] | None = None) -> list[str]:
    """Text in, continuations out, each ending before its first stop string. An empty text starts
    a story from scratch (after EOS)."""
    return [s.text for s in run(model, tokenizer, tokenizer.encode_stories(texts), params, max_batch, emit, adds)]
