"""The command line as a user meets it: real processes, real files."""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tinystories.cli import build_parser


def tinystories(*args: str, cwd: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    """The CLI in a real process; by default in a scratch folder, so default output folders
    (`reports/...`, `runs/...`) never land in the repository."""
    return subprocess.run([sys.executable, "-m", "tinystories.cli", *args], check=False, capture_output=True, text=True,
                          timeout=timeout, cwd=cwd or tempfile.mkdtemp(prefix="tinystories-cli-"),
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def test_every_command_has_help() -> None:
    top = tinystories("--help")
    assert top.returncode == 0
    names = set(subcommands(build_parser([])))
    assert {"corpus", "pretokenize", "generate", "presets", "train", "sample", "serve", "export-hf",
            "import-hf", "eval", "interpret", "demo"} <= names
    for name in names:
        assert name in top.stdout
        text = subcommands(build_parser([name]))[name].format_help()  # the command's own arguments load
        assert text.startswith(f"usage: tinystories {name}") and len(text) > 200, name
        assert "Example" in text, name


@pytest.mark.slow
def test_presets_table_lists_the_zoo() -> None:
    out = tinystories("presets").stdout
    for name in ("1M", "3M", "8M", "28M", "33M", "21M-1L", "15M-llama2c"):
        assert f"\n{name} " in out
    assert "15.19M" in out


@pytest.mark.slow
def test_pipeline_from_the_command_line(tmp_path: Path) -> None:
    corpus = tmp_path / "stories.jsonl"
    stories = [json.loads(line)["text"] for line in
               (Path(__file__).parents[1] / "src/tinystories/resources/valid_dev.jsonl").open()][:300]
    corpus.write_text("".join(json.dumps({"text": s}) + "\n" for s in stories))
    p = tinystories("corpus", str(corpus), "--out", str(tmp_path / "clean.jsonl"))
    assert p.returncode == 0 and "300 stories kept of 300 read" in p.stdout

    p = tinystories("pretokenize", "--train", str(corpus), "--valid", "bundled:valid", "--vocab-size", "400",
                    "--out", str(tmp_path / "tok"))
    assert p.returncode == 0, p.stderr
    assert {"train.bin", "valid.bin", "tokenizer.json", "prepare.json"} <= {f.name for f in (tmp_path / "tok").iterdir()}

    p = tinystories("train", "--data", str(tmp_path / "tok"), "--out", str(tmp_path / "run"), "--max-steps", "6",
                    "--batch-size", "4", "--set", "model.n_layer=1", "--set", "model.d_model=32",
                    "--set", "model.vocab_size=400", "--set", "model.context_length=64",
                    "--set", "eval_interval=3", "--set", "eval_batches=2")
    assert p.returncode == 0, p.stderr
    assert "bits/byte" in p.stdout and "the best model (step " in p.stdout

    p = tinystories("sample", str(tmp_path / "run/checkpoint"), "--prompt", "Once upon a time",
                    "--max-new-tokens", "12", "--seed", "1")
    assert p.returncode == 0 and p.stdout.startswith("Once upon a time") and len(p.stdout) > 20
    again = tinystories("sample", str(tmp_path / "run/checkpoint"), "--prompt", "Once upon a time",
                        "--max-new-tokens", "12", "--seed", "1")
    assert again.stdout == p.stdout  # seeded
    p = tinystories("sample", str(tmp_path / "run/checkpoint"), "--prompt", "A", "--prompt", "B", "-n", "2",
                    "--max-new-tokens", "5")
    assert p.returncode == 0 and p.stdout.count("-" * 40) == 4


@pytest.mark.parametrize("args,needle", [
    (["sample", "no/such/model"], "model folder not found: no/such/model"),
    (["train", "--data", "nowhere"], "run `tinystories pretokenize`"),
    (["train", "--set", "optim.lr"], "must look like key=value"),
    (["train", "--preset", "huge"], "unknown model preset 'huge'"),
    (["corpus", "missing.jsonl"], "corpus not found: missing.jsonl"),
    (["demo", "--corpus", "missing.jsonl", "--out", "d"], "corpus not found: missing.jsonl"),
])
@pytest.mark.slow
def test_user_errors_are_one_clear_line(tmp_path: Path, args: list[str], needle: str) -> None:
    p = tinystories(*args, cwd=tmp_path)
    assert p.returncode == 2
    assert p.stderr.startswith("error: ") and needle in p.stderr
    assert "Traceback" not in p.stderr


@pytest.mark.slow
def test_run_folders_and_model_names(tiny_model_dir: Path, tmp_path: Path) -> None:
    """A run folder works wherever a model folder does, and models are named after their runs."""
    from tinystories.infer.server import load_models

    for run in ("demo", "other"):
        shutil.copytree(tiny_model_dir, tmp_path / run / "checkpoint")
    models = load_models([str(tmp_path / "demo"), str(tmp_path / "other" / "checkpoint"), f"mine={tiny_model_dir}"])
    assert list(models) == ["demo", "other", "mine"]
    p = tinystories("sample", str(tmp_path / "demo"), "--prompt", "Once", "--max-new-tokens", "5")
    assert p.returncode == 0 and p.stdout.startswith("Once"), p.stderr
    p = tinystories("export-hf", str(tmp_path / "demo"), str(tmp_path / "hf"))
    assert p.returncode == 0 and "# demo:" in (tmp_path / "hf" / "README.md").read_text()


@pytest.mark.slow
def test_version_and_a_closed_pipe() -> None:
    p = tinystories("--version")
    assert p.returncode == 0 and p.stdout.startswith("tinystories ")
    p = subprocess.run(f"{sys.executable} -m tinystories.cli presets | head -1", shell=True, check=False, capture_output=True,
                       text=True, timeout=60)
    assert p.stdout.startswith("preset") and "Traceback" not in p.stderr and "BrokenPipe" not in p.stderr


@pytest.mark.slow
def test_the_demo_runs_the_whole_pipeline_with_the_recipe(tmp_path: Path) -> None:
    """README's main job, shortened to seconds: data, the default recipe, the exact score, stories."""
    p = tinystories("demo", "--minutes", "0.05", "--out", str(tmp_path / "demo"), "--threads", "1", timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    out = p.stdout + p.stderr
    assert "1 threads" in out and "bits per byte" in out and out.count("\n--- ") == 3
    saved = (tmp_path / "demo" / "config.yaml").read_text()
    assert "optimizer: muon" in saved and "data_order: stories" in saved and "arch: modern" in saved
    # 3 seconds buy a few thousand tokens: the demo measured this machine and took the small-budget batch
    assert "tokens/s at batch 16" in out and "minutes buy about" in out and "batch_size: 8" in saved
    assert "epochs of the 0.52M training tokens" in out  # what the budget buys, in epochs of the data
    assert "best model: step " in out and "validating took" in out  # which model checkpoint/ holds, at what cost


@pytest.mark.slow
@pytest.mark.parametrize("form", ["jsonl", "datasets"])
def test_the_demo_trains_on_any_corpus(form: str, tmp_path: Path) -> None:
    """`demo --corpus` with a JSONL file (another text field) and a `datasets` folder saved with save_to_disk:
    trained on those stories, validated on stories held out of them, scored on those, no network."""
    from tinystories.data.corpus import read_stories

    stories = read_stories("bundled:train")[0][:300]
    if form == "jsonl":
        source = tmp_path / "mine.jsonl"
        source.write_text("".join(json.dumps({"story": s}) + "\n" for s in stories))
        extra = ["--text-field", "story"]
    else:
        import datasets

        source = tmp_path / "mine-ds"
        datasets.Dataset.from_dict({"text": stories}).save_to_disk(str(source))
        extra = []
    out = tmp_path / "demo"
    p = tinystories("demo", "--corpus", str(source), *extra, "--minutes", "0.02", "--no-fit", "--threads", "1",
                    "--out", str(out), timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    text = p.stdout + p.stderr
    assert f"== 1/4 corpus and tokenizer ({source})" in p.stdout
    assert "15 stories (" in text and "held out of train.bin: 5% drawn with seed 1337" in text  # 5% of 300
    assert "== 3/4 validation: 15 stories held out of the corpus, whole, scored exactly" in p.stdout
    assert "best model: step " in p.stdout and out.joinpath("checkpoint", "model.safetensors").exists()
    prepared = json.loads((out / "data" / "prepare.json").read_text())
    assert prepared["corpus"]["train"]["sources"] == [str(source)] and prepared["corpus"]["train"]["kept"] == 300
    assert not (out / "data" / "valid.bin").exists()  # the bundled validation stories were not used
