"""Append-only JSONL files that survive being killed at any moment.

A record is one line written in one `write` call and flushed, so a kill leaves at most a
torn last line, which the reader cuts off on the next start. Used by `generate` for its
accepted-story shards and its rejected stories.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from tinystories.utils import naming

log = logging.getLogger(__name__)


def read_jsonl_repairing(path: Path) -> list[dict[str, Any]]:
    """Records of an append-only JSONL file; a torn last line (from a kill) is cut off."""
    if not path.exists():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        log.warning("%s: cutting a torn last line (%d bytes) left by an interrupted run", path, len(data) - end)
        with open(path, "r+b") as f:
            f.truncate(end)
    records = []
    for line in data[:end].splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            log.warning("%s: skipping an unreadable line", path)
    return records


class ShardWriter:
    """Appends records to data/stories-NNNNN.jsonl, starting a new shard every `shard_size`."""

    def __init__(self, folder: Path, shard_size: int):
        self.folder, self.shard_size = folder, shard_size
        folder.mkdir(parents=True, exist_ok=True)
        self.shard = max((int(p.stem.split("-")[1]) for p in folder.glob("stories-*.jsonl")), default=0)
        self.lines = len(self.path.read_bytes().splitlines()) if self.path.exists() else 0
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
