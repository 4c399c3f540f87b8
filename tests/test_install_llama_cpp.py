"""scripts/install_llama_cpp.py: llama.cpp built for this CPU less AMX, and checked after."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path
from types import ModuleType

import pytest


def script() -> ModuleType:
    path = Path(__file__).parents[1] / "scripts" / "install_llama_cpp.py"
    spec = importlib.util.spec_from_file_location("install_llama_cpp", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


XEON = "CPU : SSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | AVX512 = 1 | AVX512_VNNI = 1 | AMX_INT8 = 1 | " \
       "OPENMP = 1 | REPACK = 1 |"


def test_the_build_check_names_what_differs() -> None:
    s = script()
    xeon = {"avx2", "avx512f", "amx_int8", "amx_tile"}
    assert s.problems(XEON, xeon) == ["AMX_INT8 is on; it was asked off"]
    assert s.problems(XEON.replace("AMX_INT8 = 1 | ", ""), xeon) == []
    generic = "CPU : SSE3 = 1 | SSSE3 = 1 | OPENMP = 1 |"  # GGML_NATIVE lost: no AVX2 on a Zen 3
    assert s.problems(generic, {"avx2"}) == ["AVX2 is off on a CPU that has it (GGML_NATIVE did not take)"]
    assert s.problems(generic, set()) == []


def test_the_build_keeps_what_the_caller_set() -> None:
    env = script().build_env({"CFLAGS": "-O3", "CMAKE_ARGS": "-DGGML_OPENMP=OFF", "PATH": "/bin"})
    assert env["CFLAGS"] == "-O3 -U__AMX_TILE__ -U__AMX_INT8__ -U__AMX_BF16__"
    assert env["CXXFLAGS"] == "-U__AMX_TILE__ -U__AMX_INT8__ -U__AMX_BF16__"
    assert env["CMAKE_ARGS"].startswith("-DGGML_OPENMP=OFF -DGGML_NATIVE=ON") and env["PATH"] == "/bin"


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc (apt-get install gcc)")
def test_native_code_for_an_amx_xeon_compiles_without_amx(tmp_path: Path) -> None:
    """What `-march=native` means on a Sapphire Rapids Xeon, with the script's flags: ggml's AMX
    code (compiled under `__AMX_INT8__`) is left out; AVX-512 VNNI, which its other kernels
    use, stays. Checked with the compiler here, on any CPU."""
    s = script()

    def macros(*flags: str) -> set[str]:
        p = subprocess.run(["gcc", "-march=sapphirerapids", *flags, "-dM", "-E", "-"], input="", text=True,
                           capture_output=True, check=False)
        if p.returncode != 0:
            pytest.skip(f"this gcc does not know -march=sapphirerapids: {p.stderr.strip()[:200]}")
        return {line.split()[1] for line in p.stdout.splitlines()}

    assert {"__AMX_INT8__", "__AMX_TILE__", "__AVX512VNNI__"} <= macros()
    without = macros(*s.build_env({})["CFLAGS"].split())
    assert not {m for m in without if m.startswith("__AMX")} and "__AVX512VNNI__" in without
