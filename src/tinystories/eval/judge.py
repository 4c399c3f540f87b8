"""Grading by a judge LLM: prompt templates, strict answer parsers, a judgment cache, a runner.

The runner talks to the judge through one async callable, `complete(prompt) -> text`, so any
client fits; `make_judge` wraps the project's shared OpenAI-compatible client
(`tinystories.llm_client.LLMClient`: retries, backoff, rate limits, timeouts), configured by
the same `ClientConfig` as the teacher of `generate`.

A judgment the judge fails to give (an HTTP error after retries, or an answer the strict
parser refuses, re-asked a bounded number of times) is recorded as missing, never as 0.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import string
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from tinystories.errors import TinyStoriesError
from tinystories.llm_client import ClientConfig, LLMClient
from tinystories.utils import naming, resource_path

log = logging.getLogger(__name__)
CompleteFn = Callable[[str], Awaitable[str]]
Parser = Callable[[str], dict[str, Any]]

SCORE_KEYS = ("grammar", "creativity", "consistency", "plot")
AGE_GROUPS = {"A": "3 or under", "B": "4-5", "C": "6-7", "D": "8-9", "E": "10-12", "F": "13-16"}


class JudgeParseError(ValueError):
    """The judge's answer is not in the format the template asks for."""


# --- templates ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Template:
    name: str
    text: str

    @classmethod
    def load(cls, name_or_path: str) -> Template:
        """A bundled template (`grade`, `pairwise`, `instruct`, `probe`) or a path to a text file."""
        path = Path(name_or_path)
        if not path.exists():
            path = resource_path(f"judge_{name_or_path}.txt")
        if not path.exists():
            raise TinyStoriesError(f"judge template {name_or_path!r} not found: give one of grade, "
                                   "pairwise, instruct, probe or the path of a template file")
        return cls(path.stem, path.read_text(encoding="utf-8"))

    @property
    def sha(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()[:16]

    def fill(self, **fields: str) -> str:
        unused = [f for f in fields if f"${f}" not in self.text and f"${{{f}}}" not in self.text]
        if unused:  # e.g. a custom template that never shows the judge the completion
            raise TinyStoriesError(f"judge template {self.name} lacks the placeholder(s) "
                                   f"{', '.join('$' + f for f in unused)}; this kind of template takes "
                                   f"{', '.join('$' + f for f in sorted(fields))}")
        try:  # $name placeholders: JSON braces in the template need no escaping
            return string.Template(self.text).substitute(fields)
        except (KeyError, ValueError) as exc:
            raise TinyStoriesError(f"judge template {self.name}: placeholder {exc} has no value; "
                                   f"this template takes {sorted(fields)}") from exc


# --- strict parsers -------------------------------------------------------------------------

_JSON_BLOCK = re.compile(r"\{[^{}]*\}", re.DOTALL)


def last_json_object(answer: str) -> dict[str, Any]:
    """The last flat JSON object in the answer (the template asks for it at the end)."""
    for candidate in reversed(_JSON_BLOCK.findall(answer)):
        try:
            obj = json.loads(candidate)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            return obj
    raise JudgeParseError("no JSON block in the answer")


# What judges write instead of the template's names (lower-cased, spaces and hyphens as "_").
ALIASES = {"age": "age_group", "agegroup": "age_group", "age_range": "age_group", "estimated_age": "age_group",
           "grammaticality": "grammar", "creative": "creativity", "consistent": "consistency",
           "consistency_with_beginning": "consistency", "plot_sense": "plot", "plot_makes_sense": "plot",
           "instruction_following": "instructions", "instruction": "instructions"}
PROBLEMS = "_problems"  # in a parsed judgment: why some of its fields are missing


def _canonical(obj: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in obj.items():
        name = re.sub(r"[\s\-]+", "_", str(key).strip().lower())
        out.setdefault(ALIASES.get(name, name), value)
    return out


def _score(value: Any, key: str) -> int:
    # bool is an int subclass: `true` is not a score
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 10:
        raise ValueError(f"{key!r} must be an integer 0-10, got {value!r}")
    return value


def _age(value: Any, key: str) -> str:
    if not isinstance(value, str) or value.strip().upper() not in AGE_GROUPS:
        raise ValueError(f"{key!r} must be one of {', '.join(AGE_GROUPS)}, got {value!r}")
    return value.strip().upper()


def parse_fields(answer: str, checks: dict[str, Callable[[Any, str], Any]]) -> dict[str, Any]:
    """Each field of the answer's JSON block that is present and valid counts on its own; the
    others are listed under `_problems`. Only an answer with no usable field is refused."""
    obj = _canonical(last_json_object(answer))
    out: dict[str, Any] = {}
    problems = []
    for key, check in checks.items():
        if key not in obj:
            problems.append(f"{key!r} missing (the block has {', '.join(map(repr, obj)) or 'no keys'})")
            continue
        try:
            out[key] = check(obj[key], key)
        except ValueError as exc:
            problems.append(str(exc))
    if not out:
        raise JudgeParseError("; ".join(problems))
    if problems:
        out[PROBLEMS] = problems
    return out


def parse_grade(answer: str) -> dict[str, Any]:
    """The four scores (integers 0-10) and the age group letter A-F, each that is valid."""
    return parse_fields(answer, {**{key: _score for key in SCORE_KEYS}, "age_group": _age})


def parse_pairwise(answer: str) -> dict[str, Any]:
    winner = str(last_json_object(answer).get("winner", "")).strip().lower()
    if winner not in ("1", "2", "tie"):
        raise JudgeParseError(f"'winner' must be \"1\", \"2\" or \"tie\", got {winner!r}")
    return {"winner": winner}


def parse_instruct(answer: str) -> dict[str, Any]:
    return parse_fields(answer, {"instructions": _score, "grammar": _score})


def parse_probe(answer: str) -> dict[str, Any]:
    verdict = str(last_json_object(answer).get("verdict", "")).strip().lower()
    if verdict not in ("correct", "incorrect", "unclear"):
        raise JudgeParseError(f"'verdict' must be correct, incorrect or unclear, got {verdict!r}")
    return {"verdict": verdict}


# --- cache ----------------------------------------------------------------------------------

class JudgmentCache:
    """Parsed judgments in an append-only JSONL file, keyed by judge model, template and prompt.

    Only successful judgments are stored, so a rerun re-asks exactly the missing ones.
    """

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path else None
        self.entries: dict[str, dict[str, Any]] = {}
        if self.path and self.path.exists():
            for n, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), 1):
                try:
                    item = json.loads(line)
                    self.entries[item["key"]] = item
                except (json.JSONDecodeError, KeyError, TypeError):
                    # a line cut short by a crash: skip it, the judgment is simply asked again
                    log.warning("%s:%d: unreadable cache line skipped", self.path, n)

    @staticmethod
    def key(judge_model: str, template: Template, prompt: str) -> str:
        return hashlib.sha256(f"{judge_model}\0{template.sha}\0{prompt}".encode()).hexdigest()

    def get(self, key: str) -> dict[str, Any] | None:
        return self.entries.get(key)

    def put(self, key: str, item: dict[str, Any]) -> None:
        item = {"key": key, **item}
        self.entries[key] = item
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with naming(self.path), self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(item, ensure_ascii=False) + "\n")


