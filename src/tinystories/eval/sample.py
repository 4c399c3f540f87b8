"""Completions for evaluation: `n` seeded samples of each prompt, batched."""

from __future__ import annotations

from collections.abc import Sequence

from tqdm import tqdm

from tinystories.infer.offline import generate
from tinystories.infer.params import SamplingParams
from tinystories.model.checkpoint import LoadedModel


def sample_completions(loaded: LoadedModel, texts: Sequence[str], n: int, params: SamplingParams,
                       batch_size: int = 32, progress: bool = True, name: str = "") -> list[list[str]]:
    """`n` samples per text ([text][sample]); row j of the (text, sample) list uses seed + j, and
    its story is the one `tinystories sample` writes for that text, seed and settings (with the
    C decode step a row computes the same in any batch: `infer/runner.py`).

    Each prompt is a story beginning (`encode_story`); a prompt too long for the context keeps
    its last tokens, leaving room for at least half the context (or max_new_tokens) to write.
    """
    tok, model = loaded.tokenizer, loaded.model
    ctx = model.cfg.context_length
    room = ctx - min(params.max_new_tokens, ctx // 2)
    prompts = [ids[-room:] for ids in tok.encode_stories(list(texts))]
    jobs = [(i, k) for i in range(len(texts)) for k in range(n)]
    out = [[""] * n for _ in texts]
    bar = tqdm(total=len(jobs), desc=f"sampling {name or loaded.name}", unit="story", disable=not progress)
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start:start + batch_size]
        rows = [params.for_row(start + j) for j in range(len(chunk))]
        for (i, k), ids in zip(chunk, generate(model, tok, [prompts[i] for i, _ in chunk], rows)):
            out[i][k] = tok.decode(ids)
        bar.update(len(chunk))
    bar.close()
    return out
