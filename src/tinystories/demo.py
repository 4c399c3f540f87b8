"""`tinystories demo`: the whole pipeline on the bundled real stories, on a CPU, in minutes.

corpus -> tokenizer -> token files -> train the `demo` preset -> validation bits/byte ->
sampled stories. Everything lands in one folder that the other commands accept.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from tinystories.data.prepare import PrepareConfig, prepare
from tinystories.infer.sampling import SamplingConfig, complete
from tinystories.model.checkpoint import load_model

DEMO_PROMPTS = ["Once upon a time, there was a little girl named Lily.", "Tom and his dog went to the park.", ""]


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the whole pipeline on the bundled stories: train on the CPU, then sample",
                       description="Train a tokenizer and a small model on the bundled TinyStories sample "
                                   "for a few minutes, report validation bits per byte and print stories.")
    p.add_argument("--out", default="runs/demo", help="folder for data, checkpoint and logs (default: runs/demo)")
    p.add_argument("--minutes", type=float, default=3.0, help="training time budget (default: 3)")
    p.add_argument("--preset", default="demo", help="model preset (default: demo)")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    from tinystories.train.config import build_train_config
    from tinystories.train.trainer import Trainer

    out = Path(args.out)
    started = time.perf_counter()
    print("== 1/4 corpus and tokenizer (bundled TinyStories sample, CDLA-Sharing-1.0)")
    data = out / "data"
    infos = prepare(PrepareConfig(out_dir=str(data), vocab_size=4096))
    print(f"== 2/4 training the {args.preset!r} preset for up to {args.minutes:g} minutes "
          f"({infos['train'].tokens:,} training tokens)")
    cfg = build_train_config(
        None, ["optim.warmup_steps=30"], data_dir=str(data), out_dir=str(out), preset=args.preset, seed=args.seed, device=args.device,
        max_steps=100_000, max_minutes=args.minutes, batch_size=16, eval_interval=100, eval_batches=8,
        checkpoint_interval=100)
    result = Trainer(cfg, resume=False).fit()
    print("== 3/4 validation (bundled 500 validation stories)")
    print(f"validation loss {result['val_loss']:.3f} nats/token = {result['val_bpb']:.3f} bits per byte "
          f"(loss curves: {out / 'loss.png'})")
    print("== 4/4 stories written by the model")
    loaded = load_model(out / "checkpoint")
    sampling = SamplingConfig(max_new_tokens=180, temperature=0.7, top_p=0.9, seed=args.seed)
    for prompt, story in zip(DEMO_PROMPTS, complete(loaded.model, loaded.tokenizer, DEMO_PROMPTS, sampling)):
        print(f"\n--- {prompt or '(no prompt)'}\n{prompt}{story}")
    print(f"\ndone in {(time.perf_counter() - started) / 60:.1f} minutes. Model: {out / 'checkpoint'} "
          f"(try: tinystories sample {out / 'checkpoint'} --prompt 'Once upon a time')")
    return 0
