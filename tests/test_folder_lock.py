"""One writer per output folder: a second process refuses at once, naming the first; a lock
left by a killed process is taken over without anyone deleting anything."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fault_server import ServerProcess
from tinystories.cli import main
from tinystories.folder_lock import LOCK_NAME, hold_folder

KEY_ENV = "TS_LOCK_TEST_KEY"
CLI = [sys.executable, "-m", "tinystories.cli"]

# Each command that resumes a folder, pointed at `{out}`; the lock comes before anything else is read.
COMMANDS = {
    "generate": ["generate", "--base-url", "http://127.0.0.1:9/v1", "--model", "m", "--num-stories", "0",
                 "--out", "{out}"],
    "train": ["train", "--data", "{out}/nowhere", "--out", "{out}"],
    "pretokenize": ["pretokenize", "--train", "{out}/nowhere.txt", "--out", "{out}"],
    "eval": ["eval", "bpb", "{out}/nowhere", "--out", "{out}"],
    "interpret": ["interpret", "{out}/nowhere", "--out", "{out}"],
}


@pytest.mark.parametrize("command", COMMANDS)
def test_every_resuming_command_refuses_a_held_folder(command: str, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    argv = [a.replace("{out}", str(tmp_path)) for a in COMMANDS[command]]
    with hold_folder(tmp_path):
        assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"is in use by process {os.getpid()} " in err and " since " in err, err
    # Released at the end of the block: the command now gets past the lock (to its own end or complaint).
    main(argv)
    assert "in use" not in capsys.readouterr().err
    with hold_folder(tmp_path):  # and a command that failed has released it too
        pass


@pytest.mark.parametrize("command", [c for c in COMMANDS if c != "generate"])  # (generate's 0 stories succeed)
def test_a_command_that_fails_at_once_leaves_no_new_folder(command: str, tmp_path: Path) -> None:
    """A typo (here: inputs that do not exist) must not leave an empty output folder behind,
    while a folder that was there before keeps its lock file (removing it could race)."""
    out = tmp_path / "new"
    argv = [a.replace("{out}", str(out)) for a in COMMANDS[command]]
    assert main(argv) in (1, 2) and not out.exists()
    out.mkdir()
    main(argv)
    assert (out / LOCK_NAME).exists()


@pytest.mark.slow
def test_a_second_process_refuses_and_a_killed_holder_is_taken_over(tmp_path: Path) -> None:
    """The issue's report: the same `generate` started twice wrote 2,660 stories twice."""
    server = ServerProcess(delay=0.05, api_key="k")
    out, n = tmp_path / "gen", 40
    cmd = [*CLI, "generate", "--base-url", server.url, "--model", "scripted", "--api-key-env", KEY_ENV,
           "--num-stories", str(n), "--out", str(out), "--set", "filters.min_words=40", "--set", "progress=false"]
    env = {**os.environ, KEY_ENV: "k"}
    try:
        first = subprocess.Popen([*cmd, "--concurrency", "1"], env=env, stderr=subprocess.DEVNULL)
        shard = out / "data" / "stories-00000.jsonl"
        deadline = time.time() + 30
        while time.time() < deadline and not (shard.exists() and shard.read_bytes().count(b"\n") >= 3):
            time.sleep(0.02)
        second = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=60)
        assert second.returncode == 2 and second.stderr.count("\n") == 1, second.stderr
        holder = json.loads((out / LOCK_NAME).read_text())
        assert holder["pid"] == first.pid and "generate" in holder["command"]
        assert f"is in use by process {first.pid} (`tinystories generate" in second.stderr
        assert f"since {holder['since']}" in second.stderr and f"kill {first.pid}" in second.stderr

        os.kill(first.pid, signal.SIGKILL)  # the kernel drops its lock; the lock file stays
        first.wait()
        assert (out / LOCK_NAME).exists() and shard.read_bytes().count(b"\n") < n
        third = subprocess.run([*cmd, "--concurrency", "16"], check=False, env=env, capture_output=True, text=True,
                               timeout=60)
        assert third.returncode == 0, third.stderr[-2000:]
    finally:
        server.close()
    lines = [json.loads(line) for p in [out / "rejected.jsonl", shard] for line in p.read_text().splitlines()]
    assert sorted(r["index"] for r in lines) == list(range(n)), "each prompt index written once"
