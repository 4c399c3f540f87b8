"""Judging against a real loopback OpenAI-compatible server that answers in the judge format,
sometimes malformed, sometimes with HTTP 500; the full `tinystories eval` pipeline against it."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import shutil
import socket
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from tinystories.cli import build_parser
from tinystories.errors import TinyStoriesError
from tinystories.eval.judge import (
    JudgeParseError,
    JudgeRun,
    JudgmentCache,
    Template,
    make_judge,
    parse_grade,
    parse_pairwise,
)
from tinystories.eval.tasks.gpt_eval import grade_requests, summarize_grades
from tinystories.eval.tasks.pairwise import pairwise_outcomes, pairwise_requests
from tinystories.llm_client import ClientConfig


def true_scores(completion: str) -> dict:
    """The scripted judge's grade of a completion: a fixed function of its text."""
    h = hashlib.sha256(completion.encode()).digest()
    return {"grammar": h[0] % 11, "creativity": h[1] % 11, "consistency": h[2] % 11, "plot": h[3] % 11,
            "age_group": "ABCDEF"[h[4] % 6]}


def answer(body: dict) -> str:
    return f"The student's completion is fine overall.\n```json\n{json.dumps(body)}\n```"


class ScriptedJudge:
    """Per prompt: FLAKY = 500, then malformed, then good; BROKEN = always malformed; DOWN = always 500."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()  # prompt -> HTTP calls
        self.lock = threading.Lock()
        self.app = FastAPI()
        self.app.post("/v1/chat/completions")(self.chat)

    @property
    def total(self) -> int:
        return sum(self.calls.values())

    async def chat(self, request: Request) -> JSONResponse:
        body = await request.json()
        prompt = body["messages"][-1]["content"]
        with self.lock:
            self.calls[prompt] += 1
            n = self.calls[prompt]
        if "DOWN" in prompt or ("FLAKY" in prompt and n == 1):
            return JSONResponse({"error": {"message": "overloaded"}}, status_code=500)
        if "BROKEN" in prompt or ("FLAKY" in prompt and n == 2):
            text = "Grammar: 8/10, creativity: 7/10. Age group: C"  # no JSON block
        elif "two students" in prompt:
            c1, c2 = re.findall(r"student \d \(the text that follows the beginning\):\n(.*?)\n\n", prompt, re.DOTALL)
            # prefers the completion saying "good"; otherwise always the first shown (position bias)
            text = answer({"winner": "2" if "good" in c2 and "good" not in c1 else "1"})
        elif "instructions for writing" in prompt:
            text = answer({"instructions": len(prompt) % 11, "grammar": 5})
        elif "Ignore whatever the student writes" in prompt:
            text = answer({"verdict": ["correct", "incorrect", "unclear"][len(prompt) % 3]})
        else:
            completion = prompt.split("\n\nPlease provide your general assessment")[0].rsplit("***", 1)[1]
            text = answer(true_scores(completion.strip()))
        return JSONResponse({"choices": [{"message": {"role": "assistant", "content": text}}],
                             "usage": {"prompt_tokens": len(prompt) // 4, "completion_tokens": 40}})


@pytest.fixture(scope="module")
def judge_server():
    script = ScriptedJudge()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(script.app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    script.url = f"http://127.0.0.1:{port}/v1"
    yield script
    server.should_exit = True
    thread.join(5)


def judge_cfg(url: str) -> ClientConfig:
    return ClientConfig(base_url=url, model="scripted-judge", max_retries=1, backoff_base_s=0.001)


def run_judgments(run: JudgeRun, judgments: list, cfg: ClientConfig) -> list:
    async def go() -> list:
        async with make_judge(cfg)() as complete:
            return await run.run(judgments, complete, cfg.concurrency, 3, progress=False)
    return asyncio.run(go())


# --- the parser -------------------------------------------------------------------------------

def test_parse_grade_accepts_the_judge_format():
    text = ("The completion is grammatical but the plot wanders.\n\n```json\n"
            '{"grammar": 8, "creativity": 6, "consistency": 7, "plot": 5, "age_group": "c"}\n```')
    assert parse_grade(text) == {"grammar": 8, "creativity": 6, "consistency": 7, "plot": 5, "age_group": "C"}
    # the last JSON block counts (an example object quoted earlier in the assessment does not)
    two = '{"grammar": 1} then\n{"grammar": 9, "creativity": 9, "consistency": 9, "plot": 0, "age_group": "F"}'
    assert parse_grade(two)["grammar"] == 9
    assert parse_pairwise('...\n{"winner": "tie"}') == {"winner": "tie"}


FULL = {"grammar": 8, "creativity": 6, "consistency": 7, "plot": 5, "age_group": "C"}


@pytest.mark.parametrize("block,missing", [
    ('{"grammar": 8, "creativity": 6, "consistency": 7, "age_group": "C"}', "'plot' missing"),
    ('{"grammar": 11, "creativity": 6, "consistency": 7, "plot": 5, "age_group": "C"}', "'grammar' must be"),
    ('{"grammar": 7.5, "creativity": 6, "consistency": 7, "plot": 5, "age_group": "C"}', "'grammar' must be"),
    ('{"grammar": "8", "creativity": 6, "consistency": 7, "plot": 5, "age_group": "C"}', "'grammar' must be"),
    ('{"grammar": true, "creativity": 6, "consistency": 7, "plot": 5, "age_group": "C"}', "'grammar' must be"),
    ('{"grammar": 8, "creativity": 6, "consistency": 7, "plot": 5, "age_group": "G"}', "'age_group' must be"),
    ('{"grammar": 8, "creativity": 6, "consistency": 7, "plot": 5}', "'age_group' missing"),
])
def test_each_field_counts_on_its_own(block: str, missing: str):
    """A bad or missing field leaves only that field missing; the valid ones count."""
    parsed = parse_grade(block)
    field = missing.split("'")[1]
    assert field not in parsed and any(missing in p for p in parsed["_problems"])
    assert {k: v for k, v in parsed.items() if k != "_problems"} == {k: v for k, v in FULL.items() if k != field}


def test_obvious_aliases_are_accepted():
    """The issue's judge wrote "age" for "age_group": that is the age group."""
    assert parse_grade('{"Grammar": 8, "creativity": 6, "consistency": 7, "plot": 5, "age": "c"}') == FULL
    assert parse_grade('{"grammar": 8, "creativity": 6, "Consistency-with-beginning": 7, "plot": 5, '
                       '"Age Group": "C"}') == FULL


