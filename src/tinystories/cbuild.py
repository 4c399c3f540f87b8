"""C files built once per machine, with the C compiler that is there.

Two hot loops are written in C, each beside its PyTorch form and pinned to it by the tests: the
model's decode step (`model/decode_step.c`, beside `GPT.forward`) and the sampler's filter and
draw (`infer/sampler.c`). Each is compiled on first use with ``cc -Ofast -march=native -fopenmp``
(as llama2.c's run.c is built) and linked with ``-shared`` into
``$XDG_CACHE_HOME/tinystories/native/`` (or ``~/.cache/...``), under a name that hashes the
source, the compiler and the flags, so a new version or another machine builds its own. OpenMP
comes from the ``libgomp`` PyTorch already loaded, so one thread pool serves all.

Compiled and linked apart because a link with ``-Ofast`` (GCC before 13, even with ``-shared``)
adds ``crtfastmath.o``, whose start-up code sets the CPU to flush denormal numbers to zero for
the whole process as soon as the library loads: every later PyTorch operation, training's
included, then computed differently from a process that never sampled (tested).

Environment: ``TINYSTORIES_NATIVE=0`` turns every C path off (the PyTorch forms run);
``TINYSTORIES_MARCH`` sets ``-march`` (default ``native``; ``x86-64-v3`` builds code any AVX2
machine runs, and measures one on a newer CPU).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from functools import cache
from pathlib import Path

log = logging.getLogger(__name__)
BASE_FLAGS = ["-Ofast", "-fopenmp", "-fPIC"]  # -Ofast as run.c is built: vector expf, tanhf
LINK_FLAGS = ["-shared", "-fopenmp"]  # no -Ofast here: see the module's doc


def flags() -> list[str]:
    return [*BASE_FLAGS, f"-march={os.environ.get('TINYSTORIES_MARCH') or 'native'}"]


@cache
def _version(compiler: str) -> str:
    """`compiler --version`, asked once per process (each C file's load would ask again)."""
    return subprocess.run([compiler, "--version"], check=False, capture_output=True, text=True, timeout=30).stdout


def _first_error(stderr: str) -> str:
    """The compiler's first error line (its last lines can be a list of valid -march values)."""
    lines = stderr.strip().splitlines()
    return next((line for line in lines if "error" in line), lines[-1] if lines else "")[-300:]


def load(source: Path) -> tuple[ctypes.CDLL | None, str]:
    """`source` built (once) and loaded, or None and why not, in a sentence.

    A build that fails is said once, as a warning: the PyTorch forms compute the same (to
    rounding: tests pin them to 1e-5) but decode several times slower (bench/README.md), and a
    user who installs no compiler should learn why from us, not from a profiler.
    ``TINYSTORIES_NATIVE=0`` says it is meant: no warning."""
    if os.environ.get("TINYSTORIES_NATIVE", "1") == "0":
        return None, "turned off by TINYSTORIES_NATIVE=0"
    lib, why = _build(source)
    if lib is None:
        log.warning("%s; its PyTorch form runs instead, several times slower (TINYSTORIES_NATIVE=0 says "
                    "that is meant, and silences this)", why)
    return lib, why


def _build(source: Path) -> tuple[ctypes.CDLL | None, str]:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None, "no C compiler (cc or gcc) on PATH"
    try:
        key = hashlib.sha256("\0".join([source.read_text(), _version(compiler), *flags(), *LINK_FLAGS,
                                         platform.machine()]).encode())
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tinystories" / "native"
        path = base / f"{source.stem}-{key.hexdigest()[:16]}.so"
        if not path.exists():
            base.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=base) as tmp:  # built aside, then renamed: never half a file
                built, obj = Path(tmp) / path.name, Path(tmp) / f"{source.stem}.o"
                for step, opts, args in (("build", flags(), ["-c", "-o", str(obj), str(source)]),
                                         ("link", LINK_FLAGS, ["-o", str(built), str(obj), "-lm"])):
                    done = subprocess.run([compiler, *opts, *args], check=False, capture_output=True, text=True,
                                          timeout=300)
                    if done.returncode != 0:
                        why = _first_error(done.stderr)
                        return None, f"{compiler} {' '.join(opts)} could not {step} {source.name}: {why}"
                os.replace(built, path)
        return ctypes.CDLL(str(path)), ""
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"building or loading {source.name} failed: {exc}"
