"""Fit a time-budgeted run to the machine it runs on, and to the corpus it reads.

A budget of minutes buys a number of tokens that depends on the CPU: on 2 cores the demo
shape trains at about 7,000 tokens/s on an AVX2 EPYC and 12,000-15,000 on an AVX-512 Xeon
(bench/README.md), so 3 minutes are 1.2M tokens on one and 2.5M on the other. The best
settings differ with the tokens: fewer tokens want more, smaller steps. They differ with the
epochs too (the tokens over the corpus's tokens): a small corpus read many times is learnt by
heart, and what scores best on stories the model has not seen changes. `measure_throughput`
times a few real steps; `plan_for` picks the settings that scored best in the recipe
benchmark at that many tokens, `epoch_plan_for` those that scored best at that many epochs.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from tinystories.train.config import TrainConfig
from tinystories.train.trainer import Trainer


@dataclass(frozen=True)
class Plan:
    """Changes to a `TrainConfig` for runs below `up_to` (tokens in `PLANS`, epochs in
    `EPOCH_PLANS`), and why. A key names a field of the config (`batch_size`) or of one of its
    sections (`optim.decay_frac`, `model.dropout`)."""

    up_to: float
    changes: Mapping[str, Any]
    why: str

    def apply(self, cfg: TrainConfig) -> TrainConfig:
        for key, value in self.changes.items():
            section, _, name = key.rpartition(".")
            if section:
                cfg = replace(cfg, **{section: replace(getattr(cfg, section), **{name: value})})
            else:
                cfg = replace(cfg, **{name: value})
        return cfg


# From `bench/bench_recipe.py --tokens N --recipes recipe,recipe-batch8` at 0.5M-4M tokens
# (bench/README.md, "Budgets and CPUs"; bits per byte on the 500 bundled validation stories):
# batch 16 / batch 8 scored 1.413 / 1.337 at 0.5M tokens, 1.236 / 1.174 at 1M, 1.065 / 1.049
# at 2M. Batch 8 trains 12% fewer tokens a second at the demo shape, so the threshold is on
# the tokens batch 16 would buy: below ~1.8M of them batch 8's extra steps win at equal time.
PLANS = (
    Plan(1.8e6, {"batch_size": 8}, "batch 8: below ~1.8M tokens its twice as many steps score best "
                                   "(bench/README.md)"),
    Plan(float("inf"), {}, "the recipe's batch 16: from ~1.8M tokens on it scores best (bench/README.md)"),
)


def plan_for(tokens: float) -> Plan:
    """The settings that scored best for a run of about `tokens` training tokens."""
    return next(plan for plan in PLANS if tokens < plan.up_to)


# From `bench/bench_recipe.py --holdout 300` (bench/README.md, "Training on repeated data"):
# bits per byte on 300 stories held out of the bundled sample, which a run never reads, at the
# tokens each setting trains in the same time. A run that reads the sample many times learns it
# by heart: the recipe holds to ~7 epochs (1.104 at 5.7, 1.102 at 7.1) and is worse at 9.4 even
# by its best checkpoint (1.149). Dropout on the residual stream (none on the attention pattern,
# so it costs ~10% of the tokens a second, not ~40%) learns more slowly but keeps the held-out
# score falling: 0.1 scores 1.078 at 9.4 of the recipe's epochs (0.2: 1.101), and 0.2 scores
# 1.061 at 16.6 (0.1: 1.074). The epochs here are the recipe's: the fit measures its throughput.
EPOCH_PLANS = (
    Plan(8.0, {}, "no dropout: under ~8 epochs of the corpus the recipe scores best (bench/README.md)"),
    Plan(14.0, {"model.dropout": 0.1}, "dropout 0.1: from ~8 epochs of the corpus the recipe learns the stories "
                                       "by heart, and dropout scores best on unseen ones (bench/README.md)"),
    Plan(float("inf"), {"model.dropout": 0.2}, "dropout 0.2: from ~14 epochs of the corpus it scores better on "
                                               "unseen stories than 0.1 (bench/README.md)"),
)


def epoch_plan_for(epochs: float) -> Plan:
    """The settings that scored best on held-out stories for a run that reads its corpus about
    `epochs` times (the tokens the budget buys over the corpus's tokens)."""
    return next(plan for plan in EPOCH_PLANS if epochs < plan.up_to)


def epoch_advice(cfg: TrainConfig, data_tokens: int, world: int = 1) -> str | None:
    """For `tinystories train`, which applies no plan: a note when a run of `cfg.max_steps` steps
    reads its `data_tokens` enough times that the plan for those epochs would change `cfg`, with
    the `--set` flags that apply it. None for a time budget (its epochs are not known yet)."""
    if cfg.max_minutes:
        return None
    epochs = cfg.max_steps * cfg.tokens_per_step * world / max(data_tokens, 1)
    plan = epoch_plan_for(epochs)
    unmet = {key: value for key, value in plan.changes.items() if field(cfg, key) != value}
    if not unmet:
        return None
    flags = " ".join(f"--set {key}={value}" for key, value in unmet.items())
    return f"note: this run reads its training tokens {epochs:.1f} times; {plan.why}: {flags}"


def field(cfg: TrainConfig, key: str) -> Any:
    """The value of a `Plan` key (`batch_size`, `model.dropout`) in `cfg`."""
    section, _, name = key.rpartition(".")
    return getattr(getattr(cfg, section) if section else cfg, name)


def measure_throughput(cfg: TrainConfig, steps: int = 6) -> float:
    """Training tokens per second of `cfg` on this machine: the median of `steps` real steps after
    two warm-ups, in a scratch folder (the model and optimizer are thrown away; the run starts
    afresh). Pass `cfg.threads` resolved (`utils.choose_threads`): the run must use the same."""
    with tempfile.TemporaryDirectory(prefix="tinystories-probe-") as scratch:
        trainer = Trainer(replace(cfg, out_dir=scratch, log_to=[], eval_samples=0), resume=False)
        for _ in range(2):  # the first steps pay for allocations and kernel selection
            trainer.train_step()
        seconds = []
        for _ in range(steps):
            start = time.perf_counter()
            trainer.train_step()
            seconds.append(time.perf_counter() - start)
        return cfg.tokens_per_step / statistics.median(seconds)


def plans_for(tokens: float, corpus_tokens: float) -> list[Plan]:
    """What `tinystories demo`'s fit applies: the plan for the tokens the budget buys, then the
    one for the epochs they make of a corpus of `corpus_tokens` training tokens."""
    return [plan_for(tokens), epoch_plan_for(tokens / max(corpus_tokens, 1.0))]