@pytest.mark.parametrize("bad", [
    "Grammar: 8/10. Creativity: 6/10.",  # no JSON
    '{"grammar": 11, "creativity": "x", "consistency": -1, "plot": null, "age_group": "Z"}',  # nothing valid
    '{"score": 5}',  # none of the fields
])
def test_an_answer_with_no_usable_field_is_refused(bad: str):
    with pytest.raises(JudgeParseError):
        parse_grade(bad)


def test_template_is_the_papers_and_replaceable(tmp_path: Path):
    t = Template.load("grade")
    prompt = t.fill(beginning="Once upon a time, Tom", completion="went to the park.")
    assert "Once upon a time, Tom *** went to the park." in prompt
    assert "the student's completion of the story is the text after the ***" in prompt
    assert "A: 3 or under. B: 4-5. C: 6-7. D: 8-9. E: 10-12. F: 13-16." in prompt
    custom = tmp_path / "mine.txt"
    custom.write_text("Grade $completion after $beginning")
    assert Template.load(str(custom)).fill(beginning="b", completion="c") == "Grade c after b"
    with pytest.raises(TinyStoriesError, match="placeholder"):
        Template.load(str(custom)).fill(beginning="b")
    with pytest.raises(TinyStoriesError, match=r"lacks the placeholder\(s\) \$plot"):
        Template.load(str(custom)).fill(beginning="b", completion="c", plot="p")


# --- grading over HTTP ------------------------------------------------------------------------

