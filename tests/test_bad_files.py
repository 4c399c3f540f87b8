"""Every command that reads files, fed broken ones: one `error:` line naming the problem, a
non-zero exit, no traceback; and the decoding policy's replace/skip actually read on."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tinystories.cli import main

BAD_UTF8 = b"Once upon a time.\xff\xfe x"


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def one_error_line(rc: int, err: str, needle: str) -> None:
    assert rc != 0
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: ") and needle in lines[-1], err[-500:]
    assert "Traceback" not in err


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small pretokenized folder (vocab 300) the train cases start from."""
    out = tmp_path_factory.mktemp("tokens")
    assert main(["pretokenize", "--train", "bundled:valid", "--valid", "bundled:valid", "--vocab-size", "300",
                 "--out", str(out)]) == 0
    return out


def corpus_files(tmp: Path) -> dict[str, Path]:
    files = {"txt": tmp / "bad.txt", "jsonl": tmp / "bad.jsonl", "json": tmp / "bad.json"}
    files["txt"].write_bytes(b"A fine story.<|endoftext|>" + BAD_UTF8 + b"<|endoftext|>Another fine one.")
    files["jsonl"].write_bytes(b'{"text": "A fine story."}\n{"text": "' + BAD_UTF8 + b'"}\n{"text": "More."}\n')
    files["json"].write_bytes(b'[{"text": "A fine story."}, {"text": "' + BAD_UTF8 + b'"}, {"text": "More."}]')
    return files


