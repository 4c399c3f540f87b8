"""The OpenAI Batch API driver of `generate`: cheaper, slower, and restart-safe.

One batch of stories (then, for TinyStories-Instruct, one of summaries) is in flight at a
time. Before anything is spent, ``batch_state.json`` records the batch's prompts and a fresh
tag; the upload is named after the tag and the batch carries it in its metadata. Each step's
result (the file id, then the batch id) is saved the moment the API returns it. A rerun after
a kill at any instant therefore finds what the killed run made, by its tag in the API's file
and batch lists, before making anything: each batch is created (and paid for) once. If polling
gives up (a long network outage), the state file stays and the run ends with a one-line
error; run the same command again to go on collecting.
"""

from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path
from typing import Any, Protocol

from tinystories.config import read_structured
from tinystories.data.prompts import Prompt, PromptBuilder
from tinystories.data.run_index import DoneSet
from tinystories.errors import TinyStoriesError
from tinystories.llm_client import BatchEnded, Completion, LLMClient, LLMError
from tinystories.utils import write_json

log = logging.getLogger(__name__)


def after_step(step: str) -> None:
    """Called after each step that spends or records ("state", "uploaded", "file recorded",
    "created", "batch recorded"): a seam where the kill-at-every-step test stops the run.
    Does nothing in a real run."""


class Run(Protocol):
    """What the driver needs of a generation run (`data.generate.Run`)."""
    out: Path
    cfg: Any  # GenerateConfig
    client: LLMClient
    builder: PromptBuilder
    done: DoneSet
    failed: dict[int, str]

    def judge(self, prompt: Prompt, completion: Completion) -> dict[str, Any]: ...
    def finish_instruct(self, record: dict[str, Any], prompt: Prompt, summary: Completion) -> dict[str, Any]: ...
    def write(self, record: dict[str, Any]) -> None: ...


async def run_batches(run: Run, pending: list[int]) -> None:
    """OpenAI Batch API: one batch of stories (then one of summaries for --instruct) at a
    time; every step is recorded first, so a restarted run collects, never pays twice."""
    state_path = run.out / "batch_state.json"
    todo = list(pending)
    mine: set[str] = set()  # tags recorded by this process; any other came from a run that may have spent
    while True:
        state = read_structured(state_path, "batch state") if state_path.exists() else None
        if state is None:
            todo = [i for i in todo if i not in run.done]
            chunk, todo = todo[: run.cfg.teacher.batch_max_requests], todo[run.cfg.teacher.batch_max_requests:]
            if not chunk:
                return
            state = _record(state_path, {"phase": "story", "indices": chunk}, mine)
        in_batch = {int(i) for i in state.get("indices") or state["records"]}
        todo = [i for i in todo if i not in in_batch]  # a prompt is sent at most once per session
        if not state.get("batch_id"):
            await _start(run, state, state_path, resume=state.get("tag") not in mine)
        try:
            results = await run.client.collect_batch(state["batch_id"])
        except BatchEnded as exc:
            # The batch ended (failed, expired, cancelled) with no results: its prompts count as
            # failed this session, and the next run submits them afresh instead of re-polling it.
            for index in in_batch:
                run.failed[index] = str(exc)
            log.warning("%s", exc)
            state_path.unlink()
            continue
        except LLMError as exc:  # polling gave up; the batch may still be running, and is paid for
            raise TinyStoriesError(f"could not collect batch {state['batch_id']} ({exc}); it stays in "
                                   f"{state_path}: run the same command again to go on collecting it") from None
        next_state = handle_batch(run, state, results)
        if next_state:
            _record(state_path, next_state, mine)  # the loop's next turn submits it
        else:
            state_path.unlink()


def _record(state_path: Path, batch: dict[str, Any], mine: set[str]) -> dict[str, Any]:
    """Save a batch about to be submitted, with its tag, before anything is uploaded."""
    state = {**batch, "tag": uuid.uuid4().hex, "recorded_at": time.time(), "input_file_id": None, "batch_id": None}
    write_json(state_path, state)
    mine.add(state["tag"])
    after_step("state")
    return state


async def _start(run: Run, state: dict[str, Any], state_path: Path, resume: bool) -> None:
    """Upload and create the recorded batch, or adopt what a killed run already made; the
    file id and then the batch id are saved as soon as the API returns them."""
    tag, since = state["tag"], state["recorded_at"]
    try:
        if not state["input_file_id"]:
            state["input_file_id"] = await run.client.upload_batch(_requests(run, state), tag, since, resume)
            after_step("uploaded")
            write_json(state_path, state)
            after_step("file recorded")
        state["batch_id"] = await run.client.create_batch(state["input_file_id"], tag, since, resume)
        after_step("created")
        write_json(state_path, state)
        after_step("batch recorded")
    except LLMError as exc:
        raise TinyStoriesError(f"could not submit a batch of {len(state.get('indices') or state['records'])} "
                               f"requests ({exc}); "
                               f"it stays in {state_path}: run the same command again") from None


def _requests(run: Run, state: dict[str, Any]) -> dict[str, str]:
    """custom_id -> prompt of a recorded batch (prompts are a pure function of the seed and index)."""
    if state["phase"] == "story":
        return {str(i): run.builder.prompt(i).text for i in state["indices"]}
    return {i: run.builder.summary_request(r["text"]) for i, r in state["records"].items()}

def handle_batch(run: Run, state: dict[str, Any], results: dict[str, Completion | str]) -> dict[str, Any] | None:
    """Write the records a finished batch completes; the summary batch still needed, if any."""
    need_summary: dict[str, dict[str, Any]] = {}
    items = state["indices"] if state["phase"] == "story" else list(state["records"])
    for key in map(str, items):
        index, result = int(key), results.get(key, "missing from the batch output")
        if index in run.done:
            continue
        if isinstance(result, str):
            run.failed[index] = result
            continue
        prompt = run.builder.prompt(index)
        if state["phase"] == "summary":
            run.write(run.finish_instruct(state["records"][key], prompt, result))
            continue
        record = run.judge(prompt, result)
        if run.cfg.instruct and "reason" not in record:
            need_summary[key] = record
        else:
            run.write(record)
    return {"phase": "summary", "records": need_summary} if need_summary else None
