"""Which sampling settings make a model's stories read best: a blind grading sheet, then its table.

Bits per byte cannot see whether a story reads well, and decoding trades grammar against
creativity, so the `story` preset is chosen by grading. `write` continues fixed story beginnings
(the paper's GPT-Eval prompts) with one model at each setting, same seeds, and mixes in real
TinyStories stories as controls, cut after their first sentence as the model's are given theirs.
The sheet (`sheet.jsonl`) shows only an id, the beginning and the continuation, shuffled; the key
(`key.json`) says which setting wrote each. A grader (the project's judge task against an
endpoint, or a careful teacher) scores each continuation 1-10 for grammar, creativity,
consistency and plot, the paper's rubric, into `grades.jsonl` (`{"id", "grammar", "creativity",
"consistency", "plot"}` a line); `score` joins them with the key and prints the mean per setting.

``--best-of N`` adds, for each setting, the story with the highest mean log-probability per token
(under the model, temperature 1) out of N drawn with seeds seed, seed + 1000, ... (the first is
the setting's own story): what OpenAI's `best_of` would print, graded beside the plain draw.

    python bench/bench_story_preset.py write runs/demo --out bench/story_grading
    python bench/bench_story_preset.py score bench/story_grading
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import re
import statistics
from pathlib import Path

from tinystories.data.beginnings import load_beginnings
from tinystories.data.corpus import read_stories
from tinystories.infer.offline import run
from tinystories.infer.params import SamplingParams
from tinystories.model.loader import LoadedModel, load_any
from tinystories.utils import atomic_write

SETTINGS = {
    "T0.8 top-p 0.95": SamplingParams(temperature=0.8, top_p=0.95),
    "T0.65 top-p 0.95": SamplingParams(temperature=0.65, top_p=0.95),
    "T0.5 top-p 0.95": SamplingParams(temperature=0.5, top_p=0.95),
    "T0.7 top-p 0.9": SamplingParams(temperature=0.7, top_p=0.9),
    "T1.0 top-k 40": SamplingParams(temperature=1.0, top_k=40),
    "T0.7 top-k 20": SamplingParams(temperature=0.7, top_k=20),
    "T0.8 min-p 0.1": SamplingParams(temperature=0.8, min_p=0.1),
    "T0.65 min-p 0.1": SamplingParams(temperature=0.65, min_p=0.1),
    "T0.65 top-p 0.95 rep 1.2": SamplingParams(temperature=0.65, top_p=0.95, repetition_penalty=1.2),
    "T0.5 top-p 0.95 rep 1.2": SamplingParams(temperature=0.5, top_p=0.95, repetition_penalty=1.2),
    "T0.8 min-p 0.1 rep 1.2": SamplingParams(temperature=0.8, min_p=0.1, repetition_penalty=1.2),
}
RUBRIC = ("grammar", "creativity", "consistency", "plot")
CONTROL = "real TinyStories story (control)"


def first_sentence(story: str) -> tuple[str, str]:
    """A real story split after its first sentence: (beginning, the rest)."""
    m = re.search(r"[.!?][\"']?\s", story)
    cut = m.end() if m else len(story) // 3
    return story[:cut].rstrip(), story[cut:].strip()


def draws(loaded: LoadedModel, prompts: list[str], params: SamplingParams) -> list[tuple[str, float]]:
    """Each prompt's continuation and its mean log-probability per new token."""
    lps: list[list[float]] = [[] for _ in prompts]
    seqs = run(loaded.model, loaded.tokenizer, loaded.tokenizer.encode_stories(prompts), params,
               emit=lambda i, ev: lps[i].extend(ev.logprobs), logprobs=True)
    return [(s.text, sum(lp) / max(1, len(lp))) for s, lp in zip(seqs, lps)]


