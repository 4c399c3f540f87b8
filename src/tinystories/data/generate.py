"""The generation run: prompts -> teacher -> filters -> append-only JSONL shards.

The prompt index is the unit of work. Each index ends as exactly one line, in an accepted
shard or in `rejected.jsonl`, written in one `write` call; on start the run reads what is
there (cutting a line torn by a kill), skips those indices and does the rest. So a run can be
killed at any moment and rerun with the same command until it completes. Indices whose
requests failed for good are simply not written, and the next rerun retries them.

A start does not re-read every line: `OUT/index/` (`run_index`) keeps the ended indices, the
near-duplicate band keys and the counters as of a checkpoint (every few seconds and at the
end), and only JSONL lines written after it are read again. A rerun of a finished run
returns its manifest at once.

Layout of the output folder:
    data/stories-00000.jsonl   accepted stories (a `datasets` "json" dataset)
    rejected.jsonl             rejected stories, each with its `reason`
    manifest.json              config, seed, counts, usage, cost, coverage (written atomically)
    README.md                  dataset card
    index/                     done indices, near-duplicate keys, counters: a cache of the JSONL
    batch_state.json           only while an OpenAI Batch API batch is being submitted or is in flight
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml
from tqdm import tqdm

from tinystories.config import Config, read_structured, setting, to_dict
from tinystories.data.batch_run import run_batches
from tinystories.data.filters import FilterConfig, StoryFilter, normalise, reason_kind, words_of
from tinystories.data.near_duplicates import lsh_bands
from tinystories.data.prompts import Prompt, PromptBuilder, PromptConfig, instruct_text
from tinystories.data.run_index import DoneSet, RunIndex, jsonl_files
from tinystories.data.shards import ShardWriter, append_line, iter_jsonl_repairing, line_end
from tinystories.errors import TinyStoriesError
from tinystories.llm_client import ClientConfig, Completion, LLMClient, LLMError
from tinystories.utils import atomic_write, naming, write_json

log = logging.getLogger(__name__)
MANIFEST_EVERY_S = 10.0


@dataclass(frozen=True)
class GenerateConfig(Config):
    n: int = setting(1000, "prompts to run (each ends as one accepted or rejected story)", ge=0, le=10**10,
                     flag="num-stories")
    seed: int = setting(0, "seed of the prompts (same seed, same prompts)", ge=0)
    out: str = setting("runs/stories", "output folder (resumed if it exists)")
    instruct: bool = setting(False, "TinyStories-Instruct records (one more request per story, for its summary)")
    batch_api: bool = setting(False, "use the OpenAI Batch API (/v1/files + /v1/batches): cheaper, slower")
    shard_size: int = setting(100_000, "accepted stories per JSONL shard", ge=1)
    index_every_s: float = setting(5.0, "seconds between saves of OUT/index/ (a restart re-reads the stories "
                                        "written since the last one)", gt=0)
    parquet: bool = setting(False, "also write OUT/data.parquet at the end (needs pyarrow)")
    progress: bool = setting(True, "progress bar")
    teacher: ClientConfig = setting(help="the teacher LLM's endpoint", factory=ClientConfig)
    prompts: PromptConfig = setting(help="how prompts are made", factory=PromptConfig)
    filters: FilterConfig = setting(help="which stories are kept", factory=FilterConfig)

    where = "generate"

    def fingerprint(self) -> dict[str, Any]:
        """What fixes the prompts and records: a resumed run must match it."""
        return {"seed": self.seed, "instruct": self.instruct, "prompts": to_dict(self.prompts)}


def story_id(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def clean_summary(text: str) -> str:
    text = normalise(text)
    if text.lower().startswith("summary:"):
        text = text[len("summary:"):]
    return " ".join(text.split())


class Run:
    def __init__(self, cfg: GenerateConfig):
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.done = DoneSet()
        self.accepted = 0
        self.rejected: Counter[str] = Counter()
        self.failed: dict[int, str] = {}  # index -> last error, this session
        self.record_tokens: Counter[str] = Counter()  # usage summed over the written records
        self.prompt_words: set[str] = set()
        self.story_words: set[str] = set()
        self.started = time.monotonic()
        self.last_manifest = self.last_checkpoint = 0.0
        near = cfg.filters.near_duplicate_threshold < 1
        bands = lsh_bands(cfg.filters.near_duplicate_threshold, cfg.filters.minhash_perm)[0] if near else 0
        self.index = RunIndex(self.out, bands, {"threshold": cfg.filters.near_duplicate_threshold,
                                                "num_perm": cfg.filters.minhash_perm})

    def _setup(self) -> None:
        """What only a run with work to do needs: prompts, vocabulary, filters."""
        self.builder = PromptBuilder(self.cfg.prompts, self.cfg.seed)
        self.filter = StoryFilter(self.cfg.filters, self.builder.vocabulary)
        self.form_index = self.builder.vocabulary.form_index()

    # --- state on disk ----------------------------------------------------------------

    def _check_manifest(self) -> dict[str, Any] | None:
        path = self.out / "manifest.json"
        if path.exists():
            manifest = read_structured(path, "manifest")
            old = manifest.get("fingerprint") if isinstance(manifest, dict) else None
            if old != self.cfg.fingerprint():
                raise TinyStoriesError(
                    f"{self.out} holds a run with another seed, prompt config or --instruct "
                    f"({old}); resume it with the same settings or choose a new --out"
                )
            return manifest if isinstance(manifest, dict) else None
        return None

    def _restore(self) -> dict[str, int]:
        """Counters and done indices from OUT/index/; the JSONL byte offsets it covers."""
        ck = self.index.load()
        if ck is None:
            return {}
        self.done.add_many(ck.done)
        state = ck.state
        self.accepted = state["accepted"]
        self.rejected = Counter(state["rejected"])
        self.record_tokens = Counter(state["record_tokens"])
        self.prompt_words = set(state["prompt_words"])
        self.story_words = set(state["story_words"])
        return ck.offsets

    def _state(self) -> dict[str, Any]:
        return {"accepted": self.accepted, "rejected": dict(self.rejected), "record_tokens": dict(self.record_tokens),
                "prompt_words": sorted(self.prompt_words), "story_words": sorted(self.story_words)}

    def _checkpoint(self) -> None:
        self.last_checkpoint = time.monotonic()
        try:
            self.index.save(self._state())
        except OSError as exc:  # a cache: the next start rebuilds what is missing from the JSONL
            log.warning("could not save the run index (%s)", exc)

    def _unindexed(self, offsets: dict[str, int]) -> bool:
        """Whether any JSONL file holds lines after what the index covers."""
        return any(p.exists() and line_end(p) > offsets.get(str(p.relative_to(self.out)), 0)
                   for p in jsonl_files(self.out))

    def _load(self, offsets: dict[str, int]) -> None:
        """Read the JSONL lines the index does not cover (all of them without an index),
        cutting a line torn by a kill, and index them."""
        for path in jsonl_files(self.out):
            rejected = path.name == "rejected.jsonl"
            for record in iter_jsonl_repairing(path, offsets.get(str(path.relative_to(self.out)), 0)):
                if record["index"] in self.done:
                    continue
                if rejected:
                    self._count_rejected(record)
                else:
                    self._count_accepted(record)
                    self.index.add(record["index"], self.filter.remember(record.get("story", record["text"]),
                                                                         record["id"]))

    def _count_rejected(self, record: dict[str, Any]) -> None:
        self.done.add(record["index"])
        self.rejected[reason_kind(record["reason"])] += 1
        self.record_tokens.update(record.get("usage", {}))
        self.index.add(record["index"], None)

    def _count_accepted(self, record: dict[str, Any]) -> None:
        self.done.add(record["index"])
        self.accepted += 1
        self.record_tokens.update(record.get("usage", {}))
        self.prompt_words.update(record["words"])
        for w in words_of(record.get("story", record["text"])):
            self.story_words.update(self.form_index.get(w, ()))

    def write(self, record: dict[str, Any]) -> None:
        if record["index"] in self.done:  # a re-collected batch after a crash
            return
        if "reason" in record:
            append_line(self.rejected_file, record)
            self._count_rejected(record)
        else:
            self.shards.append(record)
            self._count_accepted(record)
            story = record.get("story", record["text"])
            self.index.add(record["index"], self.filter.bands_of(story_id(story), story))
        self.bar.update(1)
        self.bar.set_postfix_str(self._postfix(), refresh=False)
        now = time.monotonic()
        if now - self.last_checkpoint > self.cfg.index_every_s:
            self._checkpoint()
        if now - self.last_manifest > MANIFEST_EVERY_S:
            self.write_manifest("running")

    def _postfix(self) -> str:
        usage = self.client.usage
        elapsed = max(1e-9, time.monotonic() - self.started)
        tokens = usage.prompt_tokens + usage.completion_tokens
        return (f"{tokens / elapsed:.0f} tok/s, {sum(self.rejected.values())} rejected, "
                f"{len(self.failed)} failed, {usage.retries} retries, ${usage.cost(self.cfg.teacher):.4f}")

    def coverage(self) -> dict[str, Any]:
        vocab = self.builder.vocabulary
        out: dict[str, Any] = {}
        for name, seen in (("prompts", self.prompt_words), ("stories", self.story_words)):
            out[name] = {cat: round(len(seen & set(ws)) / len(ws), 4) for cat, ws in vocab.words.items()}
            out[name]["all"] = round(len(seen & vocab.all_words()) / len(vocab.all_words()), 4)
        return out

    def write_manifest(self, status: str) -> dict[str, Any]:
        self.last_manifest = time.monotonic()
        session = self.client.usage
        manifest = {
            "status": status,
            "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "fingerprint": self.cfg.fingerprint(),
            "config": to_dict(self.cfg),  # holds the key's variable name, never the key
            "counts": {
                "requested": self.cfg.n, "accepted": self.accepted,
                "rejected": sum(self.rejected.values()), "rejected_by_reason": dict(self.rejected),
                "pending": self.cfg.n - self.done.count_below(self.cfg.n),
                "failed_this_session": len(self.failed),
            },
            "usage": {
                "records": dict(self.record_tokens),
                "cost_usd_records": round(
                    (self.record_tokens["prompt_tokens"] * self.cfg.teacher.price_input_per_1m
                     + self.record_tokens["completion_tokens"] * self.cfg.teacher.price_output_per_1m) / 1e6, 6),
                "this_session": {"requests": session.requests, "retries": session.retries,
                                 "prompt_tokens": session.prompt_tokens,
                                 "completion_tokens": session.completion_tokens,
                                 "retry_reasons": session.errors,
                                 "cost_usd": round(session.cost(self.cfg.teacher), 6)},
            },
            "vocabulary_coverage": self.coverage(),
            "failures_this_session": dict(list(self.failed.items())[:20]),
        }
        write_json(self.out / "manifest.json", manifest)
        return manifest

    # --- one story ----------------------------------------------------------------------

    def judge(self, prompt: Prompt, completion: Completion) -> dict[str, Any]:
        """The record for a story: accepted (no `reason`) or rejected (with one)."""
        story = normalise(completion.text)
        record: dict[str, Any] = {
            "id": story_id(story), "index": prompt.index, "text": story, "prompt": prompt.text,
            "words": list(prompt.words.values()), "features": prompt.features,
            "model": self.cfg.teacher.model,
            "usage": {"prompt_tokens": completion.prompt_tokens,
                      "completion_tokens": completion.completion_tokens},
        }
        reason = self.filter.check(story, prompt.words, record["id"])
        return {**record, "reason": reason} if reason else record

    def finish_instruct(self, record: dict[str, Any], prompt: Prompt, summary: Completion) -> dict[str, Any]:
        story, summary_text = record["text"], clean_summary(summary.text)
        text, header = instruct_text(prompt, story, summary_text, self.cfg.seed)
        usage = {"prompt_tokens": record["usage"]["prompt_tokens"] + summary.prompt_tokens,
                 "completion_tokens": record["usage"]["completion_tokens"] + summary.completion_tokens}
        return {**record, "id": story_id(text), "text": text, "story": story,
                "summary": summary_text, "instruction": header, "usage": usage}

    async def process(self, index: int) -> None:
        prompt = self.builder.prompt(index)
        try:
            record = self.judge(prompt, await self.client.complete(prompt.text))
            if self.cfg.instruct and "reason" not in record:
                summary = await self.client.complete(self.builder.summary_request(record["text"]))
                record = self.finish_instruct(record, prompt, summary)
        except LLMError as exc:
            self.failed[index] = str(exc)
            log.warning("prompt %d failed: %s", index, exc)
            return
        self.write(record)

    # --- drivers ------------------------------------------------------------------------

    async def run_online(self, pending: Iterator[int], n_pending: int) -> None:
        todo = iter(pending)  # shared by the workers: each index is handed out once

        async def worker() -> None:
            for index in todo:
                await self.process(index)

        await asyncio.gather(*(worker() for _ in range(min(self.cfg.teacher.concurrency, n_pending) or 1)))

    async def _drive(self, pending: Iterator[int], n_pending: int) -> None:
        try:
            await (run_batches(self, list(pending)) if self.cfg.batch_api else self.run_online(pending, n_pending))
        finally:
            await self.client.aclose()

    def run(self) -> dict[str, Any]:
        manifest = self._check_manifest()
        self.out.mkdir(parents=True, exist_ok=True)
        offsets = self._restore()
        finished = self.done.count_below(self.cfg.n) == self.cfg.n and not self._unindexed(offsets)
        if finished and manifest and manifest.get("status") == "complete" \
                and manifest.get("counts", {}).get("requested") == self.cfg.n:
            if self.cfg.parquet and not (self.out / "data.parquet").exists():
                write_parquet(self.out)
            return manifest  # a rerun of a finished run: nothing to read, build or ask
        self._setup()
        if self.filter.near is not None:
            self.filter.near.add_many(self.index.load_bands())
        self._load(offsets)
        self._checkpoint()
        n_pending = self.cfg.n - self.done.count_below(self.cfg.n)
        self.client = LLMClient(self.cfg.teacher)
        self.bar = tqdm(total=self.cfg.n, initial=self.cfg.n - n_pending, unit="story",
                        disable=not self.cfg.progress, dynamic_ncols=True)
        self.shards = ShardWriter(self.out / "data", self.cfg.shard_size)
        # (naming: the file's last flush, at close, is a write that can hit a full disk too)
        with naming(self.out / "rejected.jsonl"), open(self.out / "rejected.jsonl", "a") as self.rejected_file:
            self.write_manifest("running")
            try:
                asyncio.run(self._drive(self.done.missing_below(self.cfg.n), n_pending))
            finally:
                self.bar.close()
                self.shards.close()
                self._checkpoint()
                complete = self.done.count_below(self.cfg.n) == self.cfg.n
                manifest = self.write_manifest("complete" if complete else "incomplete")
        write_dataset_card(self.out, manifest)
        if self.cfg.parquet:
            write_parquet(self.out)
        return manifest


def size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return name
    return "1M<n<10M"


def write_dataset_card(out: Path, manifest: dict[str, Any]) -> None:
    cfg, counts = manifest["config"], manifest["counts"]
    coverage = manifest["vocabulary_coverage"]
    front = {
        "pretty_name": "Synthetic TinyStories" + ("-Instruct" if cfg["instruct"] else ""),
        "language": ["en"], "task_categories": ["text-generation"],
        "size_categories": [size_category(counts["accepted"])],
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": "data/*.jsonl"}]}],
    }
    body = f"""# {front['pretty_name']}

