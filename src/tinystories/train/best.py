"""Which model a run keeps: the best by a validation metric, and when to stop looking.

The bookkeeping of Hugging Face Trainer's ``load_best_model_at_end`` (its trainer_state.json's
``best_metric`` and ``best_global_step``) and of its ``EarlyStoppingCallback`` (the patience
counter), in one small record that is saved with every resumable state, so a resumed run
picks the same best model and stops at the same step as an uninterrupted one.

Both metrics a run validates on (``val_loss``, ``val_bpb``) are lower-is-better, so there is
no ``greater_is_better``. Any strict improvement makes a new best; only an improvement of more
than the threshold resets the patience counter (as HF's callback does).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class BestModel:
    metric: float | None = None  # the best value of the metric so far (HF: best_metric)
    step: int | None = None  # the step it was validated at (HF: best_global_step)
    metrics: dict[str, float] = field(default_factory=dict)  # every metric of that validation
    patience_counter: int = 0  # validations in a row without an improvement beyond the threshold

    def update(self, metrics: dict[str, float], step: int, name: str, threshold: float) -> bool:
        """Take one validation's `metrics` at `step`; True when they make a new best."""
        value = metrics[name]
        improved = self.metric is None or value < self.metric
        if self.metric is None or self.metric - value > threshold:
            self.patience_counter = 0
        else:
            self.patience_counter += 1
        if improved:
            self.metric, self.step, self.metrics = value, step, dict(metrics)
        return improved

    def exhausted(self, patience: int) -> bool:
        """Early stopping's verdict: `patience` validations in a row without improvement (0 = never)."""
        return patience > 0 and self.patience_counter >= patience

    def state(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict[str, Any] | None) -> BestModel:
        """The saved record (none in a state written before runs kept their best model)."""
        return cls(**state) if state else cls()
