"""Training logs a person can read: JSONL and CSV rows, and loss curves as a PNG."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

COLUMNS = ["step", "tokens", "kind", "loss", "lr", "tokens_per_s", "val_loss", "val_bpb"]


class MetricsLog:
    """Appends to OUT/metrics.jsonl and OUT/metrics.csv; `plot()` draws OUT/loss.png.

    On resume, rows after the checkpoint's step are dropped, so the logs read as one run.
    """

    def __init__(self, out_dir: Path, enabled: bool = True, keep_until: int = 0) -> None:
        self.enabled = enabled
        self.jsonl, self.csv, self.png = (out_dir / n for n in ("metrics.jsonl", "metrics.csv", "loss.png"))
        self.rows: list[dict[str, Any]] = []
        if not enabled:
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        if self.jsonl.exists() and keep_until > 0:
            for line in self.jsonl.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line torn by a crash
                if row.get("step", 0) <= keep_until:
                    self.rows.append(row)
        self._rewrite()

    def _rewrite(self) -> None:
        self.jsonl.write_text("".join(json.dumps(r) + "\n" for r in self.rows))
        with self.csv.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(self.rows)

    def _append(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.rows.append(row)
        with self.jsonl.open("a") as f:
            f.write(json.dumps(row) + "\n")
        with self.csv.open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=COLUMNS).writerow(row)

    def train(self, step: int, tokens: int, loss: float, lr: float, tokens_per_s: float) -> None:
        self._append({"step": step, "tokens": tokens, "kind": "train", "loss": round(loss, 5),
                      "lr": lr, "tokens_per_s": round(tokens_per_s, 1)})

    def eval(self, step: int, tokens: int, val_loss: float, val_bpb: float) -> None:
        self._append({"step": step, "tokens": tokens, "kind": "eval",
                      "val_loss": round(val_loss, 5), "val_bpb": round(val_bpb, 5)})

    def plot(self) -> None:
        if not self.enabled or not self.rows:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        train = [r for r in self.rows if r["kind"] == "train"]
        evals = [r for r in self.rows if r["kind"] == "eval"]
        fig, ax = plt.subplots(1, 2 if evals else 1, figsize=(11 if evals else 6, 4), squeeze=False)
        ax[0, 0].plot([r["step"] for r in train], [r["loss"] for r in train], lw=1, label="train")
        if evals:
            ax[0, 0].plot([r["step"] for r in evals], [r["val_loss"] for r in evals], "o-", label="validation")
            ax[0, 1].plot([r["step"] for r in evals], [r["val_bpb"] for r in evals], "o-", color="C1")
            ax[0, 1].set(xlabel="step", ylabel="bits per byte", title="validation bits per byte")
            ax[0, 1].grid(alpha=0.3)
        ax[0, 0].set(xlabel="step", ylabel="loss (nats/token)", title="loss")
        ax[0, 0].grid(alpha=0.3)
        ax[0, 0].legend()
        fig.tight_layout()
        fig.savefig(self.png, dpi=110)
        plt.close(fig)
