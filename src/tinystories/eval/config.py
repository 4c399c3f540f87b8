"""The evaluation suite's settings (`tinystories eval ...`), shared by every evaluation task."""

from __future__ import annotations

from dataclasses import dataclass

from tinystories.config import Config, setting
from tinystories.data.corpus import EncodingErrors
from tinystories.errors import TinyStoriesError
from tinystories.infer.params import SamplingParams, preset
from tinystories.llm_client import ClientConfig


def _judge() -> ClientConfig:
    return ClientConfig(model="gpt-4o", temperature=0.0, max_tokens=600, concurrency=8, max_retries=6,
                        backoff_max_s=30.0)


@dataclass(frozen=True)
class SuiteConfig(Config):
    models: list[str] = setting(help="model folders (ours or Hugging Face)", factory=list)
    tasks: list[str] = setting(help="evaluations to run", factory=list)
    out: str = setting("reports/eval", "output folder for report.md/.html, results, judgments, config")
    prompts: str = setting("", "story beginnings (YAML/JSON list or text file, blank-line separated); "
                               "default: the paper's 44")
    instructions: str = setting("", "JSON list of instruction headers ending with 'Story: '; default: 50 "
                                    "bundled ones")
    samples: int = setting(3, "completions per prompt", ge=1, le=10_000)
    sampling: SamplingParams = setting(help="how completions are sampled",
                                       factory=lambda: preset("api", seed=0))
    batch_size: int = setting(32, "rows sampled or scored together", ge=1, le=65536)
    device: str = setting("auto", "torch device: auto, cpu, cuda, cuda:1, mps")
    threads: int = setting(0, "CPU threads for torch; 0 = one per core not busy with other work", ge=0, le=4096)
    train: str = setting("bundled:train", "training stories for the memorisation check (any corpus source)")
    workers: int = setting(1, "processes indexing the training stories", ge=1, le=1024)
    data: str = setting("bundled:valid", "stories scored for bits per byte (any corpus source)")
    encoding_errors: EncodingErrors = setting("strict", "invalid UTF-8 in a corpus: strict (stop, naming the file "
                                                        "and byte), replace (U+FFFD) or skip (drop the story)")
    max_stories: int = setting(0, "score only the first N stories (0 = all)", ge=0)
    stride: int = setting(0, "sliding-window stride for stories longer than the context (0 = half of it)",
                          ge=0)
    seed: int = setting(0, "bootstrap seed", ge=0)
    judge: ClientConfig = setting(help="the judge LLM's endpoint (an OpenAI-compatible API)", factory=_judge)
    judge_parse_attempts: int = setting(3, "re-asks after an answer the parser refuses", ge=1, le=100)
    judge_cache: str = setting("", "judgment cache (JSONL); default: OUT/judge_cache.jsonl")
    templates: dict[str, str] = setting(help="judge template files by kind (grade, pairwise, instruct, "
                                             "probe)", factory=dict)
    yes: bool = setting(False, "make the judge calls without asking")
    dry_run: bool = setting(False, "sample, print the cost of the judge calls, stop")
    progress: bool = setting(True, "progress bars")

    where = "eval"

    def check(self) -> None:
        unknown = set(self.templates) - {"grade", "pairwise", "instruct", "probe"}
        if unknown:
            raise TinyStoriesError(f"eval.templates: unknown kind(s) {sorted(unknown)}; kinds are grade, "
                                   "pairwise, instruct, probe")

    @property
    def cache_path(self) -> str:
        return self.judge_cache or f"{self.out}/judge_cache.jsonl"
