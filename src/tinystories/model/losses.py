"""Losses: cross-entropy fused with the output projection, and bits per byte.

The fused loss is computed in chunks of tokens.

For tiny models the vocabulary projection dominates a training step, and on the CPU
PyTorch's log-softmax backward over the full [tokens, vocab] logits is slow and memory
bound. This computes loss *and* gradients chunk by chunk in the forward pass (softmax
minus one-hot, then two matmuls), never holding all logits. `GPT.forward` with targets
is the plain reference; tests check that both give the same loss and gradients.
"""

from __future__ import annotations

import math
from typing import Any

import torch


def bits_per_byte(loss_nats_per_token: float, tokens_per_byte: float) -> float:
    """A mean cross-entropy (nats per token) in bits per UTF-8 byte of text: comparable across
    tokenizers of any vocabulary (`bpb = loss * tokens / bytes / ln 2`)."""
    return loss_nats_per_token * tokens_per_byte / math.log(2)


class LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                chunk: int, dtype: torch.dtype) -> torch.Tensor:
        # The three matmuls take `dtype` operands (bfloat16 under autocast); the softmax, the
        # loss and both gradients' sums stay in float32, as autocast's plain path keeps them.
        low = dtype != torch.float32
        w = weight.to(dtype)
        keep = (targets != -1).float()
        n_valid = keep.sum().clamp(min=1)
        safe_targets = targets.clamp(min=0)
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros_like(weight, dtype=torch.float32)
        total = hidden.new_zeros((), dtype=torch.float32)
        for start in range(0, hidden.shape[0], chunk):
            end = min(start + chunk, hidden.shape[0])
            h, t, k = hidden[start:end], safe_targets[start:end], keep[start:end, None]
            logits = (h.to(dtype) @ w.T).float()
            target_logits = logits.gather(1, t[:, None])
            maxes = logits.amax(-1, keepdim=True)
            exps = logits.sub_(maxes).exp_()  # softmax numerators, in place: 2 passes over [chunk, vocab]
            sums = exps.sum(-1, keepdim=True)
            total += ((maxes + sums.log() - target_logits) * k).sum()
            # d(sum of losses)/d(logits) = exps / sums - one_hot on kept rows. The row scaling and
            # the one-hot part are folded into the small [chunk, d] side of the matmuls, so the
            # big matrix is never touched again.
            scale = k / sums
            hs = h.float() * scale
            if low:
                e = exps.to(dtype)
                grad_hidden[start:end] = (e @ w).float() * scale - weight[t].float() * k
                grad_weight += (e.T @ hs.to(dtype)).float()
            else:
                grad_hidden[start:end] = (exps @ weight) * scale - weight[t] * k
                grad_weight.addmm_(exps.T, hs)
            grad_weight.index_add_(0, t, h.float() * -k)
        ctx.save_for_backward(grad_hidden, grad_weight.to(weight.dtype), n_valid)
        return total / n_valid

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        grad_hidden, grad_weight, n_valid = ctx.saved_tensors
        scale = grad_output / n_valid
        return grad_hidden * scale.to(grad_hidden.dtype), grad_weight * scale, None, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         chunk: int | None = None) -> torch.Tensor:
    """Mean cross-entropy of `hidden @ weight.T` against `targets` (-1 = ignore).

    Under `torch.autocast("cpu", torch.bfloat16)` the matmuls run in bfloat16 and everything
    they feed in float32; otherwise in `hidden`'s dtype. `chunk` tokens at a time; by default
    as many as keep a chunk's logits near 16 MB, which stay in a server CPU's L3 cache between
    the three matmuls and the exp pass (`bench/bench_train_step.py --kernels`).
    """
    chunk = chunk or max(256, 2**22 // weight.shape[0])
    dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else hidden.dtype
    with torch.autocast("cpu", enabled=False):
        return LinearCrossEntropy.apply(hidden.reshape(-1, hidden.shape[-1]), weight, targets.reshape(-1),
                                        chunk, dtype)
