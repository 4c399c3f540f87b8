"""Fit a time-budgeted run to the machine it runs on.

A budget of minutes buys a number of tokens that depends on the CPU: on 2 cores the demo
shape trains at about 7,000 tokens/s on an AVX2 EPYC and 12,000-15,000 on an AVX-512 Xeon
(bench/README.md), so 3 minutes are 1.2M tokens on one and 2.5M on the other. The best
settings differ with the tokens: fewer tokens want more, smaller steps. `measure_throughput`
times a few real steps; `plan_for` picks the settings that scored best in the recipe
benchmark at that many tokens.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from tinystories.train.config import TrainConfig
from tinystories.train.trainer import Trainer


@dataclass(frozen=True)
class Plan:
    """Changes to a `TrainConfig`'s fields for runs that buy fewer than `up_to_tokens` tokens, and why."""

    up_to_tokens: float
    changes: Mapping[str, Any]
    why: str

    def apply(self, cfg: TrainConfig) -> TrainConfig:
        return replace(cfg, **self.changes)


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
    return next(plan for plan in PLANS if tokens < plan.up_to_tokens)


def measure_throughput(cfg: TrainConfig, steps: int = 4) -> float:
    """Training tokens per second of `cfg` on this machine: `steps` real steps after one warm-up,
    in a scratch folder (the model and optimizer are thrown away; the run starts afresh)."""
    with tempfile.TemporaryDirectory(prefix="tinystories-probe-") as scratch:
        trainer = Trainer(replace(cfg, out_dir=scratch, log_to=[], eval_samples=0), resume=False)
        trainer.train_step()  # first steps pay for allocations and kernel selection
        start = time.perf_counter()
        for _ in range(steps):
            trainer.train_step()
        return steps * cfg.tokens_per_step / (time.perf_counter() - start)
