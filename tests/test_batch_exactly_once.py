"""The Batch API driver pays for each batch once, whenever the run is killed.

The run is stopped right after each step that spends or records (a `KilledHere` raised from
`batch_run.after_step`, which no `except Exception` catches: nothing in the driver after
that step runs, as after a SIGKILL), then run again; the scripted
server counts uploads and batch creations. It also loses the answer to an upload and to a
batch creation it did make, which the client's retries must not turn into a second one.
"""

from __future__ import annotations

import json

import pytest

from fault_server import ServerProcess
from test_generation_pipeline import KEY, api_key, assert_exactly_once, make_config  # noqa: F401 - fixture
from tinystories.data import batch_run
from tinystories.data.generate import generate

STEPS = ["state", "uploaded", "file recorded", "created", "batch recorded"]


class KilledHere(BaseException):
    """Stands for a SIGKILL at one step: nothing after it in the run happens."""


def spent(server: ServerProcess) -> tuple[int, int]:
    stats = server.stats()
    return stats.get("files_uploaded", 0), stats.get("batches_created", 0)


def test_a_kill_after_any_step_never_pays_twice(tmp_path, monkeypatch):
    """TinyStories-Instruct: a story batch, then a summary batch. The run is killed after each
    step of each batch in turn, each rerun resuming the killed one (and dying one step on)."""
    server = ServerProcess(api_key=KEY)
    cfg = make_config(server.url, tmp_path, n=6, instruct=True, batch_api=True)
    try:
        for batch in ("stories", "summaries"):
            for step in STEPS:
                def kill(name: str, step: str = step) -> None:
                    if name == step:
                        raise KilledHere(step)

                monkeypatch.setattr(batch_run, "after_step", kill)
                with pytest.raises(KilledHere):
                    generate(cfg)
                state = json.loads((tmp_path / "batch_state.json").read_text())
                assert state["phase"] == ("story" if batch == "stories" else "summary"), (batch, step)
        monkeypatch.setattr(batch_run, "after_step", lambda name: None)
        manifest = generate(cfg)
        assert manifest["status"] == "complete" and not (tmp_path / "batch_state.json").exists()
        assert_exactly_once(tmp_path, 6)
        assert spent(server) == (2, 2)  # one upload and one batch for the stories, the same for their summaries
    finally:
        server.close()


def test_a_lost_answer_is_found_not_repeated(tmp_path):
    lossy = ServerProcess(api_key=KEY, lost_uploads=1, lost_creates=1)
    try:
        manifest = generate(make_config(lossy.url, tmp_path, n=5, batch_api=True))
        assert manifest["status"] == "complete"
        assert_exactly_once(tmp_path, 5)
        assert spent(lossy) == (1, 1)
    finally:
        lossy.close()
