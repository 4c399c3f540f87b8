"""Training logs a person can read: JSONL and CSV rows, loss curves as a PNG, sampled stories;
and, if asked, the trackers nanoGPT and HF Trainer users expect (TensorBoard, Weights & Biases).

Both trackers are optional extras (``pip install 'tinystories[tracking]'``); W&B runs fully
offline with ``WANDB_MODE=offline`` (sync later with ``wandb sync``).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tinystories.errors import TinyStoriesError
from tinystories.utils import atomic_write, naming

COLUMNS = ["step", "tokens", "kind", "loss", "lr", "tokens_per_s", "val_loss", "val_bpb"]


class Trackers:
    """The experiment trackers a run writes to (none, TensorBoard, W&B), one interface."""

    def __init__(self, names: Sequence[str], out_dir: Path, config: dict[str, Any], project: str) -> None:
        self.tb: Any = None
        self.wandb: Any = None
        if names:
            out_dir.mkdir(parents=True, exist_ok=True)
        if "tensorboard" in names:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:
                raise TinyStoriesError("--log tensorboard needs the tensorboard package: "
                                       "pip install 'tinystories[tracking]' (or pip install tensorboard)") from exc
            self.tb = SummaryWriter(log_dir=str(out_dir / "tensorboard"))
        if "wandb" in names:
            try:
                import wandb
            except ImportError as exc:
                raise TinyStoriesError("--log wandb needs the wandb package: pip install 'tinystories[tracking]' "
                                       "(or pip install wandb); WANDB_MODE=offline works without a network") from exc
            self.wandb = wandb.init(project=project, dir=str(out_dir), config=config, name=out_dir.name,
                                    id=_wandb_id(out_dir), resume="allow", reinit="finish_previous")

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self.tb is not None:
            for key, value in values.items():
                self.tb.add_scalar(key, value, step)
        if self.wandb is not None:
            self.wandb.log(values, step=step)

    def stories(self, step: int, stories: list[str]) -> None:
        if self.tb is not None:
            self.tb.add_text("samples", "\n\n---\n\n".join(stories), step)
        if self.wandb is not None:
            import wandb

            self.wandb.log({"samples": wandb.Table(columns=["story"], data=[[s] for s in stories])}, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def _wandb_id(out_dir: Path) -> str:
    """One W&B run per run folder, kept across resumes."""
    path = out_dir / "wandb_run_id"
    if not path.exists():
        import secrets

        with atomic_write(path) as f:
            f.write(secrets.token_hex(8))
    return path.read_text().strip()


def _rows_until(path: Path, step: int) -> list[dict[str, Any]]:
    """The JSONL rows of `path` up to `step` (none when starting afresh); lines torn by a crash are skipped."""
    rows = []
    if step > 0 and path.exists():
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
                rows.append(row)
    return rows


class MetricsLog:
    """Appends to OUT/metrics.jsonl and OUT/metrics.csv (and OUT/samples.jsonl); `plot()` draws
    OUT/loss.png; every row also goes to the trackers.

    On resume, rows after the checkpoint's step are dropped, so the logs read as one run.
    """

    def __init__(self, out_dir: Path, enabled: bool = True, keep_until: int = 0,
                 trackers: Trackers | None = None) -> None:
        self.enabled = enabled
        self.trackers = trackers
        self.jsonl, self.csv, self.png = (out_dir / n for n in ("metrics.jsonl", "metrics.csv", "loss.png"))
        self.samples = out_dir / "samples.jsonl"
        self.rows: list[dict[str, Any]] = []
        if not enabled:
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        self.rows = _rows_until(self.jsonl, keep_until)
        if self.samples.exists():  # (stories sampled after the checkpoint go too)
            samples = _rows_until(self.samples, keep_until)
            with atomic_write(self.samples, encoding="utf-8") as f:
                f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in samples)
        self._rewrite()

    def _rewrite(self) -> None:
        with atomic_write(self.jsonl) as f:
            f.writelines(json.dumps(r) + "\n" for r in self.rows)
        with atomic_write(self.csv, newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(self.rows)

    def _append(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.rows.append(row)
        with naming(self.jsonl), self.jsonl.open("a") as f:
            f.write(json.dumps(row) + "\n")
        with naming(self.csv), self.csv.open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=COLUMNS).writerow(row)
        if self.trackers is not None:
            values = {f"{row['kind']}/{k}": v for k, v in row.items() if k not in ("step", "kind")}
            self.trackers.scalars(row["step"], values)

    def train(self, step: int, tokens: int, loss: float, lr: float, tokens_per_s: float) -> None:
        self._append({"step": step, "tokens": tokens, "kind": "train", "loss": round(loss, 5),
                      "lr": lr, "tokens_per_s": round(tokens_per_s, 1)})

    def eval(self, step: int, tokens: int, val_loss: float, val_bpb: float) -> None:
        self._append({"step": step, "tokens": tokens, "kind": "eval",
                      "val_loss": round(val_loss, 5), "val_bpb": round(val_bpb, 5)})

    def stories(self, step: int, stories: list[str]) -> None:
        """Stories sampled at an evaluation: the quickest way to see a story model learn."""
        if not self.enabled or not stories:
            return
        with naming(self.samples), self.samples.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, "stories": stories}, ensure_ascii=False) + "\n")
        if self.trackers is not None:
            self.trackers.stories(step, stories)

    def best(self, step: int, tokens: int, val_loss: float, val_bpb: float) -> None:
        """The validation of the model the run keeps (its step and scores), as the last row, of kind
        "best", in place of any earlier one (a finished run trained further chooses again). Not sent to
        the trackers: it belongs to an earlier step, and W&B's steps only go forward."""
        if not self.enabled:
            return
        self.rows = [r for r in self.rows if r["kind"] != "best"]
        self.rows.append({"step": step, "tokens": tokens, "kind": "best",
                          "val_loss": round(val_loss, 5), "val_bpb": round(val_bpb, 5)})
        self._rewrite()

    def plot(self) -> None:
        if not self.enabled or not self.rows:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        train = [r for r in self.rows if r["kind"] == "train"]
        evals = [r for r in self.rows if r["kind"] == "eval"]
        best = [r for r in self.rows if r["kind"] == "best"][-1:]
        fig, ax = plt.subplots(1, 2 if evals else 1, figsize=(11 if evals else 6, 4), squeeze=False)
        ax[0, 0].plot([r["step"] for r in train], [r["loss"] for r in train], lw=1, label="train")
        if evals:
            ax[0, 0].plot([r["step"] for r in evals], [r["val_loss"] for r in evals], "o-", label="validation")
            ax[0, 1].plot([r["step"] for r in evals], [r["val_bpb"] for r in evals], "o-", color="C1")
            if best:
                ax[0, 1].plot([best[0]["step"]], [best[0]["val_bpb"]], "*", ms=14, color="C3",
                              label=f"kept: step {best[0]['step']}")
                ax[0, 1].legend()
            ax[0, 1].set(xlabel="step", ylabel="bits per byte", title="validation bits per byte")
            ax[0, 1].grid(alpha=0.3)
        ax[0, 0].set(xlabel="step", ylabel="loss (nats/token)", title="loss")
        ax[0, 0].grid(alpha=0.3)
        ax[0, 0].legend()
        fig.tight_layout()
        with naming(self.png):
            fig.savefig(self.png, dpi=110)
        plt.close(fig)