@pytest.mark.parametrize("kind", ["txt", "jsonl", "json"])
def test_invalid_utf8_names_file_and_byte_then_replace_or_skip(kind: str, tmp_path: Path, tiny_model_dir: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    path = corpus_files(tmp_path)[kind]
    offset = path.read_bytes().index(b"\xff")
    for argv in (["corpus", str(path)], ["pretokenize", "--train", str(path), "--valid", "--out", str(tmp_path / "t")],
                 ["eval", "bpb", str(tiny_model_dir), "--data", str(path), "--out", str(tmp_path / "e")],
                 ["interpret", str(tiny_model_dir), "--corpus", str(path), "--out", str(tmp_path / "i")]):
        rc, _, err = run(argv, capsys)
        one_error_line(rc, err, f"invalid UTF-8 at byte {offset}")
        assert str(path) in err and "--encoding-errors" in err
    rc, out, _ = run(["corpus", str(path), "--encoding-errors", "replace", "--out", str(tmp_path / "r.jsonl")], capsys)
    assert rc == 0 and "3 stories kept of 3 read" in out and "1 with invalid UTF-8" in out
    texts = [json.loads(line)["text"] for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert texts[1] == "Once upon a time.\ufffd\ufffd x"
    rc, out, _ = run(["corpus", str(path), "--encoding-errors", "skip"], capsys)
    assert rc == 0 and "2 stories kept of 3 read" in out


def test_lone_surrogate_escapes_in_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "s.jsonl"
    path.write_text('{"text": "fine"}\n{"text": "bad \\ud800 text"}\n')
    one_error_line(*run(["corpus", str(path)], capsys)[::2], "not valid Unicode")
    rc, out, _ = run(["corpus", str(path), "--encoding-errors", "skip"], capsys)
    assert rc == 0 and "1 stories kept of 2 read" in out


CONFIG_CASES = {
    "checkpoint_interval: 0\n": "checkpoint_interval: value must be >= 1, got 0",
    "batch_size: [8, 16]\n": "batch_size: expected an integer",
    "optim: 5\n": "optim: expected a mapping",
    "max_steps: 1e400\n": "max_steps: expected an integer",
    "batch_size: 0\n": "batch_size: value must be >= 1",
    "batch_size: -4\n": "batch_size: value must be >= 1",
    "optim:\n  lr: .nan\n": "optim.lr: must be a finite number",
    "model:\n  n_layer: [4]\n": "n_layer: expected an integer",
    "dropout: 2\n": "unknown key",
    "model:\n  dropout: 1.5\n": "dropout: value must be < 1",
    "[1, 2]\n": "expected a mapping",
    "a: [unclosed\n": "not valid YAML",
}


@pytest.mark.parametrize("text", CONFIG_CASES)
def test_bad_train_config(text: str, tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "c.yaml").write_text(text)
    rc, _, err = run(["train", "--config", str(tmp_path / "c.yaml"), "--data", str(data_dir),
                      "--out", str(tmp_path / "run")], capsys)
    one_error_line(rc, err, CONFIG_CASES[text])
    assert not (tmp_path / "run").exists()


def test_token_ids_beyond_the_vocabulary(tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "tokens"
    shutil.copytree(data_dir, bad)
    tokens = np.fromfile(bad / "train.bin", dtype=np.uint16)
    tokens[1234] = 299 + 50
    tokens.tofile(bad / "train.bin")
    rc, _, err = run(["train", "--data", str(bad), "--out", str(tmp_path / "run"), "--max-steps", "2",
                      "--set", "model.vocab_size=300"], capsys)
    one_error_line(rc, err, "token 1234 has id 349, beyond the model's vocabulary of 300")


MODEL_BREAKERS: dict[str, tuple[Callable[[Path], None], str]] = {
    "list n_layer": (lambda d: _edit_config(d, lambda c: c["model"].update(n_layer=[4])), "n_layer: expected an integer"),
    "corrupt config": (lambda d: (d / "config.json").write_text("{oops"),
                       "not valid JSON: Expecting property name enclosed in double quotes (line 1, column 2)"),
    "model not a mapping": (lambda d: _edit_config(d, lambda c: c.update(model=3)), "expected a mapping"),
    "truncated weights": (lambda d: (d / "model.safetensors").write_bytes(b"\x08\x00"), "not a safetensors file"),
    "no weights": (lambda d: (d / "model.safetensors").unlink(), "weights not found"),
    "bad tokenizer": (lambda d: (d / "tokenizer.json").write_text("[]"), "not a valid tokenizer.json"),
    "a file, not a folder": (lambda d: None, "is a file"),
}


def _edit_config(folder: Path, change: Callable[[dict], object]) -> None:
    config = json.loads((folder / "config.json").read_text())
    change(config)
    (folder / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("case", MODEL_BREAKERS)
@pytest.mark.parametrize("command", ["sample", "export-hf", "interpret", "eval-bpb", "serve"])
def test_broken_model_folders(case: str, command: str, tiny_model_dir: Path, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    breaker, needle = MODEL_BREAKERS[case]
    breaker(model)
    if case == "a file, not a folder":
        model = model / "config.json"
    argv = {"sample": ["sample", str(model), "--max-new-tokens", "2"],
            "export-hf": ["export-hf", str(model), str(tmp_path / "hf")],
            "interpret": ["interpret", str(model), "--out", str(tmp_path / "r")],
            "eval-bpb": ["eval", "bpb", str(model), "--out", str(tmp_path / "e")],
            "serve": ["serve", str(model), "--port", "0"]}[command]
    one_error_line(*run(argv, capsys)[::2], needle)


@pytest.mark.parametrize("argv,write,needle", [
    (["vocab", "--vocabulary", "{f}"], "words: 3\n", "expected a 'words' mapping"),
    (["generate", "--config", "{f}", "--out", "{d}/g"], "teacher:\n  timeout_s: -1\n", "timeout_s: value must be > 0"),
    (["generate", "--config", "{f}", "--out", "{d}/g"], "filters:\n  min_words: 90\n  max_words: 10\n",
     "min_words (90) is above max_words"),
    (["eval", "gpt-eval", "{m}", "--prompts", "{f}", "--judge-base-url", "http://127.0.0.1:9/v1"], "- ok\n- 3\n",
     "item 1 is not a non-empty string"),
    (["eval", "instruct", "{m}", "--instructions", "{f}", "--judge-base-url", "http://127.0.0.1:9/v1"], "{nope",
     "cannot read instructions"),
    (["pretokenize", "--train", "bundled:valid", "--tokenizer", "{f}", "--out", "{d}/t"], "not a tokenizer",
     "not a valid tokenizer.json"),
    (["sample", "{m}", "--config", "{f}"], "sampling:\n  top_p: 0\n", "top_p: value must be > 0"),
    (["serve", "{m}", "--config", "{f}"], "limits:\n  max_batch: 0\n", "max_batch: value must be >= 1"),
])
def test_other_bad_inputs(argv: list[str], write: str, needle: str, tmp_path: Path, tiny_model_dir: Path,
                          capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / ("input.json" if "instructions" in argv else "input.yaml")
    f.write_text(write)
    argv = [a.format(f=f, d=tmp_path, m=tiny_model_dir) for a in argv]
    one_error_line(*run(argv, capsys)[::2], needle)
