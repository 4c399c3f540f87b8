"""`tinystories train`."""

from __future__ import annotations

import argparse
import os

from tinystories.train.config import build_train_config


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train a tiny GPT on pretokenized data (resumable; torchrun for several GPUs)",
        description="Train a model. Settings come from --config (YAML), then the flags, then --set "
                    "overrides (e.g. --set optim.lr=1e-3 --set model.n_layer=2). Rerunning with the same "
                    "--out resumes from OUT/checkpoint exactly. Several GPUs: "
                    "torchrun --nproc_per_node 4 -m tinystories.cli train ...")
    p.add_argument("--config", help="YAML/JSON file with TrainConfig fields (see configs/)")
    p.add_argument("--data", dest="data_dir", help="folder written by `tinystories pretokenize`")
    p.add_argument("--out", dest="out_dir", help="run folder: checkpoint/, metrics.csv, loss.png, config.yaml")
    p.add_argument("--preset", help="model shape (see `tinystories presets`)")
    p.add_argument("--max-steps", type=int)
    p.add_argument("--max-minutes", type=float, help="stop (and finish the LR schedule) after this much time")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--device", help="auto, cpu, cuda, cuda:1, mps")
    p.add_argument("--seed", type=int)
    p.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint in --out")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config field, e.g. optim.lr=3e-4")
    p.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    from tinystories.train.trainer import Trainer  # torch import only when training

    cfg = build_train_config(
        args.config, args.overrides, data_dir=args.data_dir, out_dir=args.out_dir, preset=args.preset,
        max_steps=args.max_steps, max_minutes=args.max_minutes, batch_size=args.batch_size,
        device=args.device, seed=args.seed)
    result = Trainer(cfg, resume=not args.fresh).fit()
    if os.environ.get("RANK", "0") != "0":  # under torchrun only the first process reports
        return 0
    if result:
        print(f"validation loss {result['val_loss']:.4f} nats/token, {result['val_bpb']:.4f} bits/byte")
    print(f"model saved in {cfg.out_dir}/checkpoint (sample it: tinystories sample {cfg.out_dir}/checkpoint)")
    return 0
