"""The training loop: plain PyTorch, no framework, readable top to bottom.

One process (CPU, one GPU) or many (``torchrun --nproc_per_node N -m tinystories.cli train ...``,
DDP). Every `checkpoint_interval` steps it writes ``OUT/checkpoint/``: a loadable model
folder plus the optimizer, the data samplers' and the RNGs' states, so a resumed run
continues with exactly the losses an uninterrupted one would have had.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from tinystories.config import read_structured
from tinystories.data.pretokenize import TokenFileInfo, load_tokens
from tinystories.errors import TinyStoriesError
from tinystories.model.checkpoint import (
    CHECKPOINT_DIR,
    load_model,
    load_tensors,
    model_state,
    save_model,
    save_tensors,
)
from tinystories.model.gpt import GPT
from tinystories.model.losses import bits_per_byte
from tinystories.tokenizer import Tokenizer
from tinystories.train.batches import TokenBatches
from tinystories.train.config import TrainConfig, dump_config
from tinystories.train.metrics import MetricsLog, Trackers
from tinystories.train.optim import (
    load_optimizers,
    lr_factor,
    make_optimizers,
    muon_ns_dtype,
    optimizer_tensors,
    set_lr,
)
from tinystories.train.precision import probe_cpu_dtype
from tinystories.utils import (
    atomic_write,
    pick_device,
    seed_everything,
    set_threads,
    usable_cores,
    write_json,
)

log = logging.getLogger(__name__)
OPTIMIZER_NAME = "optimizer.safetensors"
STATE_NAME = "trainer_state.json"


class TrainingLoss(torch.nn.Module):
    """`GPT.loss` as a module's forward, so DDP and torch.compile can wrap it (DDP syncs
    gradients only for computations that go through the wrapped module's forward)."""

    def __init__(self, model: GPT) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.model.loss(x, y)


def fixed_windows(tokens: np.ndarray, context: int, count: int) -> np.ndarray:
    """`count` evenly spaced windows covering the validation tokens: the same at every eval."""
    last = len(tokens) - context - 1
    if last < 0:
        raise TinyStoriesError(f"validation set has {len(tokens)} tokens, fewer than one window of {context + 1}")
    starts = np.linspace(0, last, num=max(1, min(count, last + 1))).astype(np.int64)
    return np.stack([tokens[s:s + context + 1] for s in starts]).astype(np.int64)


@dataclass
class Distributed:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def setup(cls, device: str) -> tuple[Distributed, torch.device]:
        if "RANK" not in os.environ:
            return cls(), pick_device(device)
        rank, world, local = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
        use_cuda = torch.cuda.is_available() and device in ("auto", "cuda")
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        if use_cuda:
            torch.cuda.set_device(local)
            return cls(rank, world, local), torch.device("cuda", local)
        return cls(rank, world, local), torch.device("cpu")

    def max(self, value: float, device: torch.device) -> float:
        """The largest `value` over all processes (the same answer on every one)."""
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return float(t.item())

    def gather(self, obj: Any) -> list[Any]:
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out


def checkpoint_dir(out_dir: Path) -> Path | None:
    """The newest complete checkpoint (`checkpoint/`, or `checkpoint.old/` if a swap was cut short)."""
    for name in (CHECKPOINT_DIR, CHECKPOINT_DIR + ".old"):
        folder = out_dir / name
        if (folder / STATE_NAME).exists():
            return folder
    return None


SampleFn = Callable[[GPT, Tokenizer, int], list[str]]  # (model, tokenizer, how many) -> stories


