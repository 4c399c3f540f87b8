"""Sparse autoencoders (SAEs) on a hook point, trained and scored by SAELens, fed from our corpus.

SAELens does the SAE work: its `TopKTrainingSAE` (the architecture), its `SAETrainer` (Adam,
learning-rate schedule, AuxK loss that revives dead features, checkpoints with trainer
state, its progress bar), its `mixing_buffer` (shuffles activations across windows), its
`save_inference_model` (the folder format `SAE.load_from_disk` reads) and its evaluation code
(`get_downstream_reconstruction_metrics`, the CE-loss score, on the TransformerLens twin of our
model; `ExplainedVarianceCalculator`).

The glue written here, and why:

* `ActivationSource`: SAELens's `ActivationsStore` reads token sequences from a Hugging Face
  dataset and runs a HookedTransformer. Our stories come from our corpus readers (bundled,
  generated, HF, files; repaired and deduplicated), so we tokenize them with the model's own
  tokenizer, cut the token stream into windows, and record the hook point through our model's
  own forward pass (`hooks.run_with_cache`), which the TransformerLens twin matches to 1e-4.
  Positions holding ``<|endoftext|>`` (a story's start, an attention sink with a huge norm) are
  left out, as SAELens's evaluation leaves special tokens out.
* `TokenBatches`: the one method SAELens's evaluation asks of an `ActivationsStore`
  (``get_batch_tokens``), serving held-out windows of our corpus.
* Resume: SAELens's checkpoints hold the SAE and the trainer state; `latest.json` (written
  atomically once a checkpoint is complete) names the last one and how many windows of the
  corpus had been read. A resumed run continues from those windows; activations that were
  waiting in the shuffle buffer at the checkpoint are skipped, not replayed.

Output folder: SAELens's ``cfg.json`` + ``sae_weights.safetensors`` (its `SAEMetadata` names
the TransformerLens hook, our hook, the model and the context), ``sae_config.json`` (our
settings), ``sae_report.json`` (the quality figures) and ``checkpoints/``.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tinystories.config import read_structured
from tinystories.data.corpus import read_stories
from tinystories.errors import TinyStoriesError
from tinystories.interpret.config import SAEConfig
from tinystories.interpret.hooks import run_with_cache, stream_hook
from tinystories.interpret.transformer_lens import INSTALL, tl_hook_name, to_transformer_lens
from tinystories.model.checkpoint import LoadedModel
from tinystories.model.gpt import GPT
from tinystories.tokenizer import Tokenizer
from tinystories.utils import write_json

CONFIG_NAME = "sae_config.json"
REPORT_NAME = "sae_report.json"
LATEST = "latest.json"
# Settings that may change between a run and its resumption (they change no number).
RESUMABLE = {"device", "threads", "out", "model"}


def import_sae_lens() -> Any:
    try:
        import sae_lens
    except ImportError as exc:
        raise TinyStoriesError(f"SAELens is not installed: {INSTALL}") from exc
    return sae_lens


def corpus_tokens(corpus: str, tokenizer: Tokenizer, errors: Any = "strict") -> np.ndarray:
    """Every story of `corpus` as the model reads it (EOS first), concatenated."""
    stories, _ = read_stories(corpus, errors=errors)
    ids = [t for story in tokenizer.encode_stories(stories) for t in story]
    return np.asarray(ids, dtype=np.int64)


def window_count(tokens: np.ndarray, length: int) -> int:
    n = len(tokens) // length
    if n == 0:
        raise TinyStoriesError(f"the corpus holds {len(tokens)} tokens, fewer than one window of {length}")
    return n


def window_order(n_windows: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n_windows)


def hook_activations(model: GPT, hook: str, idx: torch.Tensor, eos_id: int) -> torch.Tensor:
    """The activations [N, d] at `hook` of every position of `idx` [B, T] that is not EOS."""
    _, cache = run_with_cache(model, idx, names=[hook])
    acts = cache.store[hook].float()
    return acts[idx != eos_id]


class ActivationSource:
    """Activations at one hook point over the corpus, window after shuffled window, endlessly
    (each epoch in a new order); `windows_read` counts windows run so far, to resume from."""

    def __init__(self, model: GPT, hook: str, tokens: np.ndarray, length: int, windows_per_batch: int,
                 seed: int, eos_id: int, start: int = 0) -> None:
        self.model, self.hook, self.tokens, self.length = model, hook, tokens, length
        self.per_batch, self.seed, self.eos_id = windows_per_batch, seed, eos_id
        self.n_windows = window_count(tokens, length)
        self.windows_read = start

    def __iter__(self) -> Iterator[torch.Tensor]:
        device = next(self.model.parameters()).device
        while True:
            epoch, at = divmod(self.windows_read, self.n_windows)
            order = window_order(self.n_windows, self.seed, epoch)[at:at + self.per_batch]
            rows = np.stack([self.tokens[w * self.length:(w + 1) * self.length] for w in order])
            self.windows_read += len(order)
            with torch.no_grad():
                acts = hook_activations(self.model, self.hook, torch.from_numpy(rows).to(device), self.eos_id)
            # (yielded outside `no_grad`: a generator suspended inside it would leave gradients off for
            # whoever runs next, and restore a stale mode whenever it is garbage-collected)
            yield acts


class TokenBatches:
    """Held-out windows [B, T] in corpus order, served as SAELens's evaluation asks (`get_batch_tokens`)."""

    def __init__(self, tokens: np.ndarray, length: int, n_windows: int, device: torch.device) -> None:
        n = min(n_windows, window_count(tokens, length))
        self.windows = torch.from_numpy(tokens[:n * length].reshape(n, length)).to(device)
        self.at = 0

    def get_batch_tokens(self, batch_size: int) -> torch.Tensor:
        batch = self.windows[self.at:self.at + batch_size]
        self.at += batch_size
        return batch

    def batches(self, batch_size: int) -> int:
        return math.ceil(len(self.windows) / batch_size)