def write(model_dir: str, out: Path, beginnings: int, controls: int, seed: int, max_new_tokens: int,
          settings: list[str], best_of: int = 1) -> None:
    loaded = load_any(model_dir)
    prompts = load_beginnings()[:beginnings]
    chosen = {name: SETTINGS[name] for name in settings}
    rows = []
    for name, params in chosen.items():
        params = dataclasses.replace(params, seed=seed, max_new_tokens=max_new_tokens)
        drawn = [draws(loaded, prompts, dataclasses.replace(params, seed=seed + 1000 * k)) for k in range(best_of)]
        rows += [{"setting": name, "beginning": p, "continuation": d[0]} for p, d in zip(prompts, drawn[0])]
        if best_of > 1:
            best = [max(candidates, key=lambda d: d[1])[0] for candidates in zip(*drawn)]
            rows += [{"setting": f"{name} best-of-{best_of}", "beginning": p, "continuation": t}
                     for p, t in zip(prompts, best)]
    # Controls: held-out validation rows the model never trained on (bundled:valid's last ones).
    for story in read_stories("bundled:valid")[0][-controls:]:
        beginning, rest = first_sentence(story)
        rows.append({"setting": CONTROL, "beginning": beginning, "continuation": rest})
    random.Random(seed).shuffle(rows)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / "sheet.jsonl") as f:
        for i, r in enumerate(rows):
            f.write(json.dumps({"id": i, "beginning": r["beginning"], "continuation": r["continuation"]}) + "\n")
    with atomic_write(out / "key.json") as f:
        json.dump({"model": model_dir, "seed": seed, "max_new_tokens": max_new_tokens, "best_of": best_of,
                   "settings": {k: dataclasses.asdict(v) for k, v in chosen.items()},
                   "rows": {str(i): r["setting"] for i, r in enumerate(rows)}}, f, indent=1)
    print(f"wrote {len(rows)} rows to {out / 'sheet.jsonl'} ({len(chosen)} settings x {len(prompts)} beginnings, "
          f"{controls} controls); the key is {out / 'key.json'}")


def score(folder: Path) -> None:
    key = json.loads((folder / "key.json").read_text())["rows"]
    by_setting: dict[str, dict[str, list[float]]] = {}
    for line in (folder / "grades.jsonl").read_text().splitlines():
        g = json.loads(line)
        marks = by_setting.setdefault(key[str(g["id"])], {c: [] for c in RUBRIC})
        for c in RUBRIC:
            marks[c].append(float(g[c]))
    print("| setting | n | " + " | ".join(RUBRIC) + " |\n|---|---:|" + "---:|" * len(RUBRIC))
    for name, marks in sorted(by_setting.items(), key=lambda kv: -statistics.mean(kv[1]["grammar"])):
        cells = " | ".join(f"{statistics.mean(marks[c]):.1f} ({min(marks[c]):g}-{max(marks[c]):g})" for c in RUBRIC)
        print(f"| {name} | {len(marks['grammar'])} | {cells} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("write", help="write the blind sheet and its key")
    w.add_argument("model")
    w.add_argument("--out", type=Path, default=Path("bench/story_grading"))
    w.add_argument("--beginnings", type=int, default=12)
    w.add_argument("--controls", type=int, default=8)
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("--max-new-tokens", type=int, default=180)
    w.add_argument("--best-of", type=int, default=1, help="also each setting's best of N draws by mean log-probability")
    w.add_argument("--settings", type=lambda v: v.split(","), default=list(SETTINGS),
                   help=f"comma-separated names among: {', '.join(SETTINGS)}")
    s = sub.add_parser("score", help="join grades.jsonl with the key: the mean per setting")
    s.add_argument("folder", type=Path)
    args = ap.parse_args()
    if args.cmd == "write":
        unknown = [n for n in args.settings if n not in SETTINGS]
        if unknown:
            ap.error(f"unknown setting(s) {unknown}; choose among {list(SETTINGS)}")
        if args.best_of < 1:
            ap.error(f"--best-of must be at least 1, not {args.best_of}")
        write(args.model, args.out, args.beginnings, args.controls, args.seed, args.max_new_tokens, args.settings,
              args.best_of)
    else:
        score(args.folder)


if __name__ == "__main__":
    main()