class Trainer:
    """Trains `cfg`'s model. `sample(model, tokenizer, n)`, if given, writes `cfg.eval_samples`
    stories at each evaluation for the log and the trackers (the CLI passes the project's
    sampler; the trainer itself knows nothing about generation)."""

    def __init__(self, cfg: TrainConfig, resume: bool = True, sample: SampleFn | None = None) -> None:
        self.cfg = cfg
        self.sample = sample
        self.dist, self.device = Distributed.setup(cfg.device)
        self.out = Path(cfg.out_dir)
        if self.device.type == "cpu":
            set_threads(cfg.threads or (max(1, usable_cores() // self.dist.world) if self.dist.world > 1 else 0))
        seed_everything(cfg.seed + self.dist.rank)
        data = Path(cfg.data_dir)
        if not cfg.data_dir or not data.is_dir():
            raise TinyStoriesError(f"data_dir {cfg.data_dir!r} is not a folder: run `tinystories pretokenize` "
                                   "first and pass its output folder")
        self.tokenizer = Tokenizer.from_file(data / "tokenizer.json")
        if self.tokenizer.vocab_size > cfg.model.vocab_size:
            raise TinyStoriesError(f"the tokenizer in {data} has {self.tokenizer.vocab_size} tokens but "
                                   f"model.vocab_size is {cfg.model.vocab_size}: set model.vocab_size="
                                   f"{self.tokenizer.vocab_size}")
        train_tokens, _ = load_tokens(data / "train.bin", self.tokenizer, cfg.model.vocab_size)
        self.batches = TokenBatches(train_tokens, cfg.model.context_length, cfg.batch_size,
                                    cfg.seed + 1000 * self.dist.rank, cfg.data_order, self.tokenizer.eos_id)
        self.valid: tuple[np.ndarray, TokenFileInfo] | None = None
        self.overlap = 0  # validation stories that are also training stories
        if (data / "valid.bin").exists():
            valid_tokens, valid_info = load_tokens(data / "valid.bin", self.tokenizer, cfg.model.vocab_size)
            self.valid = (fixed_windows(valid_tokens, cfg.model.context_length,
                                        cfg.eval_batches * cfg.batch_size), valid_info)
            if self.dist.main:
                self.overlap = shared_stories(train_tokens, valid_tokens, self.tokenizer.eos_id)

        self.model = GPT(cfg.model).to(self.device)
        self.optimizers = make_optimizers(self.model, cfg.optim)
        self.step = 0
        self.train_seconds = 0.0
        self.started_in: str | None = None  # the dtype `auto` chose when the run started (resume keeps it)
        if resume and (ckpt := checkpoint_dir(self.out)) is not None:
            self._restore(ckpt)

        self.dtype, self.dtype_why = self._autocast_dtype()
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)
        # What the loop calls: the training loss (the fused one on the CPU), compiled and/or DDP-wrapped.
        self.compiled: torch.nn.Module = TrainingLoss(self.model)
        if cfg.compile == "on" or (cfg.compile == "auto" and self.device.type == "cuda"):
            self.compiled = torch.compile(self.compiled)  # type: ignore[assignment]
        if self.dist.world > 1:
            self.compiled = DistributedDataParallel(
                self.compiled, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        trackers = Trackers(cfg.log_to, self.out, asdict(cfg), cfg.wandb_project) \
            if self.dist.main and cfg.log_to else None
        self.log = MetricsLog(self.out, enabled=self.dist.main, keep_until=self.step, trackers=trackers)
        self.data_tokens = len(train_tokens)

    def _autocast_dtype(self) -> tuple[torch.dtype, str]:
        """The configured dtype, and why. `auto`: bf16 on CUDA; on a CPU the one measured faster
        (`precision.probe_cpu_dtype`; rank 0's measure for every process), and on resume the one
        the run started with, so that a resumed run computes what an unbroken one would."""
        if self.cfg.dtype != "auto":
            return getattr(torch, self.cfg.dtype), "set by dtype"
        if self.device.type != "cpu":
            dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
            return dtype, f"auto on {self.device.type}"
        if self.started_in:
            return getattr(torch, self.started_in), "auto: the dtype this run started in"
        dtype, why = self.dist.gather(probe_cpu_dtype(self.model))[0]
        return dtype, f"auto, {why}"

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    # ---- checkpoints -------------------------------------------------------------------

    def _restore(self, folder: Path) -> None:
        loaded = load_model(folder, self.device)
        if loaded.config["model"] != asdict(self.cfg.model):
            raise TinyStoriesError(f"{folder} holds a model of another shape than this config asks for; "
                                   "use another out_dir, or resume with the saved config.yaml")
        if loaded.tokenizer.fingerprint != self.tokenizer.fingerprint:
            raise TinyStoriesError(f"{folder} was trained with another tokenizer than {self.cfg.data_dir}'s")
        self.model.load_state_dict(model_state(loaded.model), strict=False)
        state = read_structured(folder / STATE_NAME, "training state", fmt="json")
        tensors = load_tensors(folder / OPTIMIZER_NAME)
        try:
            load_optimizers(self.optimizers, tensors, state.get("optimizers") or [state["param_groups"]])
        except (ValueError, KeyError, IndexError) as exc:
            raise TinyStoriesError(f"{folder}'s optimizer state does not fit optim.optimizer="
                                   f"{self.cfg.optim.optimizer} ({exc}): resume with the saved config.yaml's "
                                   "optimizer, or start another out_dir") from None
        self.step = state["step"]
        self.train_seconds = state["train_seconds"]
        self.started_in = state.get("dtype") if self.cfg.dtype == "auto" else None
        rank = self.dist.rank
        if len(state["data_states"]) != self.dist.world:
            raise TinyStoriesError(f"{folder} was written by {len(state['data_states'])} process(es), this run "
                                   f"has {self.dist.world}: resume with the same number of processes")
        self.batches.load_state(state["data_states"][rank])
        torch.set_rng_state(tensors[f"rng.torch.{rank}"])
        if self.device.type == "cuda" and f"rng.cuda.{rank}" in tensors:
            torch.cuda.set_rng_state(tensors[f"rng.cuda.{rank}"])
        if self.dist.main:
            log.info("resuming from %s at step %d", folder, self.step)

    def save_checkpoint(self) -> Path:
        data_states = self.dist.gather(self.batches.state())
        rng = self.dist.gather(torch.get_rng_state())
        cuda_rng = self.dist.gather(torch.cuda.get_rng_state() if self.device.type == "cuda" else None)
        final = self.out / CHECKPOINT_DIR
        if not self.dist.main:
            return final
        self._check_finite()
        tmp = self.out / (CHECKPOINT_DIR + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            save_model(tmp, self.model, self.tokenizer, extra={"training": {
                "step": self.step, "tokens": self.step * self.cfg.tokens_per_step * self.dist.world}})
            tensors, groups = optimizer_tensors(self.optimizers)
            tensors.update({f"rng.torch.{r}": s for r, s in enumerate(rng)})
            tensors.update({f"rng.cuda.{r}": s for r, s in enumerate(cuda_rng) if s is not None})
            save_tensors(tensors, tmp / OPTIMIZER_NAME)
            with atomic_write(tmp / "config.yaml") as f:
                f.write(dump_config(self.cfg))
            write_json(tmp / STATE_NAME, {"step": self.step, "train_seconds": self.train_seconds,
                                          "dtype": str(self.dtype).removeprefix("torch."),
                                          "data_states": data_states, "optimizers": groups})
        except BaseException:  # a full disk, a kill: the old checkpoint stays; give back the space
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        # Swap in the new checkpoint; at every instant one complete checkpoint exists.
        old = self.out / (CHECKPOINT_DIR + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
        return final

    def _check_finite(self, loss: float = 0.0) -> None:
        """Stop before a diverged model is saved over the last good checkpoint: a NaN or an
        infinity in the loss or in the weights ends the run with one line, and the checkpoint on
        disk (the last one whose weights were finite) stays for a resume with a lower LR."""
        if math.isfinite(loss) and all(bool(torch.isfinite(p).all()) for p in self.model.parameters()):
            return
        ckpt = checkpoint_dir(self.out)
        kept = f"the last finite checkpoint ({ckpt}) is kept" if ckpt else "no checkpoint was written"
        what = f"the training loss is {loss}" if not math.isfinite(loss) else "the weights hold NaN or inf"
        raise TinyStoriesError(f"step {self.step}: {what}, so training stopped and nothing was saved; {kept}. "
                               "Lower optim.lr or raise optim.warmup_steps (or set optim.grad_clip) and run the "
                               "same command again to resume from it")

    # ---- evaluation --------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        if self.valid is None:
            return {}
        windows, info = self.valid
        self.model.eval()
        losses = []
        for i in range(0, len(windows), self.cfg.batch_size):
            xy = torch.from_numpy(windows[i:i + self.cfg.batch_size]).to(self.device)
            with self._autocast():
                _, loss = self.model(xy[:, :-1], xy[:, 1:])
            losses.append(float(loss) * len(xy))
        self.model.train()
        val_loss = sum(losses) / len(windows)
        return {"val_loss": val_loss, "val_bpb": bits_per_byte(val_loss, info.tokens_per_byte)}

    # ---- training ----------------------------------------------------------------------

    def progress(self) -> float:
        """How far through the run we are: by steps, or by time when a time budget is set."""
        frac = self.step / self.cfg.max_steps
        if self.cfg.max_minutes:
            frac = max(frac, self.train_seconds / (60 * self.cfg.max_minutes))
        return frac

    def _sync_context(self, last: bool) -> contextlib.AbstractContextManager[object]:
        """All-reduce gradients on the last micro-step only: DDP's `no_sync` on the others."""
        if last or self.dist.world == 1:
            return contextlib.nullcontext()
        assert isinstance(self.compiled, DistributedDataParallel)  # wrapped in __init__ when world > 1
        return self.compiled.no_sync()

    def train_step(self) -> float:
        cfg = self.cfg
        set_lr(self.optimizers, lr_factor(cfg.optim, self.progress(), self.step))
        total = 0.0
        for micro in range(cfg.grad_accum):
            x, y = self.batches.next(self.device)
            last = micro == cfg.grad_accum - 1
            with self._sync_context(last), self._autocast():
                loss = self.compiled(x, y)
                loss = loss / cfg.grad_accum
            self.scaler.scale(loss).backward()
            total += float(loss.detach())
        if cfg.optim.grad_clip:
            for opt in self.optimizers:
                self.scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.grad_clip)
        for opt in self.optimizers:
            self.scaler.step(opt)
        self.scaler.update()
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        return total

    def summary(self) -> list[str]:
        """What the run is about to do, in the terms users check first; and what looks wrong."""
        cfg, world = self.cfg, self.dist.world
        params, non_emb = self.model.num_params(), self.model.num_params(non_embedding=True)
        per_step = cfg.tokens_per_step * world
        budget = f"{cfg.max_minutes:g} minutes (the LR schedule follows the clock)" if cfg.max_minutes else \
            f"{cfg.max_steps:,} steps = {cfg.max_steps * per_step / 1e6:,.2f}M tokens " \
            f"({cfg.max_steps * per_step / max(self.data_tokens, 1):.1f} epochs of {self.data_tokens / 1e6:,.2f}M)"
        threads = f", {torch.get_num_threads()} threads" if self.device.type == "cpu" else ""
        processes = f", {world} processes" if world > 1 else ""
        lines = [(f"model: {cfg.model.arch}, {cfg.model.n_layer} layers x d_model {cfg.model.d_model}, "
                  f"{params / 1e6:.2f}M parameters ({non_emb / 1e6:.2f}M without embeddings)"),
                 (f"device: {self.device}{threads}, {str(self.dtype).removeprefix('torch.')} ({self.dtype_why})"
                  f"{processes}"),
                 (f"batch: {per_step:,} tokens per step ({cfg.batch_size} x {cfg.grad_accum} x "
                  f"{cfg.model.context_length}{f' x {world}' if world > 1 else ''}); optimizer "
                  f"{cfg.optim.optimizer}, {cfg.optim.schedule} schedule; budget {budget}")]
        if cfg.optim.optimizer == "muon":  # (the choice is cached: this does not time it again)
            lines.append(f"muon: Newton-Schulz in {muon_ns_dtype(cfg.optim, self.device)[1]}")
        warnings = []
        if not cfg.max_minutes and cfg.optim.warmup_steps >= cfg.max_steps:
            warnings.append(f"warning: warmup_steps ({cfg.optim.warmup_steps}) >= max_steps ({cfg.max_steps}): the "
                            "learning rate never finishes warming up; lower optim.warmup_steps")
        if self.overlap:
            warnings.append(f"warning: {self.overlap} validation stories also appear in the training data: the "
                            "validation loss will look better than it is; pretokenize disjoint corpora")
        return lines + warnings

    def fit(self, pause_at: int | None = None) -> dict[str, float]:
        """Train to the end of the schedule (or until step `pause_at`, e.g. a job's slot); returns the last eval."""
        cfg = self.cfg
        end = min(cfg.max_steps, pause_at or cfg.max_steps)
        if self.dist.main:
            self.out.mkdir(parents=True, exist_ok=True)
            with atomic_write(self.out / "config.yaml") as f:
                f.write(dump_config(cfg))
            for line in self.summary():
                (log.warning if line.startswith("warning") else log.info)(line)
        if self.step >= end or self.progress() >= 1.0:  # a finished run, rerun: nothing to add
            if self.dist.main:
                log.info(f"{self.out} already finished at step {self.step}")
            return self.log.last_eval(self.step) or self.evaluate()
        self.model.train()
        # The bar counts whichever limit ends the run: steps, or seconds of a time budget.
        by_time = cfg.max_minutes > 0
        bar = tqdm(total=round(60 * cfg.max_minutes) if by_time else cfg.max_steps,
                   initial=round(self.train_seconds) if by_time else self.step, unit="s" if by_time else "step",
                   desc="training", disable=not (cfg.progress and self.dist.main), dynamic_ncols=True)
        tokens_per_step = cfg.tokens_per_step * self.dist.world
        window_start, window_steps = time.perf_counter(), 0
        last_eval: dict[str, float] = {}
        while self.step < end and self.progress() < 1.0:
            t0 = time.perf_counter()
            loss = self.train_step()
            self.step += 1
            if not math.isfinite(loss):
                self._check_finite(loss)
            self.train_seconds += time.perf_counter() - t0
            if cfg.max_minutes:  # a time budget: all processes must agree on the LR and the last step
                self.train_seconds = self.dist.max(self.train_seconds, self.device)
            window_steps += 1
            bar.update(min(round(self.train_seconds), bar.total) - bar.n if by_time else 1)
            if self.step % cfg.log_interval == 0 or self.step == 1:
                elapsed = time.perf_counter() - window_start
                tok_s = window_steps * tokens_per_step / max(elapsed, 1e-9)
                self.log.train(self.step, self.step * tokens_per_step, loss,
                               self.optimizers[-1].param_groups[0]["lr"], tok_s)
                bar.set_postfix(step=self.step, loss=f"{loss:.3f}", tok_s=f"{tok_s:,.0f}", **_short(last_eval))
                window_start, window_steps = time.perf_counter(), 0
            if self.step % cfg.eval_interval == 0:
                last_eval = self._eval_and_log()
            if self.step % cfg.checkpoint_interval == 0:
                self.save_checkpoint()
        bar.close()
        if self.step % cfg.eval_interval != 0 or not last_eval:
            last_eval = self._eval_and_log()
        self.save_checkpoint()
        if not last_eval:  # no validation set: nothing has drawn the curves yet
            self.log.plot()
        if self.log.trackers is not None:
            self.log.trackers.close()
        if self.dist.world > 1:  # together: rank 0 may still be writing samples while the others are done
            dist.barrier()
            dist.destroy_process_group()
        return last_eval

    def _eval_and_log(self) -> dict[str, float]:
        result = self.evaluate()
        if result:
            self.log.eval(self.step, self.step * self.cfg.tokens_per_step * self.dist.world, **result)
            self.log.plot()
        if self.sample is not None and self.cfg.eval_samples and self.dist.main:
            self.model.eval()
            stories = self.sample(self.model, self.tokenizer, self.cfg.eval_samples)
            self.model.train()
            self.log.stories(self.step, stories)
            for story in stories:
                log.info(f"step {self.step} sample: {' '.join(story.split())[:300]}")
        return result


def shared_stories(train: np.ndarray, valid: np.ndarray, eos: int) -> int:
    """How many validation stories (token sequences between end-of-story tokens) are also training
    stories: a hash per story, one pass over each file."""
    def stories(tokens: np.ndarray) -> set[int]:
        tokens = np.asarray(tokens)
        cuts = np.flatnonzero(tokens == eos)
        return {hash(tokens[a + 1:b].tobytes()) for a, b in zip([-1, *cuts[:-1]], cuts) if b > a + 1}

    return len(stories(valid) & stories(train))


def _short(metrics: dict[str, float]) -> dict[str, str]:
    return {"val_bpb": f"{metrics['val_bpb']:.3f}"} if "val_bpb" in metrics else {}

