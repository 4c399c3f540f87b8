"""Build and install llama-cpp-python for this CPU without llama.cpp's AMX path, then check it.

llama.cpp's AMX int8 matrix multiply (on Intel Xeons since Sapphire Rapids) segfaults while
evaluating a prompt of a q8_0 file at the default batch size (ggml-org/llama.cpp#20824, closed
without a fix). A default source build turns it on wherever the CPU has AMX, because
`GGML_NATIVE` compiles for the build machine (`-march=native`) and ignores `GGML_AMX_*`.

This keeps `GGML_NATIVE` (every other extension this CPU has: AVX2 on a Zen 3, AVX-512 on a
Zen 4 or a Xeon) and removes only AMX: `-U__AMX_INT8__` and its siblings in CFLAGS/CXXFLAGS
undefine the compiler's feature macros that ggml's AMX code is compiled under, whatever
`-march` says. It then asks the installed library what it was built with
(`llama_print_system_info`, in a child process) and exits 1 if that is not what was asked for:
AMX on, or native off on a CPU with AVX2.

Built wheels are kept per CPU and flags in ~/.cache/tinystories/llama-cpp, so a second run
installs in seconds (pip's own wheel cache ignores CMAKE_ARGS, so it is bypassed).

    pip install -e .                              # first: this reads the CPU with tinystories.utils
    python scripts/install_llama_cpp.py           # build (about 10 minutes on 2 cores), install, check
    python scripts/install_llama_cpp.py --check   # only check what is installed
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
from pathlib import Path

from tinystories.utils import cpu_model_and_flags

VERSION = "0.3.36"
CMAKE_ARGS = "-DGGML_NATIVE=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
NO_AMX = "-U__AMX_TILE__ -U__AMX_INT8__ -U__AMX_BF16__"
CACHE = Path.home() / ".cache" / "tinystories" / "llama-cpp"


def build_env(env: dict[str, str]) -> dict[str, str]:
    """`env` with the build's CMake arguments and the AMX macros undefined, appended to what the
    caller already sets."""
    out = dict(env)
    out["CMAKE_ARGS"] = f"{env.get('CMAKE_ARGS', '')} {CMAKE_ARGS}".strip()
    for name in ("CFLAGS", "CXXFLAGS"):
        out[name] = f"{env.get(name, '')} {NO_AMX}".strip()
    return out


def problems(system_info: str, flags: set[str]) -> list[str]:
    """What differs between a build's `llama_print_system_info()` and what this script asks for
    on a CPU with `flags`: no AMX, and native code (AVX2, AVX-512) where the CPU has it."""
    # e.g. "CPU : SSE3 = 1 | AVX = 1 | AVX2 = 1 | ... | AMX_INT8 = 1 | OPENMP = 1 | REPACK = 1 |"
    found = {part.split("=")[0].split(":")[-1].strip() for part in system_info.split("|")
             if part.strip().endswith("= 1")}
    wrong = [f"{name} is on; it was asked off" for name in sorted(found) if name.startswith("AMX")]
    for flag, name in (("avx2", "AVX2"), ("avx512f", "AVX512")):
        if flag in flags and name not in found:
            wrong.append(f"{name} is off on a CPU that has it (GGML_NATIVE did not take)")
    return wrong


def system_info() -> str:
    """The installed llama.cpp's build features, read in a child process (a crash there is its own)."""
    p = subprocess.run([sys.executable, "-c", "import llama_cpp; print(llama_cpp.llama_print_system_info().decode())"],
                       capture_output=True, text=True, check=False)
    if p.returncode != 0:
        raise SystemExit(f"error: llama_cpp does not import (exit {p.returncode}): {p.stderr.strip()[-500:]}")
    return p.stdout.strip()


def wheel_dir(flags: set[str]) -> Path:
    """Where this CPU's wheel of these flags is kept: native code runs only on the CPU it was built for."""
    key = hashlib.sha256(f"{VERSION} {CMAKE_ARGS} {NO_AMX} {sorted(flags)}".encode()).hexdigest()[:16]
    return CACHE / f"{VERSION}-{key}"


def install(flags: set[str]) -> None:
    folder = wheel_dir(flags)
    wheels = sorted(folder.glob("llama_cpp_python-*.whl"))
    if not wheels:
        part = folder.with_name(folder.name + ".part")
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-cache-dir",
                        "--no-binary", "llama-cpp-python", f"llama-cpp-python=={VERSION}", "-w", str(part)],
                       env=build_env(dict(os.environ)), check=True)
        part.replace(folder)  # whole or not at all: an interrupted build leaves only the .part folder
        wheels = sorted(folder.glob("llama_cpp_python-*.whl"))
    pip = [sys.executable, "-m", "pip", "install", "-q"]
    subprocess.run([*pip, str(wheels[-1])], check=True)  # with its dependencies, from the index
    # and over any other build of the same version (pip would call that one satisfied):
    subprocess.run([*pip, "--force-reinstall", "--no-deps", str(wheels[-1])], check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only check the installed build")
    args = parser.parse_args(argv)
    flags = cpu_model_and_flags()[1]
    if not args.check:
        install(flags)
    info = system_info()
    wrong = problems(info, flags)
    if wrong:
        print(f"error: llama.cpp was not built as asked: {'; '.join(wrong)} (system info: {info})", file=sys.stderr)
        return 1
    print(f"llama.cpp {VERSION}, built without AMX: {info}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