# --- runner ---------------------------------------------------------------------------------

@dataclass
class Judgment:
    prompt: str
    meta: dict[str, Any]  # what was judged (model, beginning index, sample, ...)
    parsed: dict[str, Any] | None = None  # None = missing
    answer: str = ""  # the judge's raw text (of the last attempt)
    attempts: int = 0
    cached: bool = False
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.parsed is not None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class MissingInfo:
    """How many judgments (and which fields) are missing, the commonest reasons, and the end of
    an answer that was not usable: what a user needs to see to fix a judge's format."""
    total: int
    missing: int
    field_missing: dict[str, int]
    reasons: list[tuple[str, int]]
    sample_answer: str


def missing_summary(judgments: Sequence[Judgment], fields: Sequence[str]) -> MissingInfo:
    """The `MissingInfo` of these judgments, for the fields a task reads."""
    missing = [j for j in judgments if j.parsed is None]
    field_missing = {f: sum(j.parsed is None or f not in j.parsed for j in judgments) for f in fields}
    reasons = Counter(r.split(" (the block has")[0] for j in judgments if j.error for r in j.error.split("; "))
    bad = next((j for j in judgments if j.error and j.answer), None)
    return MissingInfo(len(judgments), len(missing), field_missing, reasons.most_common(3),
                       bad.answer[-400:] if bad else "")


