"""OUT/index/ of a generation run and the near-duplicate band keys.

The band-key index must decide exactly as datasketch's MinHashLSH did (on real TinyStories
text with planted near duplicates); the on-disk index must survive torn rows, stale
checkpoints and a SIGKILL, with every prompt index ending exactly once; a finished run's
rerun must not contact the teacher.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from datasketch import MinHashLSH

from fault_server import ServerProcess
from test_generation_pipeline import KEY, KEY_ENV, assert_exactly_once, make_config, records
from tinystories.data import keyset
from tinystories.data.corpus import read_stories
from tinystories.data.filters import FilterConfig, StoryFilter, normalise, words_of
from tinystories.data.generate import Run, generate, write_parquet
from tinystories.data.keyset import KeySet
from tinystories.data.near_duplicates import BandIndex
from tinystories.data.prompts import PromptBuilder
from tinystories.data.run_index import DoneSet, RunIndex

CLI = [sys.executable, "-m", "tinystories.cli"]


@pytest.fixture(scope="module")
def server():
    s = ServerProcess(api_key=KEY)
    yield s
    s.close()


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)


def planted(stories: list[str]) -> list[str]:
    """Real stories, with near and exact duplicates of earlier ones planted among them."""
    out = []
    for i, s in enumerate(stories):
        out.append(s)
        if i % 7 == 3:  # one word changed: a near duplicate
            ws = s.split()
            ws[len(ws) // 2] = "banana"
            out.append(" ".join(ws))
        if i % 29 == 5:  # the same story again, later
            out.append(stories[i // 2])
        if i % 13 == 0:  # a story cut in half shares far fewer 3-grams: usually not a duplicate
            out.append(" ".join(s.split()[: len(s.split()) // 2]))
    return out


def test_band_keys_decide_as_datasketch_minhashlsh(monkeypatch):
    monkeypatch.setattr(keyset, "MERGE_MIN", 256)  # exercise the sorted-array merges too
    stories = planted([normalise(s) for s in read_stories("bundled:train")[0][:1500]])
    cfg = FilterConfig()
    minhash = StoryFilter(cfg, PromptBuilder(seed=0).vocabulary)._minhash
    lsh = MinHashLSH(threshold=cfg.near_duplicate_threshold, num_perm=cfg.minhash_perm)
    index = BandIndex(cfg.near_duplicate_threshold, cfg.minhash_perm)
    old, new = [], []
    for i, story in enumerate(stories):
        m = minhash(words_of(story))
        old.append(bool(lsh.query(m)))
        if not old[-1]:
            lsh.insert(str(i), m)
        keys = index.keys(m.hashvalues)
        new.append(index.contains_any(keys))
        if not new[-1]:
            index.add(keys)
    assert new == old
    assert 200 < sum(old) < len(stories) // 2, "the planted near duplicates are found"
    assert len(index) == index.b * (len(stories) - sum(new))


def test_keyset_and_doneset():
    s = KeySet()
    s.add_many(np.array([5, 1, 9], np.uint64))
    s.add([7])
    assert 7 in s and 9 in s and 2 not in s and 2**64 - 1 not in s
    assert s.contains_any(np.array([3, 1], np.uint64)) and not s.contains_any(np.array([3, 4], np.uint64))
    d = DoneSet()
    for i in (0, 3, 3, 5000):
        d.add(i)
    assert len(d) == 3 and 3 in d and 4 not in d and -1 not in d and 10**9 not in d
    assert d.count_below(4) == 2 and list(d.missing_below(6)) == [1, 2, 4, 5]


def test_checkpoint_cuts_rows_it_does_not_count_and_drops_a_stale_one(tmp_path):
    (tmp_path / "rejected.jsonl").write_text('{"index": 0}\n')
    index = RunIndex(tmp_path, 2, {"threshold": 0.8})
    index.add(0, None)
    index.add(1, np.array([1, 2], np.uint64))
    index.save({"n": 1})
    # Rows appended after the checkpoint (a kill before the next one), and half a row.
    with open(tmp_path / "index" / "done.bin", "ab") as f:
        f.write(np.array([7], np.int64).tobytes() + b"\x01\x02\x03")
    ck = RunIndex(tmp_path, 2, {"threshold": 0.8}).load()
    assert ck is not None and ck.state == {"n": 1} and ck.done.tolist() == [0, 1]
    assert (tmp_path / "index" / "done.bin").stat().st_size == 16
    # Other near-duplicate settings: the keys mean nothing, start again from the JSONL.
    assert RunIndex(tmp_path, 2, {"threshold": 0.7}).load() is None
    assert not (tmp_path / "index" / "checkpoint.json").exists()
    index = RunIndex(tmp_path, 2, {"threshold": 0.8})
    index.add(0, None)
    index.save({})
    # A JSONL file shorter than what the checkpoint covers (replaced by hand): stale.
    (tmp_path / "rejected.jsonl").write_text("")
    assert RunIndex(tmp_path, 2, {"threshold": 0.8}).load() is None


def test_finished_rerun_asks_nothing_and_the_index_matches_a_rebuild(server, tmp_path):
    cfg = make_config(server.url, tmp_path, n=80, seed=3)
    first = generate(cfg)
    assert first["status"] == "complete"
    asked = server.stats()["requests"]
    start = time.perf_counter()
    assert generate(cfg) == first  # returned at once, nothing rewritten
    assert time.perf_counter() - start < 1.0
    assert server.stats()["requests"] == asked + 1  # this stats call is the only request since

    # --parquet streams the shards in row groups: the same records, in order.
    pq = pytest.importorskip("pyarrow.parquet", reason="needs pyarrow: pip install -e '.[dev]'")
    write_parquet(tmp_path, batch_size=7)
    accepted, _ = records(tmp_path)
    assert pq.read_table(tmp_path / "data.parquet").to_pylist() == accepted
    (tmp_path / "data.parquet").unlink()

    # A rebuild from the JSONL (no index) counts the same as the index did.
    shutil.rmtree(tmp_path / "index")
    bigger = dataclasses.replace(cfg, n=90)
    from_jsonl = generate(bigger)
    assert (tmp_path / "index" / "checkpoint.json").exists()
    shutil.copytree(tmp_path, tmp_path.parent / "copy")
    shutil.rmtree(tmp_path / "index")
    (tmp_path / "manifest.json").unlink()
    rebuilt = generate(bigger)
    for key in ("counts", "vocabulary_coverage"):
        assert rebuilt[key] == from_jsonl[key]
    assert rebuilt["usage"]["records"] == from_jsonl["usage"]["records"]
    assert_exactly_once(tmp_path, 90)

    # The near-duplicate keys come back from OUT/index/bands.bin: a story accepted before the
    # restart still rejects its near duplicate.
    run = Run(dataclasses.replace(bigger, out=str(tmp_path.parent / "copy"), n=91))
    run._restore()
    run._setup()
    run.filter.near.add_many(run.index.load_bands())
    assert len(run.filter.near) == run.filter.near.b * from_jsonl["counts"]["accepted"]
    story = json.loads((tmp_path / "data" / "stories-00000.jsonl").open().readline())["text"]
    near = story.replace(".", ",", 1)
    assert run.filter.check(near, {}, "x") == "near_duplicate"


@pytest.mark.slow
def test_resume_from_the_index_after_a_kill_ends_each_index_once(tmp_path):
    slow = ServerProcess(delay=0.01, api_key=KEY)
    out, n = tmp_path / "run", 240
    cmd = [*CLI, "generate", "--base-url", slow.url, "--model", "scripted", "--api-key-env", KEY_ENV,
           "--num-stories", str(n), "--seed", "8", "--concurrency", "4", "--out", str(out),
           "--set", "filters.min_words=40", "--set", "progress=false", "--set", "index_every_s=0.05"]
    env = dict(os.environ)
    try:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shard, ck = out / "data" / "stories-00000.jsonl", out / "index" / "checkpoint.json"
        deadline = time.time() + 30
        while time.time() < deadline and not (ck.exists() and shard.exists()
                                               and shard.read_bytes().count(b"\n") >= 100):
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        covered = json.loads(ck.read_text())["rows"]["done"]
        assert 0 < covered < n, "killed mid-run, with a checkpoint"
        with shard.open("a") as f:  # what a kill in the middle of a write leaves behind
            f.write('{"id": "torn", "index": 3, "text": "Once upon')
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False, timeout=60)
        assert done.returncode == 0, done.stderr[-2000:]
    finally:
        slow.close()
    accepted = assert_exactly_once(out, n)
    index = json.loads((out / "index" / "checkpoint.json").read_text())
    assert index["rows"]["done"] == n and index["state"]["accepted"] == len(accepted)
    assert sorted(np.fromfile(out / "index" / "done.bin", np.int64).tolist()) == list(range(n))
