"""`isolation.in_child`: a native crash fails the one test that met it, named, and the suite goes on."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from pathlib import Path

import pytest

from isolation import in_child


def crash() -> None:
    ctypes.string_at(0)  # reads address 0: SIGSEGV, as a native library's bug would


def answer(x: int) -> dict[str, int]:
    return {"pid": os.getpid(), "twice": 2 * x}


def fail() -> None:
    raise ValueError("bad input, found in the child")


def test_the_child_computes_and_hands_back() -> None:
    got = in_child(answer, 21)
    assert got["twice"] == 42 and got["pid"] != os.getpid()


def test_a_segfault_fails_the_test_and_names_the_signal() -> None:
    with pytest.raises(pytest.fail.Exception, match="crash crashed its child process: SIGSEGV"):
        in_child(crash)


def test_an_exception_in_the_child_is_reported() -> None:
    with pytest.raises(pytest.fail.Exception, match="ValueError: bad input, found in the child"):
        in_child(fail)


@pytest.mark.slow
def test_the_rest_of_the_suite_runs_on(tmp_path: Path) -> None:
    """A suite whose first test's child segfaults: pytest itself lives, reports that one failure
    with its signal, and runs the next test."""
    (tmp_path / "test_suite.py").write_text(
        "from isolation import in_child\n"
        "from test_isolation import crash\n\n"
        "def test_native_code():\n    in_child(crash)\n\n"
        "def test_next():\n    assert True\n")
    tests = Path(__file__).parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tests), os.environ.get("PYTHONPATH", "")])}
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_suite.py"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "SIGSEGV" in p.stdout and "1 failed, 1 passed" in p.stdout, p.stdout
