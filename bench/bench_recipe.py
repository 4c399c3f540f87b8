"""The recipe benchmark: which training recipe writes the best stories per unit of compute?

In the spirit of a speedrun: several recipes train on the same data (the bundled real
TinyStories sample) for the same budget, and each is scored on whole held-out stories
(the 500 bundled validation stories) with the exact `tinystories eval bpb` method
(`tinystories.eval.bpb.evaluate_bpb`). Bits per byte compares tokenizers of any size.

Budgets, two ways:

* ``--tokens N``: a fixed number of training tokens, machine-independent (the FLOPs are
  reported too: 6 x parameters in matmuls + 6 x layers x context x width, per token);
* ``--seconds S``: wall-clock training time on this machine (the LR schedule follows the
  clock). Recipes run in turn, ``--repeats`` rounds, so machine noise hits all alike; the
  load average is recorded before each run.

The peer in every run is llama2.c's `model.py` (../shared/peers/llama2c, pinned, imported
from there), trained as its `train.py` does: AdamW (betas 0.9/0.95, weight decay 0.1 on
matrices, fused), gradient clipping at 1, linear warmup then cosine decay to 0, random
windows visited once per epoch in shuffled order; at our demo shape (dim 128, 4 layers,
4 heads, our tokenizer), with the same data and budget; its learning rate is the one that
won for it at this budget (``--peer-lr``).

    python bench/bench_recipe.py --tokens 3000000 --recipes recipe,baseline,peer --jobs 2 --threads 1
    python bench/bench_recipe.py --seconds 180 --recipes recipe,baseline,neo,peer --repeats 2

Held-out rows (``--holdout N``): the bundled validation stories resemble the bundled training
text (about 0.1 bits per byte easier than unseen stories), so a run that reads the small
sample many times can look better on them than it is. ``--holdout 300`` takes the last 300
stories of the bundled training sample out of training (the tokenizer does not see them
either) and scores every run on them as well. The bundled validation rows still pick the best
checkpoint, as in `tinystories demo` (validation every 100 steps on 6 batches, unless
``--eval-every`` says otherwise); each row holds both scores of the best checkpoint and of the
last weights (``last/``).

    python bench/bench_recipe.py --tokens 6.3e6 --holdout 300 --recipes recipe,recipe-dropout0.1 --threads 1
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tinystories.utils import describe_cpu

HERE = Path(__file__).parent
PEER = HERE.parents[1] / "shared" / "peers" / "llama2c"
CACHE = HERE / ".recipe_cache"

# name -> (vocab size, config overrides, what it is). "recipe" is `train`'s defaults, what
# `tinystories demo` trains; the others pin every setting they differ in, so they keep
# meaning the same thing when the defaults move.
OLD_OPTIM = ["optim.optimizer=adamw", "optim.lr=2e-3", "optim.min_lr=2e-4", "optim.schedule=cosine",
             "data_order=random"]
BASE = ["preset=demo", "model.arch=modern", "batch_size=16", "optim.warmup_steps=30", *OLD_OPTIM]
RECIPES: dict[str, tuple[int, list[str], str]] = {
    "neo": (4096, ["preset=demo", "model.arch=neo", "batch_size=32", "optim.warmup_steps=100", *OLD_OPTIM],
            "the old default: GPT-Neo demo shape, AdamW 2e-3 cosine, batch 32"),
    "baseline": (4096, BASE, "modern demo shape, AdamW 2e-3 cosine, random windows, batch 16"),
    "recipe": (4096, [], "the defaults: modern, Muon 4e-3 (q, k, v apart) + AdamW, WSD, story starts, batch 16"),
    # the recipe with one lever undone (the ablation table)
    "recipe-adamw": (4096, ["optim.optimizer=adamw", "optim.lr=3e-3"], "AdamW (at its best, 3e-3) for all"),
    "recipe-adam2e-3": (4096, ["optim.lr=2e-3"], "AdamW part (embeddings, head, norms) at 2e-3"),
    "recipe-cosine": (4096, ["optim.schedule=cosine"], "cosine decay instead of WSD"),
    "recipe-random": (4096, ["data_order=random"], "random windows instead of story starts"),
    "recipe-neo": (4096, ["model.arch=neo"], "GPT-Neo block instead of the modern one"),
    # levers tried on top of the recipe
    "recipe-v2048": (2048, [], "a 2048-token vocabulary"),
    "recipe-v8192": (8192, [], "an 8192-token vocabulary"),
    "recipe-qknorm": (4096, ["model.qk_norm=true"], "QK-norm"),
    "recipe-relu2": (4096, ["model.mlp=relu2"], "ReLU^2 MLP instead of SwiGLU"),
    "recipe-muon8e-3": (4096, ["optim.muon_lr=8e-3"], "Muon at 8e-3"),
    "recipe-batch32": (4096, ["batch_size=32"], "batch 32"),
    "recipe-batch8": (4096, ["batch_size=8"], "batch 8 (twice the steps for the same tokens)"),
    "recipe-batch4": (4096, ["batch_size=4"], "batch 4 (four times the steps for the same tokens)"),
    "recipe-batch8-muon8e-3": (4096, ["batch_size=8", "optim.muon_lr=8e-3"], "batch 8, Muon at 8e-3"),
    "recipe-batch8-lr8e-3": (4096, ["batch_size=8", "optim.muon_lr=8e-3", "optim.lr=8e-3"],
                             "batch 8, Muon and AdamW at 8e-3"),
    "recipe-ctx128": (4096, ["model.context_length=128", "batch_size=32"], "context 128 (batch 32: same tokens a step)"),
    "recipe-ctx512": (4096, ["model.context_length=512", "batch_size=8"], "context 512 (batch 8: same tokens a step)"),
    # levers against overfitting when the small sample is read many times (--holdout)
    "recipe-dropout0.1": (4096, ["model.dropout=0.1", "model.attention_dropout=0.1"],
                          "dropout 0.1 everywhere, the attention pattern included"),
    "recipe-residdrop0.1": (4096, ["model.dropout=0.1"],
                            "dropout 0.1 on the embeddings and the residual branches, none on the attention pattern"),
    "recipe-residdrop0.05": (4096, ["model.dropout=0.05"], "dropout 0.05, none on the attention pattern"),
    "recipe-residdrop0.2": (4096, ["model.dropout=0.2"], "dropout 0.2, none on the attention pattern"),
    "recipe-batch8-residdrop0.1": (4096, ["batch_size=8", "model.dropout=0.1"],
                                   "batch 8 (the demo's below ~1.8M tokens) and dropout 0.1, none on attention"),
    "recipe-qkvfused": (4096, ["optim.muon_split_qkv=false"], "Muon on q, k, v as one fused matrix (to 12-07)"),
    "recipe-residdrop0.2-qkvfused": (4096, ["model.dropout=0.2", "optim.muon_split_qkv=false"],
                                     "dropout 0.2, none on the attention pattern; Muon on q, k, v fused"),
    "recipe-decay1.0": (4096, ["optim.decay_frac=1.0"], "WSD decaying over the whole run (linear from warmup)"),
    "recipe-decay0.6": (4096, ["optim.decay_frac=0.6"], "WSD decaying over the last 60% of the run"),
    "recipe-wd": (4096, ["optim.weight_decay=0.5", "optim.muon_weight_decay=0.5"],
                  "weight decay 0.5 on AdamW's and Muon's matrices"),
    "recipe-residdrop0.1-decay1.0": (4096, ["model.dropout=0.1", "optim.decay_frac=1.0"],
                                     "dropout 0.1 (none on attention) and WSD decaying over the whole run"),
}


def flops_per_token(cfg: Any) -> float:
    """Training FLOPs per token (Kaplan et al.'s estimate): 6 x matmul parameters + attention."""
    d, L, V, T = cfg.d_model, cfg.n_layer, cfg.vocab_size, cfg.context_length
    mlp = (3 if cfg.activation == "swiglu" else 2) * d * cfg.ffn_dim
    matmul = L * (4 * d * d + mlp) + V * d  # the output layer is a matmul even when tied
    return 6 * matmul + 6 * L * T * d


def split_bundled(holdout: int) -> tuple[list[str], list[str]]:
    """The bundled training stories without their last `holdout`, and those `holdout` stories."""
    from tinystories.data.corpus import read_stories

    stories = read_stories("bundled:train")[0]
    if not 0 < holdout < len(stories):
        raise SystemExit(f"--holdout {holdout}: the bundled sample has {len(stories)} stories")
    return stories[:-holdout], stories[-holdout:]


def data_dir(vocab: int, holdout: int = 0) -> Path:
    """Token files of the bundled sample; with `holdout`, of all but its last `holdout` stories."""
    from tinystories.data.prepare import PrepareConfig, prepare

    out = CACHE / (f"bundled-v{vocab}-holdout{holdout}" if holdout else f"bundled-v{vocab}")
    if not (out / "valid.bin").exists():
        train = ["bundled:train"]
        if holdout:
            out.mkdir(parents=True, exist_ok=True)
            kept = out / "train_stories.jsonl"
            kept.write_text("".join(json.dumps({"text": s}) + "\n" for s in split_bundled(holdout)[0]))
            train = [str(kept)]
        prepare(PrepareConfig(train=train, out_dir=str(out), vocab_size=vocab), progress=False)
    return out


def score(model: torch.nn.Module, tokenizer: Any, holdout: int = 0, prefix: str = "") -> dict[str, Any]:
    """Bits per byte on the bundled validation stories (`bpb`) and, with `holdout`, on the held-out
    training stories (`holdout_bpb`); keys start with `prefix`."""
    from tinystories.data.corpus import read_stories
    from tinystories.eval.bpb import evaluate_bpb

    sets = {"": read_stories("bundled:valid")[0]}
    if holdout:
        sets["holdout_"] = split_bundled(holdout)[1]
    return {f"{prefix}{key}bpb": evaluate_bpb(model, tokenizer, stories, batch_size=16,  # type: ignore[arg-type]
                                              progress=False).bpb for key, stories in sets.items()}


def run_ours(name: str, budget: dict[str, float], threads: int, out_root: Path, seed: int, holdout: int = 0,
             eval_every: int = 0) -> dict[str, Any]:
    from tinystories.model.checkpoint import load_model
    from tinystories.train.config import build_train_config
    from tinystories.train.trainer import Trainer

    torch.set_num_threads(threads)
    vocab, overrides, _ = RECIPES[name]
    data = data_dir(vocab, holdout)
    out = out_root / (f"{name}-s{seed}" + (f"-h{holdout}" if holdout else ""))
    overrides = [*overrides, f"model.vocab_size={vocab}"]
    # eval_every: validate (and keep the best checkpoint) at the demo's cadence; 0 = at the end only
    common = {"data_dir": str(data), "out_dir": str(out), "seed": seed, "progress": False, "threads": threads,
              "eval_interval": eval_every or 10**9, "eval_batches": 6 if eval_every else 20,
              "checkpoint_interval": 10**9, "log_interval": 50}
    if "tokens" in budget:
        per_step = build_train_config(None, overrides, **common).tokens_per_step
        cfg = build_train_config(None, overrides, **common, max_steps=max(1, round(budget["tokens"] / per_step)))
    else:
        cfg = build_train_config(None, overrides, **common, max_steps=10**9, max_minutes=budget["seconds"] / 60)
    load = os.getloadavg()[0]
    trainer = Trainer(cfg, resume=False)
    start = time.perf_counter()
    trainer.fit()
    seconds = trainer.train_seconds
    tokens = trainer.step * cfg.tokens_per_step
    loaded = load_model(out / "checkpoint")
    result = score(loaded.model, loaded.tokenizer, holdout)
    best = trainer.best.step if trainer.best.step is not None else trainer.step
    if best != trainer.step:  # the last weights too (last/), when the best checkpoint is another step's
        result.update(score(load_model(out / "last").model, loaded.tokenizer, holdout, prefix="last_"))
    else:
        result.update({f"last_{k}": v for k, v in result.items()})
    return {"recipe": name, "seed": seed, "vocab": vocab, **result, "best_step": best,
            "epochs": tokens / trainer.data_tokens, "best_epochs": best * cfg.tokens_per_step / trainer.data_tokens,
            "data_tokens": trainer.data_tokens, "steps": trainer.step,
            "tokens": tokens, "train_s": seconds, "tok_s": tokens / seconds, "wall_s": time.perf_counter() - start,
            "flops": tokens * flops_per_token(cfg.model), "params": loaded.model.num_params(), "load": load}


def run_peer(budget: dict[str, float], threads: int, seed: int, lr: float, vocab: int = 4096,
             batch: int = 16, context: int = 256, holdout: int = 0) -> dict[str, Any]:
    """llama2.c's model.py, trained as its train.py does (see the module doc)."""
    if not (PEER / "model.py").exists():
        raise SystemExit(f"the peer is missing: {PEER}/model.py (llama2.c, see ../shared/peers)")
    sys.path.insert(0, str(PEER))
    from model import ModelArgs, Transformer  # llama2.c's model.py

    from tinystories.data.pretokenize import load_tokens
    from tinystories.tokenizer import Tokenizer

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    data = data_dir(vocab, holdout)
    tokenizer = Tokenizer.from_file(data / "tokenizer.json")
    tokens, _ = load_tokens(data / "train.bin", tokenizer)
    args = ModelArgs(dim=128, n_layers=4, n_heads=4, n_kv_heads=4, vocab_size=vocab, multiple_of=32,
                     max_seq_len=context, dropout=0.0)
    model = Transformer(args)
    opt = model.configure_optimizers(0.1, lr, (0.9, 0.95), "cpu")
    tokens_per_step = batch * context
    max_steps = round(budget["tokens"] / tokens_per_step) if "tokens" in budget else None
    warmup = 30
    rng = np.random.default_rng(seed)
    windows: list[int] = []

    def next_batch() -> tuple[torch.Tensor, torch.Tensor]:  # its PretokDataset: shuffled chunks per epoch
        while len(windows) < batch:
            windows.extend(rng.permutation(np.arange(0, len(tokens) - context - 1, context + 1)).tolist())
        starts = [windows.pop() for _ in range(batch)]
        xy = torch.from_numpy(np.stack([tokens[s:s + context + 1] for s in starts]).astype(np.int64))
        return xy[:, :-1].contiguous(), xy[:, 1:].contiguous()

    load, step, seconds = os.getloadavg()[0], 0, 0.0
    while True:
        progress = step / max_steps if max_steps else seconds / budget["seconds"]
        if progress >= 1:
            break
        factor = (step + 1) / warmup if step < warmup else 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        for group in opt.param_groups:
            group["lr"] = lr * factor  # cosine to min_lr = 0, as its train.py
        t0 = time.perf_counter()
        x, y = next_batch()
        model(x, y)
        model.last_loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        seconds += time.perf_counter() - t0
        step += 1
    model.eval()

    class Full(torch.nn.Module):
        """Its forward returns only the last position's logits without targets; ours scores all."""

        def __init__(self) -> None:
            super().__init__()
            self.inner, self.cfg = model, type("Cfg", (), {"context_length": context})

        def forward(self, idx: torch.Tensor) -> tuple[torch.Tensor, None]:
            return self.inner(idx, torch.full_like(idx, -1)), None

    result = score(Full(), tokenizer, holdout)  # (no validation during training: best = last)
    cfg = type("Cfg", (), {"d_model": 128, "n_layer": 4, "vocab_size": vocab, "context_length": context,
                           "activation": "swiglu", "ffn_dim": model.layers[0].feed_forward.w1.out_features})
    tokens_seen = step * tokens_per_step
    result.update({f"last_{k}": v for k, v in result.items()})
    return {"recipe": "peer", "seed": seed, "vocab": vocab, **result, "best_step": step,
            "epochs": tokens_seen / len(tokens), "best_epochs": tokens_seen / len(tokens), "data_tokens": len(tokens),
            "steps": step, "tokens": tokens_seen,
            "train_s": seconds, "tok_s": tokens_seen / seconds, "wall_s": seconds,
            "flops": tokens_seen * flops_per_token(cfg), "params": sum(p.numel() for p in model.parameters()),
            "load": load}


def one(name: str, budget: dict[str, float], threads: int, out_root: Path, seed: int, peer_lr: float,
        holdout: int = 0, eval_every: int = 0) -> dict[str, Any]:
    if name == "peer":
        return run_peer(budget, threads, seed, peer_lr, holdout=holdout)
    return run_ours(name, budget, threads, out_root, seed, holdout, eval_every)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--tokens", type=float, help="training tokens per run (machine-independent budget)")
    g.add_argument("--seconds", type=float, help="training seconds per run on this machine")
    ap.add_argument("--recipes", default="recipe,baseline,peer", help=f"comma-separated, from {', '.join(RECIPES)}, peer")
    ap.add_argument("--repeats", type=int, default=1, help="rounds over the recipes (with --seconds: noise)")
    ap.add_argument("--seeds", default="1337", help="comma-separated seeds (each recipe runs once per seed)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads per run")
    ap.add_argument("--jobs", type=int, default=1, help="runs at once (only with --tokens: timing is not kept)")
    ap.add_argument("--peer-lr", type=float, default=2e-3)
    ap.add_argument("--holdout", type=int, default=0, help="train without the last N bundled training stories "
                    "and score every run on them too (see the module doc)")
    ap.add_argument("--eval-every", type=int, default=None, help="validate every this many steps, keeping the "
                    "best checkpoint (default: 100, as the demo, with --holdout; else only at the end)")
    ap.add_argument("--out", default=str(HERE / ".recipe_runs"), help="run folders")
    ap.add_argument("--results", default=str(HERE / "recipe_results.jsonl"), help="appended, one JSON per run")
    args = ap.parse_args()
    if args.seconds and args.jobs > 1:
        raise SystemExit("--jobs > 1 only with --tokens: runs sharing the cores would skew a time budget")
    budget = {"tokens": args.tokens} if args.tokens else {"seconds": args.seconds}
    eval_every = args.eval_every if args.eval_every is not None else (100 if args.holdout else 0)
    held = {}
    if args.holdout:
        kept = len(split_bundled(args.holdout)[0])
        held = {"holdout": {"source": "bundled:train", "stories": f"the last {args.holdout}, "
                            f"{kept}-{kept + args.holdout - 1} counting from 0", "count": args.holdout}}
    cpu = describe_cpu()
    names = [r.strip() for r in args.recipes.split(",") if r.strip()]
    unknown = [n for n in names if n not in RECIPES and n != "peer"]
    if unknown:
        raise SystemExit(f"unknown recipe(s) {unknown}; known: {', '.join(RECIPES)}, peer")
    for n in names:
        data_dir(RECIPES[n][0] if n in RECIPES else 4096, args.holdout)  # prepared once, before any timing
    work = [(n, int(s)) for _ in range(args.repeats) for s in args.seeds.split(",") for n in names]
    print(f"budget {budget}; {args.threads} threads per run, {args.jobs} at once; torch {torch.__version__}; "
          f"{os.cpu_count()} x {cpu}", flush=True)
    rows = []
    with concurrent.futures.ProcessPoolExecutor(args.jobs) as pool:
        futures = [pool.submit(one, n, budget, args.threads, Path(args.out), s, args.peer_lr, args.holdout,
                               eval_every) for n, s in work]
        for future in futures:
            row = {**future.result(), "budget": budget, "date": time.strftime("%Y-%m-%d %H:%M"), "cpu": cpu,
                   "threads": args.threads, "jobs": args.jobs, "eval_every": eval_every, **held}
            rows.append(row)
            with open(args.results, "a") as f:
                f.write(json.dumps(row) + "\n")
            if args.holdout:
                print(f"{row['recipe']:<16} seed {row['seed']}: held-out {row['holdout_bpb']:.4f} (best, step "
                      f"{row['best_step']}, {row['best_epochs']:.1f} epochs) / {row['last_holdout_bpb']:.4f} (last, "
                      f"{row['epochs']:.1f} epochs); bundled valid {row['bpb']:.4f} / {row['last_bpb']:.4f}",
                      flush=True)
            print(f"{row['recipe']:<16} seed {row['seed']}: {row['bpb']:.4f} bpb, {row['steps']} steps, "
                  f"{row['tokens'] / 1e6:.2f}M tokens, {row['tok_s']:,.0f} tok/s, {row['flops'] / 1e12:.2f} TFLOP, "
                  f"load {row['load']:.1f}", flush=True)
    print("\n| recipe | bits per byte | steps | tokens | tokens/s | TFLOPs | load |\n|---|---:|---:|---:|---:|---:|---:|")
    for n in names:
        mine = [r for r in rows if r["recipe"] == n]
        bpb = [r["bpb"] for r in mine]
        span = f"{min(bpb):.4f}" if len(bpb) == 1 else f"{min(bpb):.4f}-{max(bpb):.4f}"
        print(f"| {n} | {span} | {mine[0]['steps']} | {mine[0]['tokens'] / 1e6:.2f}M | "
              f"{min(r['tok_s'] for r in mine):,.0f}-{max(r['tok_s'] for r in mine):,.0f} | "
              f"{mine[0]['flops'] / 1e12:.2f} | {min(r['load'] for r in mine):.1f}-{max(r['load'] for r in mine):.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
