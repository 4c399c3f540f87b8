"""Read stories from every form users hold TinyStories in, repaired and deduplicated.

Sources:
* ``.txt``: raw text, stories separated by ``<|endoftext|>`` (the released files);
* ``.jsonl`` / ``.json``: objects with a text field (``text`` by default);
* ``.parquet`` or a folder saved by ``datasets`` (``save_to_disk``) or holding parquet/jsonl;
* ``hf:NAME`` (e.g. ``hf:roneneldan/TinyStories``): a Hugging Face dataset, through ``datasets``;
* ``bundled:train`` / ``bundled:valid``: the real TinyStories sample shipped with the package.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from tinystories.config import read_structured
from tinystories.data.keyset import KeySet
from tinystories.errors import TinyStoriesError
from tinystories.tokenizer import EOS_TEXT
from tinystories.utils import resource_path

BUNDLED = {"bundled:train": "train_sample.txt", "bundled:valid": "valid_dev.jsonl"}

# UTF-8 punctuation read as cp1252: "’" arrives as "â€™". A run starts with a lead byte
# (Â-ô) followed by cp1252 characters of the continuation-byte range.
_MOJIBAKE = re.compile("[\u00c2-\u00f4][\u0080-\u00bf\u0152\u0153\u0160\u0161\u0178\u017d\u017e"
                       "\u0192\u02c6\u02dc\u2013\u2014\u2018-\u201e\u2020-\u2022\u2026\u2030"
                       "\u2039\u203a\u20ac\u2122]{1,3}")


def _fix_run(match: re.Match[str]) -> str:
    run = match.group(0)
    try:
        return run.encode("cp1252").decode("utf-8")
    except UnicodeError:
        pass
    # "â€" + a byte cp1252 cannot show (0x9d, the end of "”") was dropped by the export.
    if run == "â€":
        return "\u201d"
    return run


def repair_mojibake(text: str) -> str:
    """Undo the dataset's cp1252 mojibake (``â€™`` -> ``’``, ``â€œ`` -> ``“``, bare ``â€`` -> ``”``)."""
    return _MOJIBAKE.sub(_fix_run, text) if "\u00c2" <= max(text, default="a") else text


# What to do with bytes that are not UTF-8 (and text that is not valid Unicode): the one policy
# every reader follows. strict: stop with the file and byte offset; replace: U+FFFD; skip: drop
# the story that holds them.
EncodingErrors = Literal["strict", "replace", "skip"]
_SURROGATE = re.compile("[\ud800-\udfff]")  # never in valid text; how undecodable bytes are carried


@dataclass
class CorpusStats:
    read: int = 0
    repaired: int = 0
    empty: int = 0
    duplicates: int = 0
    undecodable: int = 0  # stories with invalid UTF-8 or lone surrogates (replaced or skipped)
    kept: int = 0
    sources: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"{self.kept} stories kept of {self.read} read "
                f"({self.repaired} repaired, {self.empty} empty, {self.duplicates} duplicates"
                + (f", {self.undecodable} with invalid UTF-8" if self.undecodable else "") + ")"
                + "".join(f"; {note}" for note in self.notes))