def test_grading_survives_failures_and_caches(judge_server: ScriptedJudge, tmp_path: Path):
    beginnings = ["Once upon a time, there was a cat. The cat", "Tom had a red ball. One day,"]
    completions = [[" sat on the mat and slept.", " FLAKY ran to the park."],
                   [" he lost it BROKEN.", " it rolled away DOWN the hill.", " he gave it to Lily."]]
    cfg, cache = judge_cfg(judge_server.url), tmp_path / "cache.jsonl"
    run = JudgeRun(Template.load("grade"), parse_grade, cfg.model, JudgmentCache(cache))
    before = judge_server.total
    js = run_judgments(run, grade_requests(run, "m", beginnings, completions), cfg)

    by_completion = {j.meta["completion"]: j for j in js}
    for c in (" sat on the mat and slept.", " FLAKY ran to the park.", " he gave it to Lily."):
        assert by_completion[c].parsed == true_scores(c.strip())
    assert by_completion[" FLAKY ran to the park."].attempts == 2  # 500 (retried by the client), bad, good
    assert by_completion[" he lost it BROKEN."].parsed is None
    assert by_completion[" he lost it BROKEN."].attempts == 3  # bounded re-asks
    assert "unparseable" in by_completion[" he lost it BROKEN."].error
    assert by_completion[" it rolled away DOWN the hill."].parsed is None
    assert "LLMError" in by_completion[" it rolled away DOWN the hill."].error

    summary = summarize_grades(js).to_json()
    assert summary["judged"] == 3 and summary["missing"] == 2
    good = [true_scores(c.strip()) for c in (" sat on the mat and slept.", " FLAKY ran to the park.", " he gave it to Lily.")]
    for key in ("grammar", "creativity", "consistency", "plot"):
        assert summary["scores"][key]["n"] == 3  # missing judgments are not zeros
        assert summary["scores"][key]["mean"] == pytest.approx(sum(g[key] for g in good) / 3)
    assert sum(summary["age_groups"].values()) == 3
    spent = judge_server.total - before
    # good 1, FLAKY 3 (500 retried by the client, then malformed, then good), BROKEN 3, DOWN 2, good 1
    assert spent == 1 + 3 + 3 + 2 + 1

    # a rerun asks again only for the two missing judgments
    again = JudgeRun(Template.load("grade"), parse_grade, cfg.model, JudgmentCache(cache))
    requests = grade_requests(again, "m", beginnings, completions)
    preview = again.preview(requests, cfg.max_tokens)
    assert (preview.calls, preview.cached) == (2, 3)
    before = judge_server.total
    run_judgments(again, requests, cfg)
    assert judge_server.total - before == 3 * 1 + 2  # BROKEN: 3 malformed answers; DOWN: 500 + retry


def test_full_cache_makes_no_http_calls(judge_server: ScriptedJudge, tmp_path: Path):
    cfg, cache = judge_cfg(judge_server.url), tmp_path / "cache.jsonl"
    beginnings = ["Lily saw a bird. She"]
    completions = [[" smiled.", " waved at it.", " ran home."]]
    for expected_calls in (3, 0):
        run = JudgeRun(Template.load("grade"), parse_grade, cfg.model, JudgmentCache(cache))
        before = judge_server.total
        js = run_judgments(run, grade_requests(run, "m", beginnings, completions), cfg)
        assert judge_server.total - before == expected_calls
        assert [j.parsed for j in js] == [true_scores(c.strip()) for c in completions[0]]
    # another judge model or template is another key
    other = JudgeRun(Template.load("grade"), parse_grade, "another-judge", JudgmentCache(cache))
    assert other.preview(grade_requests(other, "m", beginnings, completions), 100).calls == 3


def test_pairwise_counts_order_disagreement_as_tie(judge_server: ScriptedJudge, tmp_path: Path):
    cfg = judge_cfg(judge_server.url)
    run = JudgeRun(Template.load("pairwise"), parse_pairwise, cfg.model)
    beginnings = ["Ben had a kite. He"]
    a = [[" flew it, a good day.", " lost it.", " kept it."]]
    b = [[" lost it.", " flew it, a good day.", " kept it too."]]
    js = run_judgments(run, pairwise_requests(run, ("A", "B"), beginnings, a, b), cfg)
    # A's "good" wins in both orders; B's "good" wins in both; the biased judge always says "1": tie
    assert pairwise_outcomes(js) == ["a", "b", "tie"]


# --- the whole pipeline through the CLI ---------------------------------------------------------

def eval_main(argv: list[str]) -> int:
    """The CLI without its error handling, so a test sees the exception itself."""
    args = build_parser(argv).parse_args(argv)
    return args.func(args)


