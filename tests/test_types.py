"""The package type-checks: `mypy` (configured in pyproject.toml's [tool.mypy]) reports no error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_mypy_passes() -> None:
    pytest.importorskip("mypy", reason="needs mypy: pip install -e '.[dev]'")
    # Run from the repository root so mypy reads [tool.mypy] (files = src/tinystories) and keeps its
    # cache in ./.mypy_cache (git-ignored): about 25 s cold on 2 cores (AMD EPYC, AVX2), under a
    # second warm.
    proc = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml")],
                          check=False, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"mypy found type errors:\n{proc.stdout}{proc.stderr}"
