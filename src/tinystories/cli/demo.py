"""`tinystories demo`: the whole pipeline on the bundled real stories, on a CPU, in minutes.

corpus -> tokenizer -> token files -> train the `demo` preset -> validation bits/byte ->
sampled stories. Everything lands in one folder that the other commands accept.

`--corpus` takes any corpus `tinystories corpus` reads (a file, a `datasets` folder,
`hf:roneneldan/TinyStories`); the bundled sample is the default and needs no network. Its
validation stories are the bundled ones for the bundled sample, `--valid`'s if given, else
stories the trainer holds out of the corpus.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

from tinystories.cli.options import add_config_flags, add_field, add_fields, build_from_args
from tinystories.config import Config, setting
from tinystories.data.corpus import EncodingErrors

DEMO_PROMPTS = ["Once upon a time, there was a little girl named Lily.", "Tom and his dog went to the park.", ""]
BUNDLED = ["bundled:train"]
SCORED_STORIES = 500  # held-out stories scored exactly at the end (the bundled validation set's size)


@dataclass(frozen=True)
class DemoConfig(Config):
    out: str = setting("runs/demo", "folder for data, checkpoint and logs")
    minutes: float = setting(3.0, "training time budget (the LR schedule follows it)", gt=0)
    preset: str = setting("demo", "model preset (`tinystories presets`)")
    seed: int = setting(1337, "random seed", ge=0)
    device: str = setting("auto", "torch device: auto, cpu, cuda, mps")
    threads: int = setting(0, "CPU threads for torch; 0 = one per core not busy with other work", ge=0, le=4096)
    fit: bool = setting(True, "time a few training steps first, and fit the batch to the tokens the budget buys "
                              "on this machine and the dropout to the epochs they make of the corpus "
                              "(bench/README.md); false = the recipe as it is")
    corpus: list[str] = setting(help="training stories: whatever `tinystories corpus` reads (.txt, .jsonl/.json, "
                                     "parquet, a datasets folder, hf:NAME); the bundled sample needs no network",
                                factory=lambda: list(BUNDLED), ge=1)
    valid: list[str] = setting(help="validation stories; none given: the bundled ones with the bundled corpus, "
                                    "else stories held out of --corpus", factory=list)
    text_field: str = setting("text", "JSON field or column holding the story")
    split: str = setting("train", "split of a Hugging Face dataset")
    encoding_errors: EncodingErrors = setting("strict", "invalid UTF-8 in a corpus: strict (stop), replace (U+FFFD) "
                                                        "or skip (drop the story)")

    where = "demo"


def setup_demo(p: argparse.ArgumentParser) -> None:
    p.description = ("Train a tokenizer and a small model on the bundled TinyStories sample for a few minutes, "
                     "report validation bits per byte and print stories. --corpus trains on your own stories "
                     "instead.\n\nExamples:\n  tinystories demo --minutes 3 --out runs/demo\n"
                     "  tinystories demo --corpus my-stories.jsonl --minutes 10 --out runs/mine")
    add_fields(p, DemoConfig, ["out", "minutes", "preset", "seed", "device", "threads", "fit"])
    add_field(p, DemoConfig, "corpus", nargs="+", metavar="SOURCE")
    add_field(p, DemoConfig, "valid", nargs="+", metavar="SOURCE")
    add_fields(p, DemoConfig, ["text_field", "split", "encoding_errors"])
    add_config_flags(p)
    p.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    from tinystories.cli.train import sample_stories
    from tinystories.data.corpus import read_stories
    from tinystories.data.prepare import PrepareConfig, prepare
    from tinystories.eval.bpb import evaluate_bpb
    from tinystories.infer.offline import complete
    from tinystories.infer.params import preset
    from tinystories.model.loader import load_any
    from tinystories.train.batches import split_stories
    from tinystories.train.budget import measure_throughput, plans_for
    from tinystories.train.config import build_train_config
    from tinystories.train.trainer import Trainer
    from tinystories.utils import choose_threads, describe_cpu, pick_device

    cfg = build_from_args(DemoConfig, args)
    out = Path(cfg.out)
    started = time.perf_counter()
    # Threads are chosen once, before any work of ours runs: the fit's probe and the run must use
    # the same count, and one measured just after tokenizing can count its threads as busy.
    threads = choose_threads(cfg.threads)
    bundled = cfg.corpus == BUNDLED
    valid = cfg.valid or (["bundled:valid"] if bundled else [])
    print(f"== 1/4 corpus and tokenizer ({'bundled TinyStories sample, CDLA-Sharing-1.0' if bundled else ' '.join(cfg.corpus)})")
    data = out / "data"
    infos = prepare(PrepareConfig(train=cfg.corpus, valid=valid, out_dir=str(data), vocab_size=4096,
                                  text_field=cfg.text_field, split=cfg.split, encoding_errors=cfg.encoding_errors))
    print(f"== 2/4 training the {cfg.preset!r} preset for up to {cfg.minutes:g} minutes "
          f"({infos['train'].tokens:,} tokens of stories)")
    # The recipe is `train`'s defaults (bench/README.md); the demo sets only its budget and
    # a denser log for a short run, and fits the batch to the tokens this machine's minutes buy
    # and the dropout to the epochs those tokens make of the corpus (`train/budget.py`).
    # Validating every 100 steps on 6 batches (and writing 2 stories) costs about the time of 3
    # training steps, 3-4% of the run (docs/training.md); checkpoint/ keeps the best model.
    train_cfg = build_train_config(
        None, None, data_dir=str(data), out_dir=str(out), preset=cfg.preset, seed=cfg.seed,
        device=cfg.device, threads=threads, max_steps=100_000, max_minutes=cfg.minutes, eval_interval=100,
        eval_batches=6, checkpoint_interval=100)
    fitted, plans = "", []
    if cfg.fit:
        tok_s = measure_throughput(train_cfg)
        tokens = tok_s * 60 * cfg.minutes
        # the epochs the budget buys: over the training tokens, less the stories the trainer
        # holds out to validate on when there are no validation stories
        corpus = infos["train"].tokens * (1 if valid else 1 - train_cfg.validation_split_percentage / 100)
        plans = plans_for(tokens, corpus)
        fitted = (f"this machine trains {tok_s:,.0f} tokens/s at batch {train_cfg.batch_size} ({describe_cpu()}): "
                  f"{cfg.minutes:g} minutes buy about {tokens / 1e6:.1f}M tokens")
        for plan in plans:
            train_cfg = plan.apply(train_cfg)
    trainer = Trainer(train_cfg, resume=False, sample=sample_stories)
    if cfg.fit:
        print(f"{fitted}, {tokens / trainer.data_tokens:.1f} epochs of the {trainer.data_tokens / 1e6:.2f}M "
              f"training tokens; {'; '.join(plan.why for plan in plans)}")
    trainer.fit()
    best = trainer.best
    if best.step is not None:
        epochs = best.step * train_cfg.tokens_per_step / trainer.data_tokens
        print(f"best model: step {best.step} of {trainer.step} ({epochs:.1f} epochs), "
              f"{best.metrics['val_bpb']:.3f} bits per byte on the validation windows: {out / 'checkpoint'} holds it")
    loaded = load_any(out, device=pick_device(cfg.device))
    if valid:
        stories = read_stories(valid, "validation", cfg.text_field, errors=cfg.encoding_errors)[0]
        what = "the 500 bundled validation stories" if valid == ["bundled:valid"] else f"the stories of {' '.join(valid)}"
    else:  # the stories the trainer held out of the corpus, never trained on
        assert trainer.held_out is not None, "no valid.bin: the trainer holds out validation stories"
        rows = split_stories(trainer.held_out, loaded.tokenizer.eos_id)[:SCORED_STORIES]
        stories = [loaded.tokenizer.decode(row.tolist()) for row in rows]
        what = f"{len(stories)} stories held out of the corpus"
    print(f"== 3/4 validation: {what}, whole, scored exactly (as `eval bpb`)")
    score = evaluate_bpb(loaded.model, loaded.tokenizer, stories, progress=False)
    print(f"validation loss {score.loss:.3f} nats/token = {score.bpb:.3f} bits per byte "
          f"(loss curves: {out / 'loss.png'})")
    print("== 4/4 stories written by the model")
    sampling = preset("story", max_new_tokens=180, seed=cfg.seed)
    for prompt, story in zip(DEMO_PROMPTS, complete(loaded.model, loaded.tokenizer, DEMO_PROMPTS, sampling)):
        print(f"\n--- {prompt or '(no prompt)'}\n{prompt}{story}")
    print(f"\ndone in {(time.perf_counter() - started) / 60:.1f} minutes. Model: {out / 'checkpoint'} "
          f"(try: tinystories sample {out / 'checkpoint'} --prompt 'Once upon a time')")
    return 0


SETUP = {"demo": setup_demo}