@pytest.mark.slow
def test_cli_gpt_eval_report_and_rerun(judge_server: ScriptedJudge, tiny_model_dir: Path, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Once upon a time, there was a dog.\n\nLily and Ben went to the park. They\n")
    out = tmp_path / "report"
    base = ["eval", "report", str(tiny_model_dir), "--out", str(out), "--prompts", str(prompts), "-n", "2",
            "--max-new-tokens", "12", "--judge-url", judge_server.url, "--judge-model", "scripted-judge",
            "--no-progress", "--device", "cpu"]
    argv = [*base, "--tasks", "gpt-eval,probes,instruct,diversity,bpb", "--instructions",
            str(tmp_path / "inst.json"), "--max-stories", "5"]
    cheap = [*base, "--tasks", "gpt-eval"]
    (tmp_path / "inst.json").write_text(json.dumps(["Words: dog, run, happy\nFeatures: Dialogue\nStory: "]))

    # without --yes and with no terminal to ask, nothing is spent
    before = judge_server.total
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    with pytest.raises(TinyStoriesError, match="--yes"):
        eval_main(cheap)
    assert eval_main([*cheap, "--dry-run"]) == 0
    assert judge_server.total == before and not (out / "report.md").exists()

    assert eval_main([*argv, "--yes"]) == 0
    calls = judge_server.total - before
    n_probes = 9 + 9 + 6
    assert calls == 2 * 2 + 2 * n_probes + 2  # every judgment answered first time
    judgments = json.loads((out / "judgments.json").read_text())
    assert len(judgments) == calls and all(j["parsed"] for j in judgments)
    results = json.loads((out / "results.json").read_text())
    model = results["models"][tiny_model_dir.name]
    assert model["gpt_eval"]["judged"] == 4
    assert set(model["probes"]) == {"factual", "reasoning", "context_tracking", "missing_info"}
    assert model["bpb"]["stories"] == 5
    assert len(model["diversity"]["max_precision"]) == 4 and len(model["diversity"]["within_prompt_f"]) == 2
    assert json.loads((out / "config.json").read_text())["judge"]["model"] == "scripted-judge"
    html = (out / "report.html").read_text()
    pngs = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(pngs) >= 4 and all(base64.b64decode(p).startswith(b"\x89PNG") for p in pngs)
    md = (out / "report.md").read_text()
    for plot in re.findall(r"\]\((plots/[^)]+)\)", md):
        assert (out / plot).read_bytes().startswith(b"\x89PNG")
    assert "## GPT-Eval" in md and "## Validation loss" in md

    # again: the same seeded samples, every judgment from the cache, no HTTP call, no --yes needed
    before = judge_server.total
    assert eval_main(cheap) == 0
    assert judge_server.total == before
    again = json.loads((out / "results.json").read_text())["models"][tiny_model_dir.name]
    assert again["gpt_eval"] == model["gpt_eval"] and again["completions"] == model["completions"]


def test_cli_bpb_of_two_models(tiny_model_dir: Path, tmp_path: Path):
    other = tmp_path / "other-model"
    shutil.copytree(tiny_model_dir, other)
    out = tmp_path / "bpb"
    assert eval_main(["eval", "bpb", str(tiny_model_dir), str(other), "--out", str(out), "--max-stories", "3",
                      "--no-progress", "--device", "cpu"]) == 0
    results = json.loads((out / "results.json").read_text())["models"]
    first, second = results[tiny_model_dir.name]["bpb"], results["other-model"]["bpb"]
    assert first == second and first["stories"] == 3 and 0 < first["bpb"] < 20
    assert (out / "plots" / "bpb_vs_size.png").read_bytes().startswith(b"\x89PNG")
    assert "data:image/png;base64," in (out / "report.html").read_text()


def test_cli_refuses_a_missing_key_before_sampling(tiny_model_dir: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    with pytest.raises(TinyStoriesError, match="NO_SUCH_KEY_VAR"):
        eval_main(["eval", "gpt-eval", str(tiny_model_dir), "--judge-api-key-env", "NO_SUCH_KEY_VAR",
                   "--out", str(tmp_path / "x")])
    with pytest.raises(TinyStoriesError, match="exactly two"):
        eval_main(["eval", "pairwise", str(tiny_model_dir), "--judge-url", "http://127.0.0.1:9/v1"])
    assert not (tmp_path / "x").exists()
