"""OUT/index/: what a generation run has done, in a form that reloads in a moment.

The JSONL files are the truth; this folder is a cache of them that a restart reads instead of
parsing every line and hashing every story again:

    done.bin         int64 per ended prompt index (accepted or rejected), in the order written
    bands.bin        the near-duplicate index's b uint64 band keys per accepted story
    checkpoint.json  rows of each file that count, the byte offset of each JSONL file they
                     cover, and the run's counters (accepted, rejections by reason, token usage,
                     vocabulary seen) at that point; written atomically

Rows are appended (one write each file) just before the checkpoint that counts them, and
only after their JSONL lines, so at any kill the checkpoint describes a prefix of every
JSONL file: a restart cuts rows beyond the checkpoint, then reads only the JSONL lines after
the checkpoint's offsets (torn-line repair included). A checkpoint that does not match the
files (missing, unreadable, another near-duplicate setting, a JSONL file shorter than its
offset or not at a line boundary there) is dropped and the index rebuilt from the JSONL.

Cost per million stories: 8 MB of done.bin, 8 * b MB of band keys (40 MB at the default
b=5), and 1 MB of bitmap in memory.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tinystories.config import read_structured
from tinystories.data.shards import line_end
from tinystories.errors import TinyStoriesError
from tinystories.utils import naming, write_json

log = logging.getLogger(__name__)
VERSION = 1


class DoneSet:
    """Ended prompt indices as a bitmap of one byte per index (2 MB for the paper's 2.1M
    prompts, where a Python set of ints is over 100 MB)."""

    def __init__(self) -> None:
        self._bits = np.zeros(0, np.uint8)

    def _grow(self, size: int) -> None:
        if size > len(self._bits):
            bits = np.zeros(max(size, 2 * len(self._bits), 1024), np.uint8)
            bits[:len(self._bits)] = self._bits
            self._bits = bits

    def __contains__(self, index: object) -> bool:
        return bool(isinstance(index, int | np.integer) and 0 <= index < len(self._bits) and self._bits[index])

    def add(self, index: int) -> None:
        if index < 0:
            raise TinyStoriesError(f"prompt index {index} is negative")
        self._grow(index + 1)
        self._bits[index] = 1

    def add_many(self, indices: np.ndarray) -> None:
        if len(indices):
            self._grow(int(indices.max()) + 1)
            self._bits[indices] = 1

    def __len__(self) -> int:
        return int(np.count_nonzero(self._bits))

    def count_below(self, n: int) -> int:
        return int(np.count_nonzero(self._bits[:n]))

    def missing_below(self, n: int) -> Iterator[int]:
        """Indices 0..n-1 not done, ascending (8 bytes per missing index while iterated)."""
        have = np.zeros(n, np.uint8)
        have[:min(n, len(self._bits))] = self._bits[:n]
        return (int(i) for i in np.flatnonzero(have == 0))


def jsonl_files(out: Path) -> list[Path]:
    """The run's JSONL files: rejected stories first, then the shards in order."""
    return [out / "rejected.jsonl", *sorted((out / "data").glob("stories-*.jsonl"))]


def _ends_a_line(path: Path, offset: int) -> bool:
    if offset == 0:
        return True
    if not path.exists() or path.stat().st_size < offset:
        return False
    with open(path, "rb") as f:
        f.seek(offset - 1)
        return f.read(1) == b"\n"


@dataclass
class Checkpoint:
    state: dict[str, Any]  # the run's counters at the checkpoint
    offsets: dict[str, int]  # JSONL file (relative to the run folder) -> bytes covered
    done: np.ndarray  # int64 prompt indices


class RunIndex:
    def __init__(self, out: Path, bands: int, signature: dict[str, Any]):
        self.out, self.folder = out, out / "index"
        self.bands = bands
        self.signature = {"version": VERSION, **signature, "bands": bands}
        self.rows = {"done": 0, "bands": 0}
        self._done: list[int] = []
        self._keys: list[np.ndarray] = []

    def _path(self, name: str) -> Path:
        return self.folder / name

    def load(self) -> Checkpoint | None:
        """The last checkpoint, if it matches the files; else None, with the index emptied
        (to be rebuilt from the JSONL)."""
        try:
            ck = self._read()
        except (TinyStoriesError, OSError, KeyError, TypeError, ValueError) as exc:
            log.warning("%s: %s; rebuilding it from the JSONL files", self.folder, exc)
            ck = None
        if ck is None:
            self.clear()
        return ck

    def _read(self) -> Checkpoint | None:
        path = self._path("checkpoint.json")
        if not path.exists():
            return None
        data = read_structured(path, "run index checkpoint")
        if not isinstance(data, dict) or data.get("signature") != self.signature:
            raise ValueError("made with other near-duplicate settings or another version")
        rows, offsets = data["rows"], data["offsets"]
        for name, width in (("done", 8), ("bands", 8 * self.bands)):
            have = self._path(f"{name}.bin").stat().st_size if self._path(f"{name}.bin").exists() else 0
            if have < rows[name] * width:
                raise ValueError(f"{name}.bin holds {have // max(width, 1)} rows, the checkpoint counts {rows[name]}")
        for rel, offset in offsets.items():
            if not _ends_a_line(self.out / rel, offset):
                raise ValueError(f"{rel} no longer holds the {offset} bytes it indexed")
        for name, width in (("done", 8), ("bands", 8 * self.bands)):
            file = self._path(f"{name}.bin")
            if file.exists() and file.stat().st_size > rows[name] * width:
                os.truncate(file, rows[name] * width)  # rows written after the checkpoint: read again
        self.rows = {"done": int(rows["done"]), "bands": int(rows["bands"])}
        done = np.fromfile(self._path("done.bin"), np.int64, count=self.rows["done"]) \
            if self.rows["done"] else np.zeros(0, np.int64)
        return Checkpoint(data["state"], {k: int(v) for k, v in offsets.items()}, done)

    def load_bands(self) -> np.ndarray:
        """The band keys of every indexed accepted story, [rows, bands] uint64."""
        if not self.rows["bands"] or not self.bands:
            return np.zeros((0, self.bands), np.uint64)
        keys = np.fromfile(self._path("bands.bin"), np.uint64, count=self.rows["bands"] * self.bands)
        return keys.reshape(-1, self.bands)

    def clear(self) -> None:
        for name in ("checkpoint.json", "done.bin", "bands.bin"):
            self._path(name).unlink(missing_ok=True)
        self.rows = {"done": 0, "bands": 0}
        self._done, self._keys = [], []

    def add(self, index: int, keys: np.ndarray | None) -> None:
        """Record an ended index (and an accepted story's band keys), after its JSONL line."""
        self._done.append(index)
        if keys is not None and self.bands:
            self._keys.append(keys)

    def save(self, state: dict[str, Any]) -> None:
        """Append the rows added since the last save, then the checkpoint that counts them."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for name, rows in (("done", np.asarray(self._done, np.int64)),
                           ("bands", np.asarray(self._keys, np.uint64).reshape(-1, self.bands or 1))):
            if len(rows):
                path = self._path(f"{name}.bin")
                with naming(path), open(path, "ab") as f:
                    f.write(rows.tobytes())
                    f.flush()
                    os.fsync(f.fileno())
                self.rows[name] += len(rows)
        self._done, self._keys = [], []
        offsets = {str(p.relative_to(self.out)): line_end(p) for p in jsonl_files(self.out) if p.exists()}
        write_json(self._path("checkpoint.json"), {"signature": self.signature, "rows": self.rows,
                                                    "offsets": offsets, "state": state})
