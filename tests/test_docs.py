"""The documentation's shell examples: every `tinystories ...` line parses with today's CLI, and
the blocks marked ```bash test run as written in an empty folder."""

from __future__ import annotations

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
BLOCK = re.compile(r"```bash( test)?\n(.*?)```", re.DOTALL)


def blocks() -> list[tuple[Path, bool, str]]:
    return [(path, bool(m.group(1)), m.group(2)) for path in DOCS for m in BLOCK.finditer(path.read_text())]


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


@pytest.mark.parametrize("script", [s for _, tested, s in blocks() if tested])
def test_tested_blocks_run_as_written(script: str, tmp_path: Path) -> None:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    p = subprocess.run(["bash", "-e", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=600, check=False)
    assert p.returncode == 0, p.stderr[-3000:]
