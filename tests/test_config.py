from pathlib import Path

import pytest

from tinystories.config import build
from tinystories.errors import TinyStoriesError
from tinystories.eval.config import SuiteConfig
from tinystories.train.config import build_train_config, dump_config


def test_file_flags_and_overrides_layer_in_order(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("preset: 1M\nbatch_size: 8\noptim:\n  lr: 0.01\nmodel:\n  n_layer: 2\n")
    cfg = build_train_config(path, ["optim.lr=3e-4", "model.dropout=0.1"], batch_size=4)
    assert cfg.batch_size == 4 and cfg.optim.lr == pytest.approx(3e-4)
    assert (cfg.model.n_layer, cfg.model.d_model, cfg.model.n_head, cfg.model.dropout) == (2, 64, 16, 0.1)
    again = tmp_path / "again.yaml"
    again.write_text(dump_config(cfg))
    assert build_train_config(again) == cfg


@pytest.mark.parametrize("text,needle", [
    ("batch_sise: 3\n", r"unknown key\(s\) \['batch_sise'\]"),
    ("optim:\n  learning_rate: 1\n", r"optim: unknown key\(s\) \['learning_rate'\]"),
    ("model:\n  layers: 1\n", r"model: unknown key\(s\) \['layers'\]"),
    ("preset: 99M\n", "unknown model preset '99M'"),
    ("batch_size: many\n", "train.batch_size: expected an integer, got 'many'"),
    ("dtype: float8\n", "is not one of"),
    ("model:\n  d_model: 100\n  n_head: 3\n", "not divisible"),
    ("out_dir: 2024-05-01\n", "train.out_dir: expected a string, got datetime.date"),
])
def test_bad_config_names_the_field(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(TinyStoriesError, match=needle):
        build_train_config(path)


def test_a_file_section_merges_into_the_base(tmp_path: Path) -> None:
    """`eval report` turns the judge off in its base; a file naming only the judge's model keeps it off."""
    path = tmp_path / "suite.yaml"
    path.write_text("judge:\n  model: m\n")
    base = {"judge": {"base_url": ""}}
    cfg = build(SuiteConfig, path, base=base)
    assert (cfg.judge.model, cfg.judge.base_url) == ("m", "")
    assert build(SuiteConfig, path, {"judge.temperature": 0.5}, base=base).judge.base_url == ""
    assert base == {"judge": {"base_url": ""}}  # the caller's base is left as it was


def test_a_train_config_built_from_code_takes_its_preset() -> None:
    from tinystories.model.presets import PRESETS
    from tinystories.train.config import TrainConfig

    assert TrainConfig(preset="8M").model == PRESETS["8M"]
    assert TrainConfig().model == PRESETS["demo"] == build(TrainConfig).model
    with pytest.raises(TinyStoriesError, match="unknown model preset"):
        TrainConfig(preset="9M")


def test_yaml_booleans_mean_the_words_a_choice_is_spelled_with(tmp_path: Path) -> None:
    """YAML reads `on`/`off` as booleans; a choice of "on"/"off" takes them as the words."""
    path = tmp_path / "run.yaml"
    path.write_text("compile: on\n")
    assert build_train_config(path).compile == "on"
    assert build_train_config(None, ["compile=off"]).compile == "off"
    with pytest.raises(TinyStoriesError, match="is not one of"):
        build_train_config(None, ["dtype=true"])  # no word of a boolean among its choices
