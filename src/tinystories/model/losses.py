"""Cross-entropy fused with the output projection, computed in chunks of tokens.

For tiny models the vocabulary projection dominates a training step, and on the CPU
PyTorch's log-softmax backward over the full [tokens, vocab] logits is slow and memory
bound. This computes loss *and* gradients chunk by chunk in the forward pass (softmax
minus one-hot, then two matmuls), never holding all logits. `GPT.forward` with targets
is the plain reference; tests check that both give the same loss and gradients.
"""

from __future__ import annotations

from typing import Any

import torch


class LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                chunk: int) -> torch.Tensor:
        valid = targets != -1
        n_valid = valid.sum().clamp(min=1)
        safe_targets = targets.clamp(min=0)
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros_like(weight)
        total = hidden.new_zeros((), dtype=torch.float32)
        for start in range(0, hidden.shape[0], chunk):
            end = min(start + chunk, hidden.shape[0])
            h, t, keep = hidden[start:end], safe_targets[start:end], valid[start:end]
            logits = h @ weight.T
            lse = torch.logsumexp(logits, dim=-1)
            target_logits = logits.gather(1, t[:, None]).squeeze(1)
            total += ((lse - target_logits) * keep).sum()
            # d(sum of losses)/d(logits) = softmax - one_hot, zero for ignored rows.
            probs = logits.sub_(lse[:, None]).exp_()
            probs[torch.arange(end - start), t] -= 1
            probs *= keep[:, None]
            grad_hidden[start:end] = probs @ weight
            grad_weight.addmm_(probs.T, h)
        ctx.save_for_backward(grad_hidden, grad_weight, n_valid)
        return total / n_valid

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        grad_hidden, grad_weight, n_valid = ctx.saved_tensors
        scale = grad_output / n_valid
        return grad_hidden * scale, grad_weight * scale, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         chunk: int = 1024) -> torch.Tensor:
    """Mean cross-entropy of `hidden @ weight.T` against `targets` (-1 = ignore)."""
    return LinearCrossEntropy.apply(hidden.reshape(-1, hidden.shape[-1]), weight, targets.reshape(-1), chunk)