def mostly_missing(info: MissingInfo) -> bool:
    """More than half of the judgments, or of one field, are missing: the run did not measure it."""
    half = info.total / 2
    return info.total > 0 and (info.missing > half or any(n > half for n in info.field_missing.values()))


@dataclass
class CostPreview:
    calls: int
    cached: int
    prompt_tokens: int  # estimated: 4 characters per token
    max_completion_tokens: int

    def __str__(self) -> str:
        return (f"{self.calls} judge calls ({self.cached} more answered from the cache), about "
                f"{self.prompt_tokens:,} prompt tokens and at most {self.max_completion_tokens:,} "
                "completion tokens (re-asks after malformed answers come on top)")


@dataclass
class JudgeRun:
    """One batch of judgments: same template, parser and judge."""

    template: Template
    parser: Parser
    judge_model: str
    cache: JudgmentCache = field(default_factory=lambda: JudgmentCache(None))

    def requests(self, items: Sequence[tuple[dict[str, str], dict[str, Any]]]) -> list[Judgment]:
        """Fill the template for each (fields, meta) pair; answer what the cache already has."""
        out = []
        for fields, meta in items:
            j = Judgment(self.template.fill(**fields), meta)
            hit = self.cache.get(self._key(j))
            if hit is not None:
                j.parsed, j.answer, j.cached = hit["parsed"], hit["answer"], True
                j.error = "; ".join(j.parsed.get(PROBLEMS, []))
            out.append(j)
        return out

    def preview(self, judgments: Sequence[Judgment], max_tokens: int) -> CostPreview:
        todo = [j for j in judgments if not j.cached]
        return CostPreview(len(todo), len(judgments) - len(todo),
                           sum(len(j.prompt) // 4 for j in todo), len(todo) * max_tokens)

    def _key(self, j: Judgment) -> str:
        return JudgmentCache.key(self.judge_model, self.template, j.prompt)

    async def run(self, judgments: Sequence[Judgment], complete: CompleteFn, concurrency: int = 8,
                  parse_attempts: int = 3, progress: bool = True) -> list[Judgment]:
        todo = [j for j in judgments if not j.cached]
        limit = asyncio.Semaphore(concurrency)
        bar = tqdm(total=len(todo), desc=f"judging ({self.template.name})", unit="call",
                   disable=not progress or not todo)

        async def one(j: Judgment) -> None:
            async with limit:
                for _ in range(parse_attempts):
                    j.attempts += 1
                    try:
                        j.answer = await complete(j.prompt)
                        j.parsed = self.parser(j.answer)
                        j.error = "; ".join(j.parsed.get(PROBLEMS, []))  # some fields missing: said here
                        break
                    except JudgeParseError as exc:
                        j.error = f"unparseable answer: {exc}"
                    except TinyStoriesError:
                        raise  # a user mistake (bad key, wrong URL): stop the whole run
                    except Exception as exc:  # noqa: BLE001 - the client gave up: missing, not fatal
                        j.error = f"{type(exc).__name__}: {exc}"[:300]
                        break  # the client already retried with backoff
            if j.ok:
                self.cache.put(self._key(j), {"judge": self.judge_model, "template": self.template.sha,
                                              "parsed": j.parsed, "answer": j.answer})
            bar.update(1)

        try:
            await asyncio.gather(*(one(j) for j in todo))
        finally:
            bar.close()
        return list(judgments)


def make_judge(client: ClientConfig) -> Callable[[], Any]:
    """An async context manager factory yielding `complete(prompt) -> text` on the shared client."""
    from contextlib import aclosing, asynccontextmanager

    @asynccontextmanager
    async def session():
        async with aclosing(LLMClient(client)) as llm:  # judge.api=completion for a base-model judge
            async def complete(prompt: str) -> str:
                return (await llm.complete(prompt)).text
            yield complete

    return session
