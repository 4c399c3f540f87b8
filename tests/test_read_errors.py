"""Every YAML/JSON file the project reads answers a mistake in the same words:
``cannot read {what} {path}: not valid JSON|YAML: {problem} (line L, column C)``."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tinystories.config import load_file, read_structured
from tinystories.data.beginnings import load_beginnings
from tinystories.data.corpus import iter_raw_stories
from tinystories.data.pretokenize import load_tokens
from tinystories.data.vocabulary import load_vocabulary
from tinystories.errors import TinyStoriesError
from tinystories.eval.tasks.instruct import load_instructions
from tinystories.model.checkpoint import read_config_raw

BAD_JSON, BAD_YAML = '{"a": 1,\n  oops}\n', "a: [unclosed\nb: 2\n"

READERS: dict[str, tuple[str, str, Callable[[Path], Any]]] = {  # what, file name, reader
    "config file": ("config file", "c.yaml", load_file),
    "config file (json)": ("config file", "c.json", load_file),
    "prompt file": ("prompt file", "p.yaml", load_beginnings),
    "vocabulary file": ("vocabulary file", "v.json", load_vocabulary),
    "instructions": ("instructions", "i.json", load_instructions),
    "corpus": ("corpus", "c.json", lambda p: list(iter_raw_stories(str(p)))),
    "model config": ("model config", "config.json", lambda p: read_config_raw(p.parent)),
    "token file description": ("token file description", "train.json",
                               lambda p: (p.with_suffix(".bin").write_bytes(b""), load_tokens(p.with_suffix(".bin")))),
}


@pytest.mark.parametrize("case", READERS)
def test_every_reader_words_a_syntax_error_the_same(case: str, tmp_path: Path) -> None:
    what, name, reader = READERS[case]
    path = tmp_path / name
    path.write_text(BAD_JSON if name.endswith(".json") else BAD_YAML)
    kind = "JSON" if name.endswith(".json") else "YAML"
    with pytest.raises(TinyStoriesError) as exc:
        reader(path)
    pattern = rf"cannot read {what} {re.escape(str(path))}: not valid {kind}: [^\n]+ \(line 2, column \d+\)"
    assert re.fullmatch(pattern, str(exc.value)), str(exc.value)


def test_unreadable_files(tmp_path: Path) -> None:
    (tmp_path / "latin1.yaml").write_bytes(b"a: caf\xe9\n")
    with pytest.raises(TinyStoriesError, match=r"^cannot read config file .*latin1.yaml: not valid UTF-8 "
                                               r"\(byte 0xe9 at offset 6\)$"):
        read_structured(tmp_path / "latin1.yaml", "config file")
    with pytest.raises(TinyStoriesError, match=r"^cannot read manifest .*nothing.json: no such file$"):
        read_structured(tmp_path / "nothing.json", "manifest")
    with pytest.raises(TinyStoriesError, match=r"^cannot read manifest .*: it is a folder, not a file$"):
        read_structured(tmp_path, "manifest", fmt="json")
