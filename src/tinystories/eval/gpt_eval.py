"""GPT-Eval (the paper's section 3): sample completions of story beginnings, have a judge grade them.

Each completion gets a written assessment, then scores out of 10 for grammar, creativity,
consistency with the beginning and plot, and a guess of the writer's age group (A-F).
Pairwise mode judges two models' completions of the same beginning in both orders; a
disagreement between the two orders counts as a tie, which cancels the judge's position bias.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml
from tqdm import tqdm

from tinystories.errors import TinyStoriesError
from tinystories.eval.judge import AGE_GROUPS, SCORE_KEYS, JudgeRun, Judgment
from tinystories.eval.stats import bootstrap_mean, win_rate
from tinystories.infer.sampling import SamplingConfig, generate
from tinystories.model.checkpoint import LoadedModel
from tinystories.utils import resource_path

QUOTES = str.maketrans({"\u201c": '"', "\u201d": '"', "\u201e": '"', "\u2018": "'", "\u2019": "'"})


def normalize_quotes(text: str) -> str:
    """Curly quotes (as copied from the paper's PDF) to the straight ones the training data uses."""
    return text.translate(QUOTES)


def load_prompts(path: str | Path | None = None, key: str = "prompt") -> list[str]:
    """Story beginnings: the paper's 44 by default, or a YAML/JSON list or a text file (one per
    paragraph, separated by blank lines). JSON records may be objects with a `key` field."""
    path = Path(path) if path else resource_path("evaluation_prompts.yaml")
    if not path.exists():
        raise TinyStoriesError(f"prompt file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix in (".yaml", ".yml"):
            items = yaml.safe_load(text)
        elif path.suffix == ".json":
            items = json.loads(text)
        else:
            items = [p.strip() for p in text.split("\n\n") if p.strip()]
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise TinyStoriesError(f"{path}: not valid {path.suffix[1:].upper()} ({exc})") from exc
    if not isinstance(items, list):
        raise TinyStoriesError(f"{path}: expected a list of prompts")
    prompts = []
    for i, item in enumerate(items):
        if isinstance(item, dict):
            item = item.get(key)
        if not isinstance(item, str) or not item.strip():
            raise TinyStoriesError(f"{path}: item {i} is not a non-empty string"
                                   + (f" (or an object with a {key!r} string)" if key else ""))
        prompts.append(normalize_quotes(item.rstrip()))
    if not prompts:
        raise TinyStoriesError(f"{path}: no prompts")
    return prompts


def sample_completions(loaded: LoadedModel, texts: Sequence[str], n: int, cfg: SamplingConfig,
                       batch_size: int = 32, progress: bool = True) -> list[list[str]]:
    """`n` seeded samples per text ([text][sample]); batch b uses seed `cfg.seed + b`.

    Each prompt starts with EOS (the start of a story); a prompt too long for the context keeps
    its last tokens, leaving room for at least half the context (or max_new_tokens) to write.
    """
    tok, model = loaded.tokenizer, loaded.model
    ctx = model.cfg.context_length
    room = ctx - min(cfg.max_new_tokens, ctx // 2)
    prompts = [[tok.eos_id, *ids][-room:] for ids in tok.encode_batch(list(texts))]
    jobs = [(i, k) for i in range(len(texts)) for k in range(n)]
    out = [[""] * n for _ in texts]
    bar = tqdm(total=len(jobs), desc=f"sampling {loaded.path.name}", unit="story", disable=not progress)
    for b, start in enumerate(range(0, len(jobs), batch_size)):
        chunk = jobs[start:start + batch_size]
        seeded = replace(cfg, seed=None if cfg.seed is None else cfg.seed + b)
        for (i, k), ids in zip(chunk, generate(model, [prompts[i] for i, _ in chunk], seeded, tok.eos_id)):
            out[i][k] = tok.decode(ids)
        bar.update(len(chunk))
    bar.close()
    return out


def grade_requests(run: JudgeRun, model_name: str, beginnings: Sequence[str],
                   completions: Sequence[Sequence[str]]) -> list[Judgment]:
    return run.requests([
        # the paper's layout: "... a bunny heard the guitar from a distance and *** asked, ..."
        ({"beginning": beginning.rstrip(), "completion": completion.strip()},
         {"model": model_name, "prompt": i, "sample": k, "beginning": beginning, "completion": completion})
        for i, (beginning, samples) in enumerate(zip(beginnings, completions))
        for k, completion in enumerate(samples)
    ])


def summarize_grades(judgments: Sequence[Judgment], seed: int = 0) -> dict[str, Any]:
    """Per dimension: mean and bootstrap 95% interval over the present judgments; age groups."""
    scores = {key: bootstrap_mean([j.parsed[key] if j.parsed is not None else None for j in judgments],
                                  seed=seed).to_json()
              for key in SCORE_KEYS}
    ages = Counter(j.parsed["age_group"] for j in judgments if j.parsed is not None)
    return {"scores": scores, "age_groups": {g: ages.get(g, 0) for g in AGE_GROUPS},
            "judged": sum(j.ok for j in judgments), "missing": sum(not j.ok for j in judgments)}


def pairwise_requests(run: JudgeRun, names: tuple[str, str], beginnings: Sequence[str],
                      a: Sequence[Sequence[str]], b: Sequence[Sequence[str]]) -> list[Judgment]:
    """Two judgments per (beginning, sample): A shown first, then B shown first."""
    items = []
    for i, beginning in enumerate(beginnings):
        for k, (ca, cb) in enumerate(zip(a[i], b[i])):
            meta = {"models": list(names), "prompt": i, "sample": k, "beginning": beginning,
                    "completion_a": ca, "completion_b": cb}
            items.append(({"beginning": beginning, "completion_1": ca, "completion_2": cb},
                          {**meta, "a_first": True}))
            items.append(({"beginning": beginning, "completion_1": cb, "completion_2": ca},
                          {**meta, "a_first": False}))
    return run.requests(items)


def pairwise_outcomes(judgments: Sequence[Judgment]) -> list[str | None]:
    """'a', 'b' or 'tie' per pair of judgments (both orders agree, else tie); None if one is missing."""
    outcomes: list[str | None] = []
    for first, second in zip(judgments[::2], judgments[1::2]):
        if first.parsed is None or second.parsed is None:
            outcomes.append(None)
            continue
        votes = []
        for parsed, meta in ((first.parsed, first.meta), (second.parsed, second.meta)):
            w = parsed["winner"]
            votes.append("tie" if w == "tie" else ("a" if (w == "1") == meta["a_first"] else "b"))
        outcomes.append(votes[0] if votes[0] == votes[1] else "tie")
    return outcomes


def summarize_pairwise(judgments: Sequence[Judgment], seed: int = 0) -> dict[str, Any]:
    return win_rate(pairwise_outcomes(judgments), seed=seed)
