"""The playground's attention view: ``POST /v1/internal/attention``, an extension of the server.

Given a prompt (and optionally the ids of tokens generated after it), answers every
layer's and head's attention from one token to all tokens before it, recorded through the
model's own hook points (`interpret.hooks`), so the picture is what the model computes.
Plugged in with ``create_app(..., extensions=[attention_api.install])``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import torch
from fastapi import FastAPI, Request

from tinystories.infer.openai_api import ApiError, field
from tinystories.infer.server import body_of, model_of
from tinystories.interpret.hooks import pattern_names, run_with_cache
from tinystories.model.checkpoint import LoadedModel


def attention_row(loaded: LoadedModel, ids: list[int], pos: int) -> list[list[list[float]]]:
    """Attention of token `pos` over tokens 0..pos, per layer and head: [layer][head][pos+1]."""
    model = loaded.model
    idx = torch.tensor([ids[:pos + 1]], device=model.tok_emb.weight.device)
    with torch.inference_mode():
        _, cache = run_with_cache(model, idx, names=pattern_names(model))
    return cache.stack("attn")[:, 0, :, pos, :].float().cpu().tolist()


def install(app: FastAPI) -> None:
    @app.post("/v1/internal/attention")
    async def attention(request: Request) -> dict[str, Any]:
        body = await body_of(request)
        s = model_of(app, body)
        prompt = body.get("prompt", "")
        extra = body.get("completion_token_ids") or []
        vocab = s.loaded.model.cfg.vocab_size
        if not isinstance(prompt, str) or not isinstance(extra, list) or \
                not all(isinstance(i, int) and 0 <= i < vocab for i in extra):
            raise ApiError(400, "needs 'prompt' (string) and optional 'completion_token_ids' (token ids)")
        ids = [*s.loaded.tokenizer.encode_story(prompt), *extra]
        ctx = s.loaded.model.cfg.context_length
        if len(ids) > ctx:
            raise ApiError(400, f"{len(ids)} tokens exceed the model's context of {ctx}", "prompt",
                           "context_length_exceeded")
        pos = field(body, "position", int, len(ids) - 1, 0, len(ids) - 1)
        weights = await asyncio.to_thread(attention_row, s.loaded, ids, pos)
        return {"tokens": s.loaded.tokenizer.token_strings(ids), "token_ids": ids, "position": pos,
                "n_layer": len(weights), "n_head": len(weights[0]), "attention": weights}
