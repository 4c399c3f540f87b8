"""One writer per output folder: `hold_folder(out)` around a command that writes and resumes it.

Two processes resuming the same folder would each skip what was there at their start and
then both write the rest: `generate` would write stories twice, `train` would swap
checkpoints under the other's feet. So every command that resumes a folder (generate, train,
eval, interpret, pretokenize) first takes an advisory lock on ``OUT/.tinystories.lock``
with `fcntl.flock`, and a second process refuses at once, naming the holder.

Why flock and not a PID file: the kernel drops the lock when its process dies, however it
dies (SIGKILL, OOM killer, power cut of a network mount's client), so a stale lock never
needs deleting and there is no "is that PID still alive, or reused?" guesswork. The file
itself stays (removing it would race with a process that has just opened it); its text, the
holder's pid, host, command and start time, only serves the refusal message.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from tinystories.errors import TinyStoriesError
from tinystories.utils import naming

try:
    import fcntl
except ImportError:  # Windows: no advisory locks here; the folder is not guarded
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".tinystories.lock"


def _holder(path: Path) -> str:
    """Who holds the lock, in words, from the text the holder wrote (it may be mid-write: retry)."""
    for _ in range(20):
        with contextlib.suppress(OSError, ValueError):
            info = json.loads(path.read_text())
            where = f" on {info['host']}" if info["host"] != socket.gethostname() else ""
            return (f"process {info['pid']}{where} (`{info['command']}`) since {info['since']}; wait for it "
                    f"to finish or stop it (kill {info['pid']})")
        time.sleep(0.05)
    return "another process; wait for it to finish or stop it"


@contextlib.contextmanager
def hold_folder(folder: str | Path, enabled: bool = True) -> Iterator[None]:
    """Hold `folder` (made if missing) for this process until the block ends; a TinyStoriesError
    naming the holder if another process holds it. `enabled=False` (torchrun's other ranks, a
    dry run) holds nothing."""
    if not enabled or fcntl is None:
        yield
        return
    folder = Path(folder)
    path = folder / LOCK_NAME
    created = not folder.exists()
    with naming(path):
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TinyStoriesError(f"{folder} is in use by {_holder(path)}; or choose another output "
                                   "folder") from None
        command = " ".join(["tinystories", *sys.argv[1:]])[:200]
        text = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": command,
                           "since": datetime.now().astimezone().isoformat(sep=" ", timespec="seconds")})
        with contextlib.suppress(OSError):  # a full disk: the lock holds all the same, unnamed
            os.ftruncate(fd, 0)
            os.pwrite(fd, text.encode() + b"\n", 0)
        try:
            yield
        except BaseException:
            if created:  # a command that failed before writing anything (a typo, a missing key) leaves no folder
                with contextlib.suppress(OSError):
                    if [p.name for p in folder.iterdir()] == [LOCK_NAME]:
                        path.unlink()  # (still held: no other process can have taken it)
                        folder.rmdir()
            raise
    finally:
        os.close(fd)  # releases the lock
