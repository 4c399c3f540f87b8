"""`tinystories eval ...`: GPT-Eval, pairwise, instruction following, probes, diversity, bpb, report."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TypeVar

from tinystories.errors import TinyStoriesError
from tinystories.eval.judge import JudgeConfig
from tinystories.eval.suite import JUDGE_TASKS, TASKS, Suite, SuiteConfig
from tinystories.infer.sampling import SamplingConfig

_T = TypeVar("_T")

COMMANDS = {  # subcommand -> (tasks, help)
    "gpt-eval": (["gpt-eval"], "grade completions of the paper's 44 story beginnings with a judge LLM"),
    "pairwise": (["pairwise"], "judge two models' completions against each other (win rate)"),
    "instruct": (["instruct"], "instruction following of an Instruct model (judge + required-words check)"),
    "probes": (["probes"], "the paper's factual knowledge, reasoning and context-tracking probes"),
    "diversity": (["diversity"], "Rouge-2 memorisation against the training set and within-prompt overlap"),
    "bpb": (["bpb"], "validation bits per byte (exact, per story, sliding window past the context)"),
    "report": ([], "several evaluations of one or more models in one report"),
}


def _add_common(p: argparse.ArgumentParser, name: str) -> None:
    judged = name in JUDGE_TASKS or name == "report"
    p.add_argument("models", nargs="+", metavar="MODEL", help="model folders (ours or Hugging Face)")
    p.add_argument("--out", default=f"eval_{name.replace('-', '_')}",
                   help="output folder for report.md/.html, results, judgments, config (default: %(default)s)")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0, help="sampling and bootstrap seed")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    if name == "report":
        p.add_argument("--tasks", default="gpt-eval,probes,diversity,bpb",
                       help=f"comma-separated, from {', '.join(TASKS)}; judged ones need --judge-url "
                            "(default: %(default)s)")
    if name != "bpb":
        g = p.add_argument_group("sampling")
        g.add_argument("--prompts", default="", help="story beginnings (YAML/JSON list or text file, blank-line "
                                                     "separated); default: the paper's 44")
        g.add_argument("-n", "--samples", type=int, default=3, help="completions per prompt")
        g.add_argument("--max-new-tokens", type=int, default=200)
        g.add_argument("--temperature", type=float, default=1.0)
        g.add_argument("--top-k", type=int, default=0)
        g.add_argument("--top-p", type=float, default=1.0)
    if name in ("instruct", "report"):
        p.add_argument("--instructions", default="", help="JSON list of instruction headers ending with "
                                                          "'Story: '; default: 50 bundled ones")
    if name in ("diversity", "report"):
        p.add_argument("--train", default="bundled:train", help="training stories for the memorisation check "
                                                                "(any read_stories source; default: %(default)s)")
        p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                       help="processes indexing the training stories (default: %(default)s)")
    if name in ("bpb", "report"):
        p.add_argument("--data", default="bundled:valid", help="stories to score (default: %(default)s)")
        p.add_argument("--max-stories", type=int, default=0, help="score only the first N (0 = all)")
        p.add_argument("--stride", type=int, default=0, help="sliding-window stride (0 = half the context)")
    if judged:
        g = p.add_argument_group("judge")
        g.add_argument("--judge-url", default=None if name == "report" else "https://api.openai.com/v1",
                       help="OpenAI-compatible base URL" + (" (without it, report skips judged tasks)"
                                                            if name == "report" else " (default: %(default)s)"))
        g.add_argument("--judge-model", default="gpt-4o")
        g.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the key")
        g.add_argument("--judge-temperature", type=float, default=0.0)
        g.add_argument("--judge-max-tokens", type=int, default=600)
        g.add_argument("--concurrency", type=int, default=8)
        g.add_argument("--requests-per-minute", type=float, default=0.0)
        g.add_argument("--cache", default="", help="judgment cache (JSONL); default: OUT/judge_cache.jsonl")
        g.add_argument("--template", action="append", default=[], metavar="KIND=FILE",
                       help="replace a judge template (kinds: grade, pairwise, instruct, probe)")
        g.add_argument("--yes", action="store_true", help="make the judge calls without asking")
        g.add_argument("--dry-run", action="store_true", help="sample, print the cost of the judge calls, stop")


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate models: GPT-Eval, probes, diversity, bits per byte, reports",
                       description="Evaluate models as the TinyStories paper does. Every subcommand writes "
                                   "report.md, report.html (self-contained), results.json, judgments.json and "
                                   "config.json into --out.")
    evals = p.add_subparsers(dest="eval_command", metavar="EVAL", required=True)
    for name, (_, help_text) in COMMANDS.items():
        sp = evals.add_parser(name, help=help_text, description=help_text)
        _add_common(sp, name)
        sp.set_defaults(func=run_eval, eval_name=name)


def _templates(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        kind, sep, path = pair.partition("=")
        if not sep or kind not in ("grade", "pairwise", "instruct", "probe"):
            raise TinyStoriesError(f"--template {pair!r}: expected KIND=FILE with KIND one of grade, "
                                   "pairwise, instruct, probe")
        out[kind] = path
    return out


def config_from_args(args: argparse.Namespace) -> SuiteConfig:
    name = args.eval_name
    tasks = COMMANDS[name][0] or [t.strip() for t in args.tasks.split(",") if t.strip()]
    if name == "report" and not args.judge_url:
        skipped = [t for t in tasks if t in JUDGE_TASKS]
        if skipped:
            print(f"no --judge-url: skipping {', '.join(skipped)}", file=sys.stderr)
        tasks = [t for t in tasks if t not in JUDGE_TASKS]

    def get(key: str, default: _T) -> _T:  # an option that only some subcommands have
        return getattr(args, key, default)

    judge = JudgeConfig()
    if hasattr(args, "judge_url"):
        judge = JudgeConfig(base_url=args.judge_url or "", model=args.judge_model, api_key_env=args.api_key_env,
                            temperature=args.judge_temperature, max_tokens=args.judge_max_tokens,
                            concurrency=args.concurrency, requests_per_minute=args.requests_per_minute,
                            cache=args.cache or f"{args.out}/judge_cache.jsonl")
    return SuiteConfig(
        models=args.models, tasks=tasks, out=args.out, prompts=get("prompts", ""),
        instructions=get("instructions", ""), samples=get("samples", 1),
        sampling=SamplingConfig(max_new_tokens=get("max_new_tokens", 200), temperature=get("temperature", 1.0),
                                top_k=get("top_k", 0), top_p=get("top_p", 1.0), seed=args.seed),
        batch_size=args.batch_size, device=args.device, train=get("train", "bundled:train"), workers=get("workers", 1),
        data=get("data", "bundled:valid"), max_stories=get("max_stories", 0), stride=get("stride", 0),
        seed=args.seed, judge=judge, templates=_templates(get("template", [])), yes=get("yes", False),
        dry_run=get("dry_run", False), progress=not args.no_progress,
    )


def run_eval(args: argparse.Namespace) -> int:
    out = Suite(config_from_args(args)).run()
    if out is not None:
        print(f"report: {out / 'report.md'} and {out / 'report.html'}")
    return 0
