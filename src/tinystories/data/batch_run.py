"""The OpenAI Batch API driver of `generate`: cheaper, slower, and restart-safe.

One batch of stories (then, for TinyStories-Instruct, one of summaries) is in flight at a
time. Its id is written to ``batch_state.json`` the moment the API returns it, before any
polling, so a restarted run collects the batch it already paid for instead of submitting it
again. (A crash between the API creating the batch and that write is the one gap.) If
polling gives up (a long network outage), the state file stays and the run ends with a
one-line error; run the same command again to go on collecting.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Protocol

from tinystories.data.prompts import Prompt, PromptBuilder
from tinystories.errors import TinyStoriesError
from tinystories.llm_client import BatchEnded, Completion, LLMClient, LLMError
from tinystories.utils import write_json

log = logging.getLogger(__name__)


class Run(Protocol):
    """What the driver needs of a generation run (`data.generate.Run`)."""
    out: Path
    cfg: Any  # GenerateConfig
    client: LLMClient
    builder: PromptBuilder
    done: set[int]
    failed: dict[int, str]

    def judge(self, prompt: Prompt, completion: Completion) -> dict[str, Any]: ...
    def finish_instruct(self, record: dict[str, Any], prompt: Prompt, summary: Completion) -> dict[str, Any]: ...
    def write(self, record: dict[str, Any]) -> None: ...


async def run_batches(run: Run, pending: list[int]) -> None:
    """OpenAI Batch API: one batch of stories (then one of summaries for --instruct) at a
    time; the batch id is saved first, so a restarted run collects it instead of paying twice."""
    state_path = run.out / "batch_state.json"
    todo = list(pending)
    while True:
        state = json.loads(state_path.read_text()) if state_path.exists() else None
        if state is None:
            todo = [i for i in todo if i not in run.done]
            chunk, todo = todo[: run.cfg.teacher.batch_max_requests], todo[run.cfg.teacher.batch_max_requests:]
            if not chunk:
                return
            batch_id = await _submit(run, {str(i): run.builder.prompt(i).text for i in chunk})
            state = {"phase": "story", "batch_id": batch_id, "indices": chunk}
            write_json(state_path, state)
        in_batch = {int(i) for i in state.get("indices") or state["records"]}
        todo = [i for i in todo if i not in in_batch]  # a prompt is sent at most once per session
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
            next_state["batch_id"] = await _submit(
                run, {i: run.builder.summary_request(r["text"]) for i, r in next_state["records"].items()})
            write_json(state_path, next_state)
        else:
            state_path.unlink()


async def _submit(run: Run, requests: dict[str, str]) -> str:
    try:
        return await run.client.submit_batch(requests)
    except LLMError as exc:
        raise TinyStoriesError(f"could not submit a batch of {len(requests)} requests ({exc}); the stories "
                               "written so far are kept: run the same command again") from None

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
