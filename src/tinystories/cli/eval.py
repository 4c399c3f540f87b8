"""`tinystories eval TASK ...` (one subcommand per evaluation task) and `tinystories eval report`."""

from __future__ import annotations

import argparse
import sys

from tinystories.cli.options import DEST, add_config_flags, add_field, add_fields, build_from_args
from tinystories.errors import TinyStoriesError
from tinystories.eval.config import SuiteConfig
from tinystories.eval.tasks import registry
from tinystories.folder_lock import hold_folder

REPORT_TASKS = "gpt-eval,probes,diversity,bpb"
# SuiteConfig options -> the fields behind their flags
OPTION_FLAGS = {
    "prompts": ["prompts"], "instructions": ["instructions"], "samples": ["samples"],
    "sampling": ["sampling.max_new_tokens", "sampling.temperature", "sampling.top_k", "sampling.top_p",
                 "sampling.min_p", "sampling.repetition_penalty"],
    "train": ["train"], "workers": ["workers"], "data": ["data"], "max_stories": ["max_stories"],
    "stride": ["stride"], "batch_size": [], "encoding_errors": ["encoding_errors"],
}
JUDGE_FLAGS = ["judge.base_url", "judge.model", "judge.api_key_env", "judge.temperature", "judge.max_tokens",
               "judge.concurrency", "judge.requests_per_minute", "judge.tokens_per_minute", "judge.timeout_s",
               "judge.max_retries"]


