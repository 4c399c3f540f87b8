"""Small helpers shared by every stage: atomic writes, seeding, resources, devices.

Imports no torch at module level: the CLI's `--help` and the data stage load this too.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import platform
import random
import tempfile
import time
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import torch

_F = TypeVar("_F", bound=Callable[..., Any])

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """Write to a temporary file beside `path`, then rename it over `path`.

    A crash or an exception mid-write leaves the old file untouched, so a good
    checkpoint or report is never replaced by half a file.
    """
    path = Path(path)
    with naming(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes owner-only files; give the usual permissions
    try:
        with naming(path), os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def naming(path: str | Path) -> Iterator[None]:
    """Name `path` in an OSError raised inside that names no file.

    A `write` or `flush` that hits a full disk raises ENOSPC without a file name; the CLI
    turns these into one line that must say which file, so every write path runs in here.
    """
    try:
        yield
    except OSError as exc:
        if exc.filename is None:
            exc.filename = str(path)
        raise


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_write(path) as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resource_path(name: str) -> Path:
    """Path of a file shipped in `tinystories/resources` (bundled data, prompts, vocabulary)."""
    return Path(str(resources.files("tinystories") / "resources" / name))


def pick_device(requested: str = "auto") -> torch.device:
    import torch

    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(requested)


def usable_cores() -> int:
    """The CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


NATIVE_BF16 = {"avx512_bf16", "amx_bf16"}  # /proc/cpuinfo flags of CPUs that multiply bfloat16 natively


def cpu_model_and_flags() -> tuple[str, set[str]]:
    """The first CPU's model name and feature flags (`avx2`, `avx512_bf16`, `amx_int8`, ...) from
    /proc/cpuinfo; empty where there is none (not Linux)."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpuinfo = ""
    name, flags = "", set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and not name:
            name = value.strip()
        elif key.strip() == "flags":
            flags = set(value.split())
            break
    return name, flags


def describe_cpu() -> str:
    """This CPU in the terms its speed depends on: model, vector ISA torch uses, bf16 support.

    e.g. "AMD EPYC (AVX2, no native bf16)"; every benchmark figure carries it, since the same
    code runs 2-30x faster on one CPU than another.
    """
    import torch

    name, flags = cpu_model_and_flags()
    name = name or platform.processor() or platform.machine()
    isa = torch.backends.cpu.get_cpu_capability()
    if "amx_tile" in flags:
        isa += "+AMX"
    bf16 = "native bf16" if flags & NATIVE_BF16 else "no native bf16"
    return f"{name} ({isa}, {bf16})" if flags else f"{name} ({isa})"


def _cpu_jiffies(cpus: set[int]) -> tuple[int, int]:
    """(busy, total) jiffies of `cpus` since boot, from /proc/stat."""
    busy = total = 0
    with open("/proc/stat") as f:
        for line in f:
            name, *fields = line.split()
            if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
                ticks = [int(x) for x in fields[:8]]
                total += sum(ticks)
                busy += sum(ticks) - ticks[3] - ticks[4]  # all but idle and iowait
    return busy, total


def busy_cores(window_s: float = 0.1) -> float:
    """How many of this process's cores other work keeps busy right now: on Linux, measured over
    `window_s` from /proc/stat (this process sleeps meanwhile). Elsewhere the 1-minute load
    average, which lags: just after a heavy job (a `pip install`, say) it still counts it."""
    try:
        cpus = os.sched_getaffinity(0)
        busy0, total0 = _cpu_jiffies(cpus)
        time.sleep(window_s)
        busy1, total1 = _cpu_jiffies(cpus)
        if total1 > total0:
            return len(cpus) * (busy1 - busy0) / (total1 - total0)
    except (AttributeError, OSError, ValueError):  # not Linux, or no /proc
        pass
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0


def choose_threads(requested: int = 0) -> int:
    """Torch's CPU threads: `requested` if given; else one per core not kept busy by other work
    (`busy_cores`), at least one. On a shared machine, more threads than idle cores make each
    step wait for the slowest thread: far slower than fewer."""
    if requested:
        return requested
    cores = usable_cores()
    return max(1, min(cores, round(cores - busy_cores())))


def set_threads(requested: int = 0) -> int:
    """`choose_threads`, applied to torch; the count chosen."""
    import torch

    n = choose_threads(requested)
    torch.set_num_threads(n)
    return n


def inference(fn: _F) -> _F:
    """`torch.inference_mode()` as a decorator that costs nothing where the caller is in one
    already: the engine's loop enters it once, where the decorator's cost, twice per decode
    step, was a visible part of a token at the demo's shape (bench/README.md)."""
    import torch

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        if torch.is_inference_mode_enabled():
            return fn(*args, **kwargs)
        with torch.inference_mode():
            return fn(*args, **kwargs)
    return run  # type: ignore[return-value]
