"""Steering directions from saved files, applied through the model's own hook points (no extra needed;
SAE-feature directions are tested in test_interpret_sae.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tinystories.errors import TinyStoriesError
from tinystories.interpret.steering import save_direction, steered, steering_direction
from tinystories.model.checkpoint import load_model


def test_direction_files_round_trip(tmp_path: Path) -> None:
    v = torch.randn(32, generator=torch.Generator().manual_seed(0)) * 3
    save_direction(tmp_path / "d.pt", "blocks.1.resid_post", v)
    hook, got = steering_direction(str(tmp_path / "d.pt"))
    assert hook == "blocks.1.hook_resid_post"
    torch.testing.assert_close(got, v)  # raw, as saved
    np.save(tmp_path / "d.npy", v.numpy())
    assert steering_direction(f"{tmp_path / 'd.npy'}@blocks.0.mlp.hook_post")[0] == "blocks.0.mlp.hook_post"
    assert steering_direction(f"{tmp_path / 'd.pt'}@embed")[0] == "hook_embed"  # @HOOK overrides the file's


@pytest.mark.parametrize(("spec", "message"), [
    ("{tmp}/d.npy", "names no hook point"),
    ("{tmp}/d.npy@blocks.1.hook_q", "hook 'blocks.1.hook_q'"),
    ("{tmp}/missing.pt", "no such file or SAE folder"),
    ("{tmp}/m.npy@blocks.0.resid_post", "one finite vector"),
    ("{tmp}/bad.pt", "not a direction file"),
])
def test_bad_directions_are_one_line_errors(tmp_path: Path, spec: str, message: str) -> None:
    np.save(tmp_path / "d.npy", np.ones(32, dtype=np.float32))
    np.save(tmp_path / "m.npy", np.ones((2, 32), dtype=np.float32))
    (tmp_path / "bad.pt").write_bytes(b"not a pickle")
    with pytest.raises((TinyStoriesError, KeyError), match=message):
        steering_direction(spec.format(tmp=tmp_path))


def test_steering_moves_the_next_token_as_expected(tiny_model_dir: Path) -> None:
    model = load_model(tiny_model_dir).model
    idx = torch.tensor([[0, 5, 9, 17, 33, 2]])
    token = 42
    direction = model.lm_head.weight[token].detach()
    with torch.no_grad():
        clean = model(idx)[0]
        # After the final norm the logits are linear: adding alpha * v there adds alpha * (W_U @ v).
        with steered(model, [("final", direction, 0.5)]):
            moved = model(idx)[0]
        torch.testing.assert_close(moved - clean, (0.5 * model.lm_head.weight @ direction).expand_as(clean),
                                   atol=1e-4, rtol=1e-4)
        # In the residual stream (through the final norm): the token's probability rises, or falls for -alpha.
        logp = {a: torch.log_softmax(_steered(model, idx, direction, a), -1)[..., token].mean()
                for a in (-8.0, 0.0, 8.0)}
    assert logp[-8.0] < logp[0.0] < logp[8.0]
    with pytest.raises(TinyStoriesError, match="32 wide"), steered(model, [("blocks.1.resid_post", torch.ones(7), 1)]):
        pass
    with pytest.raises(TinyStoriesError, match="L in 0..1"), steered(model, [("blocks.5.resid_post", direction, 1)]):
        pass


def _steered(model, idx: torch.Tensor, direction: torch.Tensor, alpha: float) -> torch.Tensor:
    with steered(model, [("blocks.1.hook_resid_post", direction / direction.norm(), alpha)]):
        return model(idx)[0]
