"""What every generation path shares, and the reference they are checked against.

`row_params` (one `SamplingParams` per row) and `left_pad` (prompts as one batch) serve the
engine (`infer/engine.py`, the one generation loop). `generate_reference` writes a story the
slow, obvious way (no cache, no batch, one row at a time) with the same sampler: the tests
check that the engine writes exactly its tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tinystories.errors import PromptError
from tinystories.infer.params import SamplingParams
from tinystories.infer.sampler import new_generator, sample, seen_tokens
from tinystories.model.gpt import GPT


def row_params(params: SamplingParams | Sequence[SamplingParams], rows: int) -> list[SamplingParams]:
    """One params per row: a shared `params` gives row i seed + i."""
    if isinstance(params, SamplingParams):
        return [params.for_row(i) for i in range(rows)]
    if len(params) != rows:
        raise ValueError(f"{len(params)} sampling params for {rows} prompts")
    return list(params)


def left_pad(prompts: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts (each of one token or more: `Engine.submit` checks) as one left-padded [B, T] batch,
    and each row's amount of padding."""
    width = max(len(p) for p in prompts)
    idx = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    for row, p in enumerate(prompts):
        idx[row, width - len(p):] = torch.tensor(p, dtype=torch.long)
    pad = torch.tensor([width - len(p) for p in prompts], dtype=torch.long)
    return idx.to(device), pad.to(device)


@torch.inference_mode()
def generate_reference(model: GPT, prompts: list[list[int]], params: SamplingParams | Sequence[SamplingParams],
                       eos_id: int) -> list[list[int]]:
    """New tokens of each prompt, the obvious way: one row at a time, the whole sequence through
    `forward` at every step (no cache, no batch), the rows' tokens chosen by the one sampler.

    The engine must write exactly these tokens (tests/test_sampling.py). A row stops at EOS,
    after `max_new_tokens`, or when its prompt and new tokens fill the context.
    """
    ctx = model.cfg.context_length
    out = []
    for prompt, p in zip(prompts, row_params(params, len(prompts))):
        if not prompt or len(prompt) > ctx:
            raise PromptError(f"a prompt needs 1 to {ctx} tokens, not {len(prompt)}")
        ids, new, generator = list(prompt), list[int](), new_generator(p)
        while len(new) < p.max_new_tokens:
            logits, _ = model(torch.tensor([ids], device=model.tok_emb.weight.device))
            seen = [seen_tokens(ids, eos_id)] if p.penalized else []
            token = int(sample(logits[:, -1], [p], [generator], seen=seen)[0])
            if token == eos_id and p.stop_at_eos:
                break
            new.append(token)
            ids.append(token)
            if len(ids) >= ctx:
                break
        out.append(new)
    return out
