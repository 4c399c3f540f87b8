"""`tinystories train`."""

from __future__ import annotations

import argparse
import os

from tinystories.cli.options import add_config_flags, add_fields, build_from_args
from tinystories.train.config import TrainConfig


def setup_train(p: argparse.ArgumentParser) -> None:
    p.description = ("Train a model. Rerunning with the same --out resumes from OUT/checkpoint exactly. "
                     "Several GPUs: torchrun --nproc_per_node 4 -m tinystories.cli train ...\n\nExamples:\n"
                     "  tinystories train --data data/tokens --preset 8M --out runs/8m\n"
                     "  tinystories train --config configs/paper-8M.yaml --set optim.lr=1e-3")
    add_fields(p, TrainConfig, ["data_dir", "out_dir", "preset", "max_steps", "max_minutes", "batch_size",
                                "device", "seed", "threads"])
    p.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint in --out")
    add_config_flags(p)
    p.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    from tinystories.train.trainer import Trainer  # torch import only when training

    cfg = build_from_args(TrainConfig, args)
    result = Trainer(cfg, resume=not args.fresh).fit()
    if os.environ.get("RANK", "0") != "0":  # under torchrun only the first process reports
        return 0
    if result:
        print(f"validation loss {result['val_loss']:.4f} nats/token, {result['val_bpb']:.4f} bits/byte")
    print(f"model saved in {cfg.out_dir}/checkpoint (sample it: tinystories sample {cfg.out_dir}/checkpoint)")
    return 0


SETUP = {"train": setup_train}
