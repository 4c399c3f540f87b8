"""Reports (Markdown + self-contained HTML with plots), prompt sets, instruction checks, sampling."""

from __future__ import annotations

import base64
import json
import math
import re
from pathlib import Path

import pytest

from tinystories.data.beginnings import load_beginnings
from tinystories.errors import TinyStoriesError
from tinystories.eval.bpb import BpbResult
from tinystories.eval.judge import MissingInfo
from tinystories.eval.report import write_report
from tinystories.eval.results import Finding, Results
from tinystories.eval.sample import sample_completions
from tinystories.eval.stats import Estimate, bootstrap_mean, win_rate
from tinystories.eval.tasks import registry
from tinystories.eval.tasks.diversity import Overlap
from tinystories.eval.tasks.gpt_eval import Grades
from tinystories.eval.tasks.instruct import (
    InstructScores,
    inflections,
    instruction_text,
    load_instructions,
    word_check,
)
from tinystories.eval.tasks.pairwise import WinRate
from tinystories.eval.tasks.probes import ProbeScores, load_probes
from tinystories.infer.params import SamplingParams
from tinystories.model.loader import load_any


def est(values: list[float]) -> Estimate:
    return bootstrap_mean(values, seed=0)


NONE_MISSING = MissingInfo(total=3, missing=0, field_missing={}, reasons=[], sample_answer="")


def fake_results() -> Results:
    findings = []
    params = {}
    for i, (name, size) in enumerate([("tiny-1M", 1_000_000), ("tiny-8M", 8_000_000), ("tiny-33M", 33_000_000)]):
        params[name] = size
        findings += [Finding((name,), result) for result in (
            Grades({k: est([3 + i, 5 + i, 4 + i]) for k in ("grammar", "creativity", "consistency", "plot")},
                   {g: i for g in "ABCDEF"}, 3, 1, NONE_MISSING),
            ProbeScores(NONE_MISSING, {"factual": est([0.0, 1.0]), "reasoning": est([1.0, 1.0])}),
            InstructScores({"instructions": est([5, 6]), "grammar": est([7, 8])}, est([1.0, 0.0]), est([1.0, 0.5]),
                           2, 0, NONE_MISSING),
            Overlap([0.1 * i, 0.4, 0.6], [0, 1, 2], est([0.1 * i, 0.4, 0.6]), [0.2, 0.3], est([0.2, 0.3])),
            # 50 tokens over 200 bytes at 1.5 - 0.3 i bits per byte
            BpbResult((1.5 - 0.3 * i) * 200 * math.log(2), 50, 200, 2))]
    w = win_rate(["a", "b", "tie"])
    findings.append(Finding(("tiny-1M", "tiny-8M"), WinRate(Estimate(**w["win_rate"]), w["a"], w["b"], w["tie"],
                                                            w["missing"], NONE_MISSING)))
    judge = {"model": "judge-x", "base_url": "http://127.0.0.1:1/v1"}
    return Results({"judge": judge}, tuple(params), params, {}, tuple(findings), judge)