Short stories for small children, generated with the recipe of *TinyStories* (Eldan & Li,
2023) by `tinystories generate`: each prompt asks the teacher model for a 3-5 paragraph story
using a random verb, noun and adjective and a random set of story features.

- teacher model: `{cfg['teacher']['model']}` ({cfg['teacher']['api']} API)
- seed: {cfg['seed']}, prompts: {counts['requested']}
- accepted: {counts['accepted']}, rejected: {counts['rejected']} {counts['rejected_by_reason']}
- status: {manifest['status']} (pending: {counts['pending']})
- vocabulary coverage (all words): prompts {coverage['prompts']['all']:.1%}, stories {coverage['stories']['all']:.1%}
- cost of the kept records: ${manifest['usage']['cost_usd_records']}

## Fields

`text` (the training text{'; for Instruct, the instruction lines then `Story: `' if cfg['instruct'] else ''}),
`id` (content hash of `text`), `index` (prompt number), `prompt`, `words` (in the order
{', '.join(f'`{k}`' for k in coverage['prompts'] if k != 'all')}), `features`, `model`, `usage`{', `story`, `summary`, `instruction`' if cfg['instruct'] else ''}.

Rejected stories are kept in `rejected.jsonl` with a `reason`; see `manifest.json` for the
full configuration.
"""
    with atomic_write(out / "README.md") as f:
        f.write("---\n" + yaml.safe_dump(front, sort_keys=False) + "---\n\n" + body)


def write_parquet(out: Path, batch_size: int = 10_000) -> None:
    """OUT/data.parquet from the shards, `batch_size` records at a time (one row group each),
    so memory does not grow with the run; the schema is the first batch's."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise TinyStoriesError("--parquet needs pyarrow: pip install pyarrow") from exc
    records = (r for shard in sorted((out / "data").glob("stories-*.jsonl")) for r in iter_jsonl_repairing(shard))
    with atomic_write(out / "data.parquet", "wb") as f:
        writer = None
        while batch := list(itertools.islice(records, batch_size)):
            table = pa.Table.from_pylist(batch, schema=writer.schema if writer else None)
            writer = writer or pq.ParquetWriter(f, table.schema)
            writer.write_table(table)
        if writer:
            writer.close()
        else:
            pq.write_table(pa.table({}), f)


def generate(cfg: GenerateConfig) -> dict[str, Any]:
    return Run(cfg).run()
