"""`tinystories train`."""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

from tinystories.cli.options import add_config_flags, add_field, add_fields, build_from_args
from tinystories.folder_lock import hold_folder
from tinystories.train.config import TrainConfig

if TYPE_CHECKING:
    from tinystories.model.gpt import GPT
    from tinystories.tokenizer import Tokenizer


def setup_train(p: argparse.ArgumentParser) -> None:
    p.description = ("Train a model. OUT/checkpoint is the model that scored best on validation; rerunning with "
                     "the same --out resumes from OUT/last exactly. "
                     "Several GPUs: torchrun --nproc_per_node 4 -m tinystories.cli train ...\n\nExamples:\n"
                     "  tinystories train --data data/tokens --preset 8M --out runs/8m\n"
                     "  tinystories train --config configs/paper-8M.yaml --set optim.lr=1e-3")
    add_fields(p, TrainConfig, ["data_dir", "out_dir", "preset", "max_steps", "max_minutes", "batch_size",
                                "device", "seed", "threads", "eval_samples"])
    add_field(p, TrainConfig, "log_to", nargs="+", metavar="TRACKER")
    p.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint in --out")
    add_config_flags(p)
    p.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    cfg = build_from_args(TrainConfig, args)
    with hold_folder(cfg.out_dir, enabled=os.environ.get("RANK", "0") == "0"):  # torchrun: rank 0 holds it
        from tinystories.train.budget import epoch_advice
        from tinystories.train.trainer import Trainer  # torch import only when training

        trainer = Trainer(cfg, resume=not args.fresh, sample=sample_stories)
        advice = epoch_advice(cfg, trainer.data_tokens, trainer.dist.world)
        if advice and trainer.dist.main and trainer.step == 0:
            print(advice)
        result = trainer.fit()
    if os.environ.get("RANK", "0") != "0":  # under torchrun only the first process reports
        return 0
    if result:
        best = trainer.best.step if cfg.load_best_model_at_end else None
        kept = f"the best model (step {best} of {trainer.step})" if best is not None else \
            f"the last model (step {trainer.step})"
        print(f"{kept}: validation loss {result['val_loss']:.4f} nats/token, {result['val_bpb']:.4f} bits/byte")
    print(f"model saved in {cfg.out_dir}/checkpoint (sample it: tinystories sample {cfg.out_dir}/checkpoint); "
          f"the last state, to resume from, in {cfg.out_dir}/last")
    return 0


BEGINNINGS = ["Once upon a time,", "", "Tom and his dog", "One day, Lily found"]


def sample_stories(model: GPT, tokenizer: Tokenizer, n: int) -> list[str]:
    """A few stories (the same beginnings and seed at every evaluation), to watch the model learn."""
    from tinystories.infer.offline import complete
    from tinystories.infer.params import preset

    texts = [BEGINNINGS[i % len(BEGINNINGS)] for i in range(n)]
    params = preset("story", max_new_tokens=100, seed=0)
    return [t + s for t, s in zip(texts, complete(model, tokenizer, texts, params))]


SETUP = {"train": setup_train}
