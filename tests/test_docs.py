"""The documentation's shell examples: every `tinystories ...` line parses with today's CLI, and
the blocks marked ```bash test run as written in an empty folder (```bash test EXTRA: a block that
needs an optional extra, skipped with the line that installs it where that is missing)."""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tinystories.cli import build_parser

ROOT = Path(__file__).parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"```bash( test(?: (\w+))?)?\n(.*?)```", re.DOTALL)
EXTRAS = {"interp": ("sae_lens", "transformer_lens")}  # an extra's modules, as pyproject.toml installs them


def blocks() -> list[tuple[Path, bool, str]]:
    return [(path, bool(m.group(1)), m.group(3)) for path in DOCS for m in BLOCK.finditer(path.read_text())]


def doc_blocks() -> list[tuple[str | None, str]]:
    """Each tested block's extra (None: the core install's) and script."""
    return [(m.group(2), m.group(3)) for path in DOCS for m in BLOCK.finditer(path.read_text()) if m.group(1)]


def commands(script: str) -> list[list[str]]:
    """The tinystories invocations of a shell block (continuations joined, comments dropped)."""
    out = []
    for line in script.replace("\\\n", " ").splitlines():
        for part in re.split(r"&&|;|\|", line.split(" #")[0]):
            words = shlex.split(part, comments=True)
            if "tinystories.cli" in words:  # python -m / torchrun -m tinystories.cli ...
                words = ["tinystories", *words[words.index("tinystories.cli") + 1:]]
            if words and words[0] == "tinystories":
                out.append(words[1:])
    return out


CASES = [(f"{path.relative_to(ROOT)}: {' '.join(argv)[:60]}", argv) for path, _, s in blocks() for argv in commands(s)]


def test_the_docs_have_examples() -> None:
    assert len(CASES) > 20 and any(tested for _, tested, _ in blocks())


@pytest.mark.parametrize("argv", [argv for _, argv in CASES], ids=[name for name, _ in CASES])
def test_every_documented_command_parses(argv: list[str]) -> None:
    args = build_parser(argv).parse_args(argv)  # argparse exits (fails the test) on an unknown flag
    assert callable(args.func)


def test_every_extra_a_block_names_is_known() -> None:
    assert {extra for extra, _ in doc_blocks() if extra} <= set(EXTRAS)


@pytest.mark.slow
@pytest.mark.parametrize("extra,script", doc_blocks())
def test_tested_blocks_run_as_written(extra: str | None, script: str, tmp_path: Path) -> None:
    missing = [m for m in EXTRAS.get(extra or "", ()) if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"needs the {extra} extra ({', '.join(missing)} missing): pip install -e '.[{extra}]'")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    p = subprocess.run(["bash", "-e", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=600, check=False)
    assert p.returncode == 0, p.stderr[-3000:]
