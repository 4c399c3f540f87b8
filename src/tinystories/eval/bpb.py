"""Validation loss in bits per byte: comparable across tokenizers of any vocabulary.

`evaluate_bpb` scores every story exactly: the story is preceded by EOS (the start of a
story, as in training) and the EOS after it is predicted too. A story longer than the
model's context is scored with a sliding window: every token is predicted once, with at
least `context - stride` tokens of history after the first window. Bytes are the story's
UTF-8 bytes plus one for its end, as `tinystories.data.pretokenize` counts them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
from tqdm import tqdm

from tinystories.errors import TinyStoriesError
from tinystories.eval.results import Result
from tinystories.model.gpt import GPT
from tinystories.model.losses import bits_per_byte
from tinystories.tokenizer import Tokenizer


@dataclass(frozen=True)
class BpbResult(Result):
    key: ClassVar[str] = "bpb"
    nll_nats: float  # summed over every predicted token
    tokens: int  # predicted tokens (each story's tokens + its end)
    bytes: int
    stories: int

    @property
    def loss(self) -> float:
        """Mean cross-entropy in nats per token."""
        return self.nll_nats / max(self.tokens, 1)

    @property
    def bpb(self) -> float:
        return bits_per_byte(self.loss, self.tokens / max(self.bytes, 1))

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "loss": self.loss, "bpb": self.bpb}


def story_windows(ids: list[int], context: int, stride: int) -> list[tuple[list[int], int]]:
    """(window tokens, number of targets to skip) covering targets ids[1:] each exactly once.

    A window w predicts w[1:]; the first `skip` of those were scored by an earlier window.
    """
    if len(ids) <= context + 1:
        return [(ids, 0)]
    windows, scored, start = [], 0, 0  # scored = targets ids[1..scored] already done
    while scored < len(ids) - 1:
        start = min(start, len(ids) - 1 - context)
        end = start + context + 1  # window ids[start:end] predicts ids[start+1:end]
        windows.append((ids[start:end], scored - start))
        scored = end - 1
        start += stride
    return windows


@torch.inference_mode()
def evaluate_bpb(model: GPT, tokenizer: Tokenizer, stories: Sequence[str], batch_size: int = 16,
                 stride: int | None = None, progress: bool = True) -> BpbResult:
    """Exact summed NLL of `stories` under `model`, in nats, tokens and bytes (see module doc)."""
    if not stories:
        raise TinyStoriesError("no stories to evaluate")
    context = model.cfg.context_length
    stride = stride or max(1, context // 2)
    if not 0 < stride <= context:
        raise TinyStoriesError(f"stride must be in 1..{context} (the context), got {stride}")
    device = next(model.parameters()).device
    windows = []
    n_bytes = n_tokens = 0
    for story, full in zip(stories, tokenizer.encode_stories(list(stories), end=True)):
        windows.extend(story_windows(full, context, stride))
        n_bytes += len(story.encode("utf-8")) + 1
        n_tokens += len(full) - 1
    windows.sort(key=lambda w: len(w[0]))  # similar lengths together: little padding
    nll = 0.0
    counted = 0
    bar = tqdm(total=len(windows), desc="scoring", unit="window", disable=not progress)
    for i in range(0, len(windows), batch_size):
        batch = windows[i:i + batch_size]
        width = max(len(w) for w, _ in batch) - 1
        idx = torch.full((len(batch), width), tokenizer.eos_id, dtype=torch.long)
        targets = torch.full((len(batch), width), -1, dtype=torch.long)
        for row, (w, skip) in enumerate(batch):
            # right padding: causal attention keeps it out of the real positions
            idx[row, :len(w) - 1] = torch.tensor(w[:-1])
            targets[row, skip:len(w) - 1] = torch.tensor(w[1 + skip:])
        logits, _ = model(idx.to(device))
        logp = torch.log_softmax(logits.double(), dim=-1)
        mask = targets >= 0
        picked = logp.gather(-1, targets.clamp(min=0).to(device)[..., None])[..., 0]
        nll -= float(picked[mask.to(device)].sum())
        counted += int(mask.sum())
        bar.update(len(batch))
    bar.close()
    assert counted == n_tokens, "every target must be scored exactly once"
    return BpbResult(nll, n_tokens, n_bytes, len(stories))