def default_out(model_name: str, hook: str) -> Path:
    return Path(f"reports/sae-{model_name}-{hook}")


def _check_resumable(out: Path, cfg: SAEConfig, hook: str) -> None:
    saved = read_structured(out / CONFIG_NAME, "SAE settings")
    now = {**asdict(cfg), "hook": hook}
    changed = sorted(k for k in now if k not in RESUMABLE and saved.get(k) != now[k])
    if changed:
        raise TinyStoriesError(f"{out} holds an SAE trained with other settings ({', '.join(changed)}); "
                               "use another --out, or --fresh to start over there")


def train_sae(loaded: LoadedModel, cfg: SAEConfig, out: Path, device: torch.device,
              resume: bool = True) -> dict[str, Any]:
    """Train a TopK SAE on `cfg.hook` over `cfg.corpus`, save it into `out` in SAELens's format,
    measure it on `cfg.eval_corpus`; returns (and writes) the report."""
    sae_lens = import_sae_lens()
    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.mixing_buffer import mixing_buffer
    from sae_lens.training.sae_trainer import SAETrainer

    model, tok = loaded.model.eval(), loaded.tokenizer
    try:
        hook = stream_hook(cfg.hook or f"blocks.{model.cfg.n_layer // 2}.resid_post", model.cfg.n_layer)
    except ValueError as exc:
        raise TinyStoriesError(str(exc)) from None
    if hook == "hook_final":  # no TransformerLens twin: SAELens could neither splice nor score it
        raise TinyStoriesError("an SAE on hook_final is not supported (TransformerLens has no twin of it); "
                               f"use blocks.{model.cfg.n_layer - 1}.resid_post, the stream just before the final norm")
    d_in = hook_width(model, hook)
    length = min(cfg.context, model.cfg.context_length)
    tokens = corpus_tokens(cfg.corpus, tok, cfg.encoding_errors)
    eval_tokens = corpus_tokens(cfg.eval_corpus, tok, cfg.encoding_errors)
    window_count(tokens, length)  # fail before any work if the corpus is too small

    checkpoints = out / "checkpoints"
    latest = read_structured(checkpoints / LATEST, "SAE checkpoint") if resume and (checkpoints / LATEST).exists() \
        else None
    if latest is not None:
        _check_resumable(out, cfg, hook)
    elif checkpoints.exists():
        shutil.rmtree(checkpoints)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / CONFIG_NAME, {**asdict(cfg), "hook": hook})

    torch.manual_seed(cfg.seed)
    steps = max(1, cfg.tokens // cfg.batch_size)
    sae_cfg = TopKTrainingSAEConfig(d_in=d_in, d_sae=cfg.expansion * d_in, k=min(cfg.k, cfg.expansion * d_in),
                                    device=str(device), dtype="float32")
    meta = sae_cfg.metadata
    meta.model_name, meta.hook_name = loaded.name, tl_hook_name(hook)
    meta.context_size, meta.prepend_bos = length, True
    meta.tinystories_hook, meta.tinystories_model = hook, str(loaded.path)
    meta.tinystories_exclude_tokens = [tok.eos_id]
    sae = TopKTrainingSAE(sae_cfg)
    # SAELens's windows are in steps and sized for runs of millions of steps' worth of tokens; scaled
    # to the run here, so AuxK revives dead features (and sparsity is logged) within short CPU runs.
    trainer_cfg = SAETrainerConfig(
        total_training_samples=steps * cfg.batch_size, train_batch_size_samples=cfg.batch_size, lr=cfg.lr,
        lr_end=cfg.lr / 10, lr_decay_steps=steps // 5, device=str(device), checkpoint_path=str(checkpoints),
        n_checkpoints=cfg.checkpoints, dead_feature_window=max(1, min(1000, steps // 10)),
        feature_sampling_window=max(1, min(2000, steps // 4)))
    per_batch = max(1, cfg.batch_size // length)
    source = ActivationSource(model, hook, tokens, length, per_batch, cfg.seed, tok.eos_id,
                              start=int(latest["windows"]) if latest else 0)

    def on_checkpoint(checkpoint_path: Path | None) -> None:
        if checkpoint_path is None:
            return
        write_json(checkpoints / LATEST, {"checkpoint": checkpoint_path.name, "windows": source.windows_read,
                                          "training_samples": trainer.n_training_samples})
        for old in checkpoints.iterdir():  # only the newest complete checkpoint is kept
            if old.is_dir() and old.name != checkpoint_path.name:
                shutil.rmtree(old)

    data = mixing_buffer(max(cfg.buffer, cfg.batch_size), cfg.batch_size, iter(source))
    trainer = SAETrainer(trainer_cfg, sae, data, save_checkpoint_fn=on_checkpoint)
    if latest is not None:
        path = checkpoints / str(latest["checkpoint"])
        trainer.load_trainer_state(path)
        sae.load_weights_from_checkpoint(path)
        trainer.checkpoint_thresholds = [t for t in trainer.checkpoint_thresholds if t >= trainer.n_training_samples]
    start = time.perf_counter()
    trainer.fit()
    seconds = time.perf_counter() - start
    _save_inference(sae, out)
    inference = sae_lens.SAE.load_from_disk(str(out), device=str(device))  # what users will load
    report = evaluate_sae(inference, loaded, hook, eval_tokens, length, cfg)
    report.update(hook=hook, tl_hook=tl_hook_name(hook), d_in=d_in, d_sae=sae_cfg.d_sae, k=sae_cfg.k,
                  training_tokens=trainer.n_training_samples, training_steps=trainer.n_training_steps,
                  train_seconds=round(seconds, 1), resumed_at_tokens=latest["training_samples"] if latest else 0,
                  corpus=cfg.corpus, eval_corpus=cfg.eval_corpus, sae_lens_version=sae_lens.__version__)
    write_json(out / REPORT_NAME, report)
    return report


def hook_width(model: GPT, hook: str) -> int:
    """Width of the vectors at a stream hook point (`hooks.stream_hook`): the MLP's for its neurons."""
    return model.cfg.ffn_dim if hook.endswith("mlp.hook_post") else model.cfg.d_model


def _save_inference(sae: Any, out: Path) -> None:
    """SAELens's inference folder, written beside and renamed into `out` (a crash leaves the old SAE)."""
    tmp = out / ".saving"
    if tmp.exists():
        shutil.rmtree(tmp)
    sae.save_inference_model(str(tmp))
    for f in tmp.iterdir():
        os.replace(f, out / f.name)
    tmp.rmdir()


@torch.no_grad()
def feature_stats(sae: Any, model: GPT, hook: str, batches: TokenBatches, eos_id: int, batch_size: int
                  ) -> tuple[float, float, torch.Tensor, int]:
    """(fraction of variance explained, mean L0, per-feature firing frequency, tokens) over `batches`."""
    from sae_lens.evals import ExplainedVarianceCalculator

    fve = ExplainedVarianceCalculator()
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.float64)
    n = 0
    l0 = 0.0
    for i in range(batches.batches(batch_size)):
        idx = batches.windows[i * batch_size:(i + 1) * batch_size]
        x = hook_activations(model, hook, idx, eos_id).to(sae.device)
        feats = sae.encode(x)
        fve.add_batch(sae.decode(feats), x)
        active = feats != 0
        fired += active.sum(0).double().cpu()
        l0 += float(active.sum())
        n += x.shape[0]
    return fve.compute(), l0 / max(n, 1), (fired / max(n, 1)).float(), n


def evaluate_sae(sae: Any, loaded: LoadedModel, hook: str, tokens: np.ndarray, length: int,
                 cfg: SAEConfig) -> dict[str, Any]:
    """The standard quality figures of `sae` on held-out `tokens` (EOS positions left out, as SAELens does):
    L0, fraction of variance explained, dead (never active) and dense (active on > cfg.dense of tokens)
    features, and SAELens's CE-loss score: (loss zero-ablated - loss with the SAE) / (loss zero-ablated -
    clean loss), computed by SAELens on the TransformerLens twin of the model."""
    from sae_lens.evals import get_downstream_reconstruction_metrics
    from sae_lens.training.activation_scaler import ActivationScaler

    model, eos = loaded.model, loaded.tokenizer.eos_id
    device = next(model.parameters()).device
    batches = TokenBatches(tokens, length, math.ceil(cfg.eval_tokens / length), device)
    per_batch = max(1, 4096 // length)
    fve, l0, freq, n = feature_stats(sae, model, hook, batches, eos, per_batch)
    tl_model = to_transformer_lens(loaded)
    sae_tl = sae.to(device)
    rec = get_downstream_reconstruction_metrics(
        sae_tl, tl_model, batches, ActivationScaler(), compute_kl=True, compute_ce_loss=True,
        n_batches=batches.batches(per_batch), eval_batch_size_prompts=per_batch, ignore_tokens=[eos])
    dead = int((freq == 0).sum())
    dense = int((freq > cfg.dense).sum())
    return {"l0": round(l0, 3), "explained_variance": round(fve, 4),
            "dead_features": dead, "dead_fraction": round(dead / freq.numel(), 4),
            "dense_features": dense, "dense_threshold": cfg.dense,
            "ce_loss_score": round(rec["ce_loss_score"], 4), "ce_loss_clean": round(rec["ce_loss_without_sae"], 6),
            "ce_loss_with_sae": round(rec["ce_loss_with_sae"], 6),
            "ce_loss_zero_ablated": round(rec["ce_loss_with_ablation"], 6),
            "kl_div_score": round(rec["kl_div_score"], 4), "eval_tokens": n, "eval_windows": len(batches.windows),
            "window": length}
