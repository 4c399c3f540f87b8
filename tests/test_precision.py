"""bfloat16 training on a CPU: `dtype=bfloat16` trains, and `dtype: auto` measures before it picks."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from tinystories.data.prepare import PrepareConfig, prepare
from tinystories.model.gpt import GPT, GPTConfig
from tinystories.train import precision
from tinystories.train.config import build_train_config
from tinystories.train.trainer import LAST_DIR, STATE_NAME, Trainer

TINY = ["model.n_layer=1", "model.d_model=32", "model.n_head=2", "model.context_length=64",
        "model.vocab_size=512", "optim.warmup_steps=2"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tokens")
    prepare(PrepareConfig(out_dir=str(out), vocab_size=512), progress=False)
    return out


def config(data_dir: Path, out: Path, dtype: str, steps: int = 8):  # type: ignore[no-untyped-def]
    return build_train_config(None, [*TINY, f"dtype={dtype}"], data_dir=str(data_dir), out_dir=str(out),
                              batch_size=4, max_steps=steps, eval_interval=4, eval_batches=2, log_interval=1,
                              checkpoint_interval=4, progress=False, seed=3)


def train_losses(out: Path) -> list[float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["kind"] == "train"]


def test_bfloat16_trains_on_a_cpu_near_float32(data_dir: Path, tmp_path: Path) -> None:
    """The whole step under bfloat16 autocast (the fused loss included) follows float32's losses."""
    runs = {}
    for dtype in ("float32", "bfloat16"):
        trainer = Trainer(config(data_dir, tmp_path / dtype, dtype))
        assert f"{dtype} (set by dtype)" in trainer.summary()[1]
        trainer.fit()
        runs[dtype] = train_losses(tmp_path / dtype)
    assert len(runs["bfloat16"]) == 8 and all(math.isfinite(x) for x in runs["bfloat16"])
    for a, b in zip(runs["bfloat16"], runs["float32"]):
        assert abs(a - b) < 0.01 * b, (runs["bfloat16"], runs["float32"])


@pytest.fixture
def fresh_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This machine's measured choices in an empty folder, on a CPU that reports native bf16
    (whatever this one is): the probe runs."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(precision, "cpu_model_and_flags", lambda: ("AMD EPYC", {"avx2", "avx512f", "avx512_bf16"}))
    return precision.cache_file()


def test_the_probe_leaves_no_trace(fresh_cache: Path) -> None:
    """Timing both dtypes changes neither the random stream a run draws from nor its gradients."""
    model = GPT(GPTConfig(vocab_size=97, context_length=32, n_layer=1, n_head=2, d_model=32, dropout=0.1)).train()
    before = torch.get_rng_state()
    dtype, why = precision.probe_cpu_dtype(model)
    assert torch.equal(torch.get_rng_state(), before)
    assert all(p.grad is None for p in model.parameters())
    assert dtype in (torch.float32, torch.bfloat16) and "bf16" in why and "fp32" in why


@pytest.mark.parametrize("bf16,expected", [(0.5, torch.bfloat16), (0.95, torch.float32), (3.0, torch.float32)])
def test_bfloat16_only_where_clearly_faster(bf16: float, expected: torch.dtype, fresh_cache: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    model = GPT(GPTConfig(vocab_size=97, context_length=16, n_layer=1, n_head=2, d_model=16))
    monkeypatch.setattr(precision, "step_seconds", lambda _m, _i, dtype: bf16 if dtype == torch.bfloat16 else 1.0)
    assert precision.probe_cpu_dtype(model)[0] == expected


def test_the_first_measure_on_a_machine_is_kept(fresh_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A later process of the same shape takes the kept choice, however the timings would fall now;
    another shape is measured for itself."""
    model = GPT(GPTConfig(vocab_size=97, context_length=16, n_layer=1, n_head=2, d_model=16))
    monkeypatch.setattr(precision, "step_seconds", lambda _m, _i, dtype: 0.5 if dtype == torch.bfloat16 else 1.0)
    assert precision.probe_cpu_dtype(model)[0] == torch.bfloat16 and fresh_cache.exists()
    monkeypatch.setattr(precision, "step_seconds", lambda _m, _i, dtype: 2.0 if dtype == torch.bfloat16 else 1.0)
    dtype, why = precision.probe_cpu_dtype(model)
    assert dtype == torch.bfloat16 and "kept" in why
    other = GPT(GPTConfig(vocab_size=97, context_length=16, n_layer=1, n_head=2, d_model=32))
    assert precision.probe_cpu_dtype(other)[0] == torch.float32
    for damaged in ("[1, 2]", "{not json", '{"x": 3}'):  # measured over, not a crash
        fresh_cache.write_text(damaged)
        assert precision.probe_cpu_dtype(other)[0] == torch.float32


def test_a_resumed_auto_run_keeps_the_dtype_it_started_in(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    Trainer(config(data_dir, out, "auto")).fit(pause_at=4)
    state_file = out / LAST_DIR / STATE_NAME  # (the resume state)
    state = json.loads(state_file.read_text())
    assert state["dtype"] in ("float32", "bfloat16")
    other = "bfloat16" if state["dtype"] == "float32" else "float32"  # as if the start had measured otherwise
    state_file.write_text(json.dumps({**state, "dtype": other}))
    resumed = Trainer(config(data_dir, out, "auto"))
    assert resumed.step == 4 and resumed.dtype == getattr(torch, other)
    assert "started in" in resumed.summary()[1]
    assert Trainer(config(data_dir, out, "float32")).dtype == torch.float32  # a set dtype wins


def test_a_cpu_without_native_bf16_is_not_timed(fresh_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """AVX2 (Zen 3, most laptops) emulates bf16: float32 at once, with no probe to wait for."""
    model = GPT(GPTConfig(vocab_size=97, context_length=16, n_layer=1, n_head=2, d_model=16))
    monkeypatch.setattr(precision, "cpu_model_and_flags", lambda: ("AMD EPYC", {"avx2", "fma"}))
    monkeypatch.setattr(precision, "step_seconds", lambda *_: pytest.fail("timed"))
    dtype, why = precision.probe_cpu_dtype(model)
    assert dtype == torch.float32 and "no native bf16" in why
