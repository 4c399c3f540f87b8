"""Append-only JSONL files that survive being killed at any moment.

A record is one line written in one `write` call and flushed, so a kill leaves at most a
torn last line, which the reader cuts off on the next start. Used by `generate` for its
accepted-story shards and its rejected stories.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tinystories.utils import naming

log = logging.getLogger(__name__)


def line_end(path: Path) -> int:
    """The byte offset after the last complete line of `path` (0 if none or no file), found by
    reading backwards in blocks (a shard can be hundreds of MB)."""
    if not path.exists():
        return 0
    with open(path, "rb") as f:
        end = f.seek(0, os.SEEK_END)
        while end > 0:
            start = max(0, end - (1 << 16))
            f.seek(start)
            at = f.read(end - start).rfind(b"\n")
            if at >= 0:
                return start + at + 1
            end = start
    return 0


def cut_torn_tail(path: Path) -> int:
    """Cut a torn last line (one without its newline) off `path`; returns the new size."""
    size, end = path.stat().st_size, line_end(path)
    if end < size:
        log.warning("%s: cutting a torn last line (%d bytes) left by an interrupted run", path, size - end)
        os.truncate(path, end)
    return end


def iter_jsonl_repairing(path: Path, start: int = 0) -> Iterator[dict[str, Any]]:
    """Records of an append-only JSONL file from byte `start` (a line boundary), streamed; a
    torn last line (from a kill) is cut off first."""
    if not path.exists():
        return
    end = cut_torn_tail(path)
    with open(path, "rb") as f:
        f.seek(start)
        offset = start
        while offset < end:
            line = f.readline()
            offset += len(line)
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                log.warning("%s: skipping an unreadable line", path)


def count_lines(path: Path) -> int:
    """Newlines in a file, read in blocks (a shard can be hundreds of MB)."""
    if not path.exists():
        return 0
    with open(path, "rb") as f:
        return sum(block.count(b"\n") for block in iter(lambda: f.read(1 << 20), b""))


class ShardWriter:
    """Appends records to data/stories-NNNNN.jsonl, starting a new shard every `shard_size`."""

    def __init__(self, folder: Path, shard_size: int):
        self.folder, self.shard_size = folder, shard_size
        folder.mkdir(parents=True, exist_ok=True)
        self.shard = max((int(p.stem.split("-")[1]) for p in folder.glob("stories-*.jsonl")), default=0)
        self.lines = count_lines(self.path)
        self.file = open(self.path, "a")  # noqa: SIM115 - held open for the whole run

    @property
    def path(self) -> Path:
        return self.folder / f"stories-{self.shard:05d}.jsonl"

    def append(self, record: dict[str, Any]) -> None:
        if self.lines >= self.shard_size:
            self.file.close()
            self.shard, self.lines = self.shard + 1, 0
            self.file = open(self.path, "a")  # noqa: SIM115 - held until the next shard
        append_line(self.file, record)
        self.lines += 1

    def close(self) -> None:
        with naming(self.path):
            try:
                self.file.flush()
                os.fsync(self.file.fileno())
            finally:
                self.file.close()


def append_line(file: Any, record: dict[str, Any]) -> None:
    # One write of the whole line, flushed: a kill (or a full disk) leaves at most a torn last line.
    with naming(file.name):
        file.write(json.dumps(record, ensure_ascii=False) + "\n")
        file.flush()
