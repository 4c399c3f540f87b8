"""Muon's Newton-Schulz dtype: our fp32 path equals torch's Muon, and the probe picks fp32 where bf16 is slow."""

from pathlib import Path

import pytest
import torch
from torch.optim._muon import _zeropower_via_newtonschulz

from tinystories.train.muon import NS_COEFFICIENTS, Muon, faster_dtype, newton_schulz, ns_dtype_for

SHAPES = [(48, 96), (96, 48), (64, 64)]  # wide, tall (transposed inside), square


@pytest.mark.parametrize("shape", SHAPES)
def test_newton_schulz_in_bf16_is_torchs(shape: tuple[int, int]) -> None:
    grad = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    ours = newton_schulz(grad, torch.bfloat16)
    theirs = _zeropower_via_newtonschulz(grad, NS_COEFFICIENTS, 5, 1e-7)
    assert ours.dtype == theirs.dtype == torch.bfloat16
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("shape", SHAPES)
def test_newton_schulz_in_fp32_is_closer_to_exact_than_bf16(shape: tuple[int, int]) -> None:
    grad = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    exact = newton_schulz(grad.double(), torch.float64)
    err32 = (newton_schulz(grad, torch.float32).double() - exact).abs().max()
    err16 = (newton_schulz(grad, torch.bfloat16).double() - exact).abs().max()
    assert err32 < 1e-4 < err16


def _train(make_opt, steps: int = 4) -> tuple[list[torch.Tensor], torch.optim.Optimizer]:
    gen = torch.Generator().manual_seed(2)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen) * 0.1) for s in SHAPES]
    opt = make_opt(params)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)
        opt.step()
    return [p.detach().clone() for p in params], opt


KW = {"lr": 0.02, "momentum": 0.95, "weight_decay": 0.01, "nesterov": True, "adjust_lr_fn": "match_rms_adamw"}


def test_bf16_muon_is_torchs_muon() -> None:
    ours, _ = _train(lambda ps: Muon(ps, ns_dtype=torch.bfloat16, **KW))
    theirs, _ = _train(lambda ps: torch.optim.Muon(ps, **KW))
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)


def test_fp32_muon_gives_torchs_update_to_bf16_rounding() -> None:
    start, _ = _train(lambda ps: Muon(ps, **KW), steps=0)
    ours, opt = _train(lambda ps: Muon(ps, ns_dtype=torch.float32, **KW))
    theirs, ref = _train(lambda ps: torch.optim.Muon(ps, **KW))
    for s, a, b in zip(start, ours, theirs):
        step_ours, step_theirs = a - s, b - s
        # bf16 keeps 8 bits of mantissa: the updates agree to about 1% of their size, never exactly.
        assert (step_ours - step_theirs).norm() / step_theirs.norm() < 0.02
        assert not torch.equal(a, b)
    # The state is torch's (a momentum buffer per matrix): checkpoints move between the two paths.
    ref_state, our_state = ref.state_dict()["state"], opt.state_dict()["state"]
    assert ref_state.keys() == our_state.keys()
    for k in ref_state:
        assert ref_state[k].keys() == our_state[k].keys() == {"momentum_buffer"}
        assert torch.equal(ref_state[k]["momentum_buffer"], our_state[k]["momentum_buffer"])


def test_probe_picks_the_faster_dtype_and_fp32_on_a_tie() -> None:
    assert faster_dtype(bf16_seconds=0.090, fp32_seconds=0.003) == torch.float32  # a Zen 3 EPYC
    assert faster_dtype(bf16_seconds=0.001, fp32_seconds=0.002) == torch.bfloat16  # native bf16
    assert faster_dtype(bf16_seconds=0.002, fp32_seconds=0.002) == torch.float32


def _native_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True
    return any(f in flags.split() for f in ("avx512_bf16", "amx_bf16"))


def test_probe_on_this_machine() -> None:
    dtype, why = ns_dtype_for("cpu", torch.get_num_threads())
    assert "measured on this CPU" in why and "ms" in why
    if not _native_bf16():  # a CPU that emulates bf16 (AVX2 only) must get fp32
        assert dtype == torch.float32, why
    assert ns_dtype_for("cuda", 1)[0] == torch.bfloat16  # GPUs keep torch's own path


def _steps(params: list[torch.nn.Parameter], opt: torch.optim.Optimizer, steps: int = 3) -> torch.Tensor:
    """`params` (row blocks of one [48, 24] matrix) after `steps` of the same gradients; stacked."""
    gen = torch.Generator().manual_seed(3)
    for _ in range(steps):
        grad = torch.randn(48, 24, generator=gen)
        for p, g in zip(params, grad.chunk(len(params))):
            p.grad = g.clone()
        opt.step()
    return torch.cat([p.detach() for p in params])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_blocks_are_orthogonalised_as_separate_matrices(dtype: torch.dtype) -> None:
    """`blocks`: a [3r, c] matrix steps exactly as its three [r, c] row blocks would,
    each a parameter of its own (under torch's Muon, for bf16): the fused q, k, v projection."""
    start = torch.randn(48, 24, generator=torch.Generator().manual_seed(4)) * 0.1
    fused, whole = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    apart = [torch.nn.Parameter(b.clone()) for b in start.chunk(3)]
    split = _steps([fused], Muon([fused], ns_dtype=dtype, blocks={fused: 3}, **KW))
    separate = _steps(apart, torch.optim.Muon(apart, **KW) if dtype == torch.bfloat16
                      else Muon(apart, ns_dtype=dtype, **KW))
    assert torch.equal(split, separate)
    assert not torch.equal(split, _steps([whole], Muon([whole], ns_dtype=dtype, **KW)))  # one block differs