def _add_task_parser(sub: argparse._SubParsersAction, name: str, help_text: str, options: set[str],
                     judged: bool) -> None:
    p = sub.add_parser(name, help=help_text, description=help_text + f"\n\nExample:\n  tinystories eval {name} "
                       "runs/demo/checkpoint" + (" --judge-base-url http://localhost:8000/v1 --judge-model M --yes"
                                                  if judged else ""),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_field(p, SuiteConfig, "models", positional=True, metavar="MODEL")
    add_field(p, SuiteConfig, "out", default=f"reports/eval-{name}")
    add_fields(p, SuiteConfig, ["device", "threads", "batch_size", "progress"])
    add_field(p, SuiteConfig, "sampling.seed", metavar="SEED")
    if name == "report":
        p.add_argument("--tasks", dest=DEST + "tasks", default=None, metavar="TASK,...",
                       help=f"comma-separated, from {', '.join(registry())}; judged ones need --judge-base-url "
                            f"(default: {REPORT_TASKS})")
    g = p.add_argument_group("what is evaluated")
    for option in sorted(options):
        for path in OPTION_FLAGS[option]:
            add_field(g, SuiteConfig, path, short="-n" if path == "samples" else None)
    if judged:
        g = p.add_argument_group("judge")
        for path in JUDGE_FLAGS:
            if path == "judge.base_url":  # the report runs without a judge unless given one
                add_field(g, SuiteConfig, path, prefix="judge-", aliases=("--judge-url",),
                          default="" if name == "report" else SuiteConfig().judge.base_url)
            else:
                add_field(g, SuiteConfig, path, prefix="judge-")
        add_fields(g, SuiteConfig, ["judge_cache", "judge_parse_attempts", "yes", "dry_run"])
        g.add_argument("--template", action="append", default=[], metavar="KIND=FILE",
                       help="replace a judge template (kinds: grade, pairwise, instruct, probe)")
    add_config_flags(p)
    p.set_defaults(func=run_eval, eval_name=name)


def setup_eval(p: argparse.ArgumentParser) -> None:
    p.description = ("Evaluate models as the TinyStories paper does. Every subcommand writes report.md, "
                     "report.html (self-contained), results.json, judgments.json and config.json into --out."
                     "\n\nExamples:\n  tinystories eval bpb runs/demo/checkpoint\n"
                     "  tinystories eval report runs/a/checkpoint runs/b/checkpoint --judge-base-url URL "
                     "--judge-model M --yes")
    evals = p.add_subparsers(dest="eval_command", metavar="EVAL", required=True)
    tasks = registry()
    for name, task in tasks.items():
        _add_task_parser(evals, name, task.help, set(task.options), task.judged)
    _add_task_parser(evals, "report", "several evaluations of one or more models in one report",
                     {o for t in tasks.values() for o in t.options}, True)


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
    tasks = registry()
    base: dict[str, object] = {"out": f"reports/eval-{name}", "tasks": [name]}
    if name == "report":
        base["tasks"] = REPORT_TASKS.split(",")
        base["judge"] = {"base_url": ""}  # without a judge, the report skips judged tasks
    if getattr(args, DEST + "tasks", None) is not None:
        setattr(args, DEST + "tasks", [t.strip() for t in getattr(args, DEST + "tasks").split(",") if t.strip()])
    if getattr(args, "template", None):
        setattr(args, DEST + "templates", _templates(args.template))
    cfg = build_from_args(SuiteConfig, args, base)
    if name == "report" and not cfg.judge.base_url:
        skipped = [t for t in cfg.tasks if t in tasks and tasks[t].judged]
        if skipped:
            print(f"no --judge-base-url: skipping {', '.join(skipped)}", file=sys.stderr)
            from dataclasses import replace

            cfg = replace(cfg, tasks=[t for t in cfg.tasks if t not in skipped])
    return cfg


def run_eval(args: argparse.Namespace) -> int:
    from tinystories.eval.judge import CostPreview, mostly_missing
    from tinystories.eval.suite import Suite

    cfg = config_from_args(args)

    def confirm(preview: CostPreview) -> bool:
        """Show the cost and ask before spending; False = stop here (dry run or declined)."""
        print(f"judge {cfg.judge.model} at {cfg.judge.base_url}: {preview}", file=sys.stderr)
        if cfg.dry_run:
            print("dry run: no judge calls made", file=sys.stderr)
            return False
        if preview.calls == 0 or cfg.yes:
            return True
        if not sys.stdin.isatty():
            raise TinyStoriesError("judge calls cost money: pass --yes to make them, or --dry-run to only "
                                   "count them")
        return input("proceed? [y/N] ").strip().lower() in ("y", "yes")

    from tinystories.utils import set_threads

    set_threads(cfg.threads)
    with hold_folder(cfg.out, enabled=not cfg.dry_run):  # (a dry run writes nothing)
        suite = Suite(cfg)
        out = suite.run(confirm)
    if out is None:
        return 0
    results = suite.results
    print(summary_table(results.to_json()))
    print(f"report: {out / 'report.md'} and {out / 'report.html'}")
    failed = [(what, info) for what, info in results.missing() if mostly_missing(info)]
    for what, info in failed:
        reasons = "; ".join(f"{r} ({n}x)" for r, n in info.reasons)
        print(f"error: {what}: {info.missing} of {info.total} judgments missing, fields missing "
              f"{info.field_missing}; commonest reasons: {reasons}", file=sys.stderr)
        if info.sample_answer:
            print(f"  the end of one unusable answer: {info.sample_answer[-300:]!r}", file=sys.stderr)
    if failed:
        print("error: most judgments are missing, so these numbers measure little; fix the judge (its URL, "
              "model or answer format) and rerun: answered judgments are cached", file=sys.stderr)
        return 1
    return 0


def _cell(est: dict | None) -> str:
    return "n/a" if not est or not est.get("n") else f"{est['mean']:.2f}"


def summary_table(results: dict) -> str:
    """The headline numbers per model, for the terminal (the report has intervals and plots)."""
    cols: list[tuple[str, object]] = [
        ("bits/byte", lambda r: f"{r['bpb']['bpb']:.4f}" if "bpb" in r else None),
        *[(k, lambda r, k=k: _cell(r["gpt_eval"]["scores"][k]) if "gpt_eval" in r else None)
          for k in ("grammar", "creativity", "consistency", "plot")],
        ("instructions", lambda r: _cell(r["instruct"]["scores"]["instructions"]) if "instruct" in r else None),
        *[(c, lambda r, c=c: _cell(r["probes"].get(c)) if "probes" in r else None)
          for c in ("factual", "reasoning", "context_tracking")],
        ("memorised", lambda r: _cell(r["diversity"]["max_precision_mean"]) if "diversity" in r else None),
        ("within-prompt", lambda r: _cell(r["diversity"]["within_prompt_f_mean"]) if "diversity" in r else None),
    ]
    models = results["models"]
    used = [(name, get) for name, get in cols if any(get(r) is not None for r in models.values())]  # type: ignore[operator]
    rows = [["model", *(n for n, _ in used)]]
    rows += [[m, *(str(get(r)) for _, get in used)] for m, r in models.items()]  # type: ignore[operator]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines = [lines[0], "-" * len(lines[0]), *lines[1:]] if used else []
    lines += [f"{p['models'][0]} wins vs {p['models'][1]}: {_cell(p['win_rate'])}"
              for p in results.get("pairwise", [])]
    if any(v == "n/a" for r in rows[1:] for v in r) or "n/a" in "".join(lines):
        lines.append("n/a: no usable value (see the report for why: missing judgments, or within-prompt overlap "
                     "with fewer than 2 samples per prompt)")
    return "\n".join(lines)


SETUP = {"eval": setup_eval}
