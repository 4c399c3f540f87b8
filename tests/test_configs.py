"""Every shipped `configs/*.yaml` builds, and trains two steps on a CPU at a shrunk size.

The configs are what users copy first; a field renamed in code must not leave one behind
that fails after an hour of data preparation. The full-size model is built too (its shape is
checked), but trained only shrunk: a 36M-parameter model's steps on a 2-core CPU say nothing
more about the config and take minutes.
"""

from pathlib import Path

import pytest
import torch

from tinystories.data.prepare import PrepareConfig, prepare
from tinystories.model.gpt import GPT
from tinystories.train.config import build_train_config
from tinystories.train.trainer import Trainer

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))
# The config's own recipe (optimizer, schedule, data order, architecture, heads) stays; only
# the sizes shrink so two steps run in seconds (d_model 96 divides into the presets' 4-16 heads).
SHRINK = ["batch_size=2", "grad_accum=1", "model.context_length=64", "model.d_model=96", "model.n_layer=2",
          "model.vocab_size=512", "eval_batches=1", "eval_samples=0", "device=cpu", "progress=false"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tokens")
    prepare(PrepareConfig(out_dir=str(out), vocab_size=512), progress=False)
    return out


def test_there_are_configs() -> None:
    assert len(CONFIGS) >= 3


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_builds_and_trains_two_steps(path: Path, data_dir: Path, tmp_path: Path) -> None:
    full = build_train_config(path)
    assert full.out_dir and full.model.vocab_size >= 512
    with torch.device("meta"):  # the full-size model builds (no memory, no time)
        assert GPT(full.model).num_params() > 1e6
    cfg = build_train_config(path, SHRINK, data_dir=str(data_dir), out_dir=str(tmp_path), max_steps=2,
                             max_minutes=0, eval_interval=2, checkpoint_interval=2)
    assert (cfg.optim, cfg.data_order, cfg.model.arch, cfg.model.n_head) == \
        (full.optim, full.data_order, full.model.arch, full.model.n_head)
    result = Trainer(cfg, resume=False).fit()
    assert 0 < result["val_bpb"] < 20
    assert build_train_config(tmp_path / "config.yaml").optim == full.optim  # saved beside the checkpoint