def test_report_writes_markdown_html_plots_and_raw_files(tmp_path: Path):
    results = fake_results()
    judgments = [{"prompt": "p", "parsed": None, "answer": "x", "meta": {}}]
    out = write_report(tmp_path / "r", results, judgments, list(registry().values()))
    md = (out / "report.md").read_text()
    for heading in ("GPT-Eval", "Pairwise: tiny-1M vs tiny-8M", "Instruction following", "probes",
                    "Diversity and memorisation", "Validation loss"):
        assert heading in md
    assert "| tiny-33M | 6.00 [" in md  # grammar mean of [5, 7, 6] with its interval
    plots = re.findall(r"!\[[^\]]*\]\((plots/[^)]+)\)", md)
    assert {Path(p).name for p in plots} == {"gpt_eval.png", "probes.png", "rouge_train.png", "rouge_within.png",
                                             "bpb_vs_size.png"}
    html = (out / "report.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and "<table>" in html and "src=\"plots/" not in html
    embedded = [base64.b64decode(b) for b in re.findall(r'src="data:image/png;base64,([^"]+)"', html)]
    assert len(embedded) == 5 and all(png == (out / p).read_bytes() for png, p in zip(embedded, plots))
    assert json.loads((out / "judgments.json").read_text()) == judgments
    assert json.loads((out / "results.json").read_text())["models"]["tiny-8M"]["bpb"]["bpb"] == pytest.approx(1.2)
    assert json.loads((out / "config.json").read_text())["judge"]["model"] == "judge-x"


def test_prompt_sets(tmp_path: Path):
    paper = load_beginnings()
    assert len(paper) == 44 and paper[0].startswith("Once upon a time, there lived a bunny")
    probes = load_probes()
    assert [len(v) for v in probes.values()] == [9, 9, 6]
    flat = [p for v in probes.values() for p in v]
    assert not any(c in p for p in flat for c in "\u201c\u201d\u2019")
    assert '"Can cows fly?", Alice asked her mother.' in probes["factual"]
    (tmp_path / "p.json").write_text(json.dumps([{"prompt": "Tom said, \u201dHi"}, {"prompt": "Sue ran"}]))
    assert load_beginnings(tmp_path / "p.json") == ['Tom said, "Hi', "Sue ran"]
    (tmp_path / "bad.yaml").write_text("- ok\n- 3\n")
    with pytest.raises(TinyStoriesError, match="item 1"):
        load_beginnings(tmp_path / "bad.yaml")
    with pytest.raises(TinyStoriesError, match="not found"):
        load_beginnings(tmp_path / "missing.yaml")


def test_instruction_words_check():
    headers = load_instructions()
    assert len(headers) == 50 and all(h.endswith("Story: ") for h in headers)
    header = "Words: run, happy, bake, cry\nFeatures: Dialogue\nStory: "
    assert instruction_text(header) == "Words: run, happy, bake, cry\nFeatures: Dialogue"
    assert {"running", "runs", "happier", "happily", "baking", "baked", "cried", "cries"} <= set().union(
        *(inflections(w) for w in ("run", "happy", "bake", "cry")))
    check = word_check(header, "Tom was running. He baked a cake and was happily eating.")
    assert check == {"words": ["run", "happy", "bake", "cry"], "found": ["run", "happy", "bake"], "missing": ["cry"]}
    assert word_check(header, "The runner sang.")["found"] == ["run"]
    assert word_check(header, "Sun, fun.")["found"] == []  # no substring matches


def test_sampling_is_seeded(tiny_model_dir: Path):
    loaded = load_any(tiny_model_dir)
    cfg = SamplingParams(max_new_tokens=8, temperature=1.0, seed=5)  # row j of the jobs: seed 5 + j
    a = sample_completions(loaded, ["Once upon a time", "Tom ran"], 3, cfg, batch_size=4, progress=False)
    b = sample_completions(loaded, ["Once upon a time", "Tom ran"], 3, cfg, batch_size=4, progress=False)
    assert a == b and len(a) == 2 and all(len(s) == 3 for s in a)
    assert len({c for s in a for c in s}) > 1
    long = sample_completions(loaded, ["word " * 300], 1, cfg, progress=False)  # longer than the context
    assert len(long[0]) == 1  # kept the prompt's last tokens instead of failing



def test_terminal_summary_keeps_every_number() -> None:
    from tinystories.cli.eval import summary_table

    est = {"n": 40, "mean": 0.625, "low": 0.5, "high": 0.75}
    pairwise_only = summary_table({"models": {"a": {}, "b": {}}, "pairwise": [{"models": ["a", "b"], "win_rate": est}]})
    assert pairwise_only == "a wins vs b: 0.62"
    both = summary_table({"models": {"a": {"bpb": {"bpb": 1.23456}}, "b": {"bpb": {"bpb": 1.5}}},
                          "pairwise": [{"models": ["a", "b"], "win_rate": {"n": 0}}]})
    assert both.splitlines()[2:] == ["a      1.2346", "b      1.5000", "a wins vs b: n/a",
                                     both.splitlines()[-1]] and both.splitlines()[-1].startswith("n/a:")


def test_a_judge_on_openai_without_a_key_is_refused_before_any_sampling(tiny_model_dir: Path, monkeypatch) -> None:
    from tinystories.eval.config import SuiteConfig
    from tinystories.eval.suite import Suite
    from tinystories.llm_client import ClientConfig

    monkeypatch.delenv("TS_TEST_NO_SUCH_KEY", raising=False)
    judge = ClientConfig(base_url="https://api.openai.com/v1", model="gpt-4o", api_key_env="TS_TEST_NO_SUCH_KEY")
    cfg = SuiteConfig(models=[str(tiny_model_dir)], tasks=["gpt-eval"], judge=judge)
    with pytest.raises(TinyStoriesError, match="environment variable TS_TEST_NO_SUCH_KEY"):
        Suite(cfg)
    monkeypatch.setenv("TS_TEST_NO_SUCH_KEY", "sk-test")
    assert Suite(cfg).names