def decode(data: bytes, where: str, errors: EncodingErrors, offset: int = 0) -> str:
    """UTF-8 `data` as text. Invalid bytes stop a strict read with the byte offset in the file;
    otherwise they are carried as lone surrogates, which `clean_stories` replaces or skips."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        if errors == "strict":
            bad = data[exc.start:exc.start + 4].hex(" ")
            raise TinyStoriesError(
                f"{where}: invalid UTF-8 at byte {offset + exc.start} ({bad}); fix the file, or pass "
                "--encoding-errors replace (bad bytes become U+FFFD) or skip (drop the stories that "
                "hold them)") from None
        return data.decode("utf-8", "surrogateescape")


def _read_txt(path: Path, errors: EncodingErrors, block: int = 1 << 22) -> Iterator[str]:
    """The file's stories, read in blocks (the released train file is 1.9 GB); the separator
    is ASCII, so cutting the bytes at it never splits a character."""
    sep = EOS_TEXT.encode()
    offset, rest = 0, b""
    with path.open("rb") as f:
        while data := f.read(block):
            *stories, rest = (rest + data).split(sep)
            for story in stories:
                yield decode(story, str(path), errors, offset)
                offset += len(story) + len(sep)
    yield decode(rest, str(path), errors, offset)


def _read_json_records(path: Path, text_field: str, errors: EncodingErrors) -> Iterator[str]:
    def pick(obj: object, where: str) -> str:
        if not isinstance(obj, dict) or text_field not in obj:
            raise TinyStoriesError(f"{where}: expected an object with a {text_field!r} field "
                                   f"(choose another with --text-field)")
        value = obj[text_field]
        if not isinstance(value, str):
            raise TinyStoriesError(f"{where}: field {text_field!r} is not a string")
        return value

    if path.suffix == ".jsonl":
        offset = 0
        with path.open("rb") as f:
            for lineno, raw in enumerate(f, 1):
                line = decode(raw, f"{path}:{lineno}", errors, offset)
                offset += len(raw)
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise TinyStoriesError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from exc
                yield pick(obj, f"{path}:{lineno}")
        return
    data = read_structured(path, "corpus", text=decode(path.read_bytes(), str(path), errors), fmt="json")
    if isinstance(data, dict):  # {"data": [...]} or a single record
        data = data.get("data", data.get("rows", [data]))
    if not isinstance(data, list):
        raise TinyStoriesError(f"{path}: expected a list of records")
    for i, obj in enumerate(data):
        yield pick(obj, f"{path}[{i}]")


def _read_datasets(source: str, split: str, text_field: str) -> Iterator[str]:
    try:
        import datasets
    except ImportError as exc:
        raise TinyStoriesError(f"reading {source} needs the `datasets` package: "
                               "pip install 'tinystories[hf]'") from exc
    path = Path(source)
    if path.is_dir() and any((path / f).exists() for f in ("dataset_info.json", "state.json")):
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            ds = ds[split]
    elif path.suffix == ".parquet" or path.is_dir():
        files = [str(path)] if path.is_file() else sorted(str(p) for p in path.glob("**/*.parquet"))
        if not files:
            raise TinyStoriesError(f"{path}: no .parquet files found")
        ds = datasets.load_dataset("parquet", data_files=files, split="train")
    else:
        ds = datasets.load_dataset(source.removeprefix("hf:"), split=split)
    if text_field not in ds.column_names:
        raise TinyStoriesError(f"{source}: no column {text_field!r}; columns are {ds.column_names}")
    for row in ds:
        yield row[text_field]


def iter_raw_stories(source: str, split: str = "train", text_field: str = "text",
                     errors: EncodingErrors = "strict") -> Iterator[str]:
    """Stories exactly as stored (no repair, no filtering)."""
    if source in BUNDLED:
        source = str(resource_path(BUNDLED[source]))
    if source.startswith("hf:"):
        yield from _read_datasets(source, split, text_field)
        return
    path = Path(source)
    if not path.exists():
        raise TinyStoriesError(f"corpus not found: {source} (a .txt/.jsonl/.json/.parquet file, "
                               "a datasets folder, hf:NAME, or bundled:train / bundled:valid)")
    if path.is_dir() and (path / "manifest.json").exists() and (path / "data").is_dir():
        # A `tinystories generate` run: its accepted stories only; rejected.jsonl (refusals,
        # duplicates, ...) must never become training data.
        for p in sorted((path / "data").glob("*.jsonl")):
            yield from _read_json_records(p, text_field, errors)
        return
    if path.is_dir():
        jsonl = sorted(p for p in path.glob("*.jsonl") if p.name != "rejected.jsonl")
        if jsonl and not list(path.glob("*.parquet")) and not (path / "dataset_info.json").exists():
            for p in jsonl:
                yield from _read_json_records(p, text_field, errors)
        else:
            yield from _read_datasets(source, split, text_field)
    elif path.suffix == ".txt":
        yield from _read_txt(path, errors)
    elif path.suffix in (".jsonl", ".json"):
        yield from _read_json_records(path, text_field, errors)
    elif path.suffix == ".parquet":
        yield from _read_datasets(source, split, text_field)
    else:
        raise TinyStoriesError(f"{path}: unsupported corpus format {path.suffix!r} "
                               "(use .txt, .jsonl, .json or .parquet)")


def clean_stories(raw: Iterable[str], stats: CorpusStats | None = None, dedupe: bool = True,
                  errors: EncodingErrors = "strict", where: str = "corpus") -> Iterator[str]:
    """Repair mojibake, strip, drop empty stories and exact duplicates, counting each; text that
    is not valid Unicode (invalid bytes, lone surrogates from JSON escapes) follows `errors`."""
    stats = stats if stats is not None else CorpusStats()
    seen = KeySet()  # 64-bit hashes of the stories kept, 8 bytes each
    for story in raw:
        stats.read += 1
        if bad := _SURROGATE.search(story):
            if errors == "strict":
                raise TinyStoriesError(f"{where}: story {stats.read} is not valid Unicode (lone surrogate "
                                       f"{bad.group()!r}); pass --encoding-errors replace or skip")
            stats.undecodable += 1
            if errors == "skip":
                continue
            story = _SURROGATE.sub("\ufffd", story)
        fixed = repair_mojibake(story).strip()
        if fixed != story.strip():
            stats.repaired += 1
        if not fixed:
            stats.empty += 1
            continue
        if dedupe:
            h = hash(fixed) & 0xFFFF_FFFF_FFFF_FFFF
            if h in seen:
                stats.duplicates += 1
                continue
            seen.add([h])
        stats.kept += 1
        yield fixed


def iter_stories(sources: str | list[str], split: str = "train", text_field: str = "text",
                 dedupe: bool = True, errors: EncodingErrors = "strict",
                 stats: CorpusStats | None = None) -> Iterator[str]:
    """The clean stories of one or several sources, streamed (memory: 8 bytes per story for
    the duplicate check); `stats` counts what was repaired or dropped as they pass.

    A folder written by `tinystories generate` gives its accepted stories only (its
    rejected.jsonl is left out, and the summary says so).
    """
    sources = [sources] if isinstance(sources, str) else sources
    stats = stats if stats is not None else CorpusStats()
    stats.sources = list(sources)
    for src in sources:
        rejected = Path(src) / "rejected.jsonl"
        if not src.startswith(("hf:", "bundled:")) and rejected.is_file():
            with rejected.open("rb") as f:
                lines = sum(1 for line in f if line.strip())
            stats.notes.append(f"{src}: accepted stories only; {lines} rejected ones in rejected.jsonl left out")
    for src in sources:
        yield from clean_stories(iter_raw_stories(src, split, text_field, errors), stats, dedupe, errors, src)
    if not stats.kept:
        raise TinyStoriesError(f"corpus {', '.join(sources)} holds no stories ({stats.summary()})")


def read_stories(sources: str | list[str], split: str = "train", text_field: str = "text",
                 dedupe: bool = True, errors: EncodingErrors = "strict") -> tuple[list[str], CorpusStats]:
    """All clean stories of one or several sources (`iter_stories`) in a list, with counts of
    what was repaired or dropped."""
    stats = CorpusStats()
    stories = list(iter_stories(sources, split, text_field, dedupe, errors, stats))
    return stories, stats
