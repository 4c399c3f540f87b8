"""The training loop: plain PyTorch, no framework, readable top to bottom.

One process (CPU, one GPU) or many (``torchrun --nproc_per_node N -m tinystories.cli train ...``,
DDP). A run folder holds two models:

* ``OUT/last/``: the last state, written every `checkpoint_interval` steps and whenever a
  validation finds a new best model: a loadable model folder plus the optimizer, the data
  samplers' and the RNGs' states and the best-model bookkeeping, so a resumed run continues
  with exactly the losses, validations and choice of best model an uninterrupted one would
  have had.
* ``OUT/checkpoint/``: the model every other command loads: the one that scored best on the
  held-out rows (`load_best_model_at_end`, as in Hugging Face Trainer), or the last one. Its
  files are hard links to those of the ``last/`` it was taken from (no copy, and no file is
  ever changed in place, so later saves cannot alter it).

A small corpus is read many times over (epochs), and past some point more training makes the
model worse on stories it has not seen: validating at a cadence and keeping the best model
is what makes a longer run never worse than a shorter one. The held-out rows are valid.bin,
or whole stories drawn out of train.bin when there is none (`validation_split_percentage`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
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
    CONFIG_NAME,
    TOKENIZER_NAME,
    WEIGHTS_NAME,
    load_model,
    load_tensors,
    model_state,
    save_model,
    save_tensors,
)
from tinystories.model.gpt import GPT
from tinystories.model.losses import bits_per_byte
from tinystories.tokenizer import Tokenizer
from tinystories.train.batches import TokenBatches, hold_out_stories, split_stories
from tinystories.train.best import BestModel
from tinystories.train.config import TrainConfig, dump_config
from tinystories.train.metrics import MetricsLog, Trackers
from tinystories.train.muon import Muon
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
LAST_DIR = "last"  # the last state, for resuming; CHECKPOINT_DIR holds the model to use
PUBLISHED = (CONFIG_NAME, WEIGHTS_NAME, TOKENIZER_NAME, "config.yaml")  # what checkpoint/ takes from last/


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

    def sum(self, values: list[float], device: torch.device) -> list[float]:
        """`values` summed over all processes, rank 0's copy of the sums on every one (so a choice
        made from them, such as which checkpoint is best, is the same choice everywhere)."""
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        dist.broadcast(t, src=0)
        return [float(v) for v in t.tolist()]

    def gather(self, obj: Any) -> list[Any]:
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out


def checkpoint_dir(out_dir: Path) -> Path | None:
    """The newest complete state to resume from: `last/` (or `last.old/` if a swap was cut
    short), or the `checkpoint/` of a run written before runs kept a best model apart."""
    for name in (LAST_DIR, LAST_DIR + ".old", CHECKPOINT_DIR, CHECKPOINT_DIR + ".old"):
        folder = out_dir / name
        if (folder / STATE_NAME).exists():
            return folder
    return None


def swap_in(tmp: Path, final: Path) -> None:
    """Put the complete folder `tmp` in place of `final`; at every instant one of them is whole (a
    kill between the two renames leaves `final.old`: `checkpoint_dir` resumes from a `last.old`,
    and the resumed run publishes checkpoint/ again, see `_repair_published`)."""
    old = final.with_name(final.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # a file system without hard links
        shutil.copy2(src, dst)


def saved_step(folder: Path) -> int | None:
    """The training step a model folder was saved at (its config.json's `training.step`)."""
    try:
        step = read_structured(folder / CONFIG_NAME, "model config").get("training", {}).get("step")
    except (TinyStoriesError, AttributeError):
        return None
    return step if isinstance(step, int) else None


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
        train_file, train_info = load_tokens(data / "train.bin", self.tokenizer, cfg.model.vocab_size)
        train_tokens: np.ndarray = train_file
        self.valid: tuple[np.ndarray, TokenFileInfo] | None = None
        self.held_out: np.ndarray | None = None  # validation tokens drawn out of train.bin, if any
        self.valid_what = "none (no valid.bin, and validation_split_percentage=0)"
        self.overlap = 0  # validation stories that are also training stories
        valid_tokens: np.ndarray | None = None
        eos, context = self.tokenizer.eos_id, cfg.model.context_length
        if (data / "valid.bin").exists():
            valid_tokens, valid_info = load_tokens(data / "valid.bin", self.tokenizer, cfg.model.vocab_size)
            self.valid_what = f"valid.bin ({valid_info.stories:,} stories, {valid_info.tokens:,} tokens)"
        elif cfg.validation_split_percentage > 0:
            pct = cfg.validation_split_percentage
            train_tokens, valid_tokens, count = hold_out_stories(train_tokens, eos, pct, cfg.seed, context + 1)
            valid_info = self._info_of(valid_tokens, train_info)
            self.held_out = valid_tokens
            self.valid_what = (f"{count:,} stories ({len(valid_tokens):,} tokens) held out of train.bin: "
                               f"{pct:g}% drawn with seed {cfg.seed} (there is no valid.bin)")
        if valid_tokens is not None:
            self.valid = (fixed_windows(valid_tokens, context, cfg.eval_batches * cfg.batch_size), valid_info)
            if self.dist.main:
                self.overlap = shared_stories(train_tokens, valid_tokens, eos)
        self.batches = TokenBatches(train_tokens, context, cfg.batch_size,
                                    cfg.seed + 1000 * self.dist.rank, cfg.data_order, eos)
        self.data_tokens = len(train_tokens)
        self.best = BestModel()
        self.eval_seconds = 0.0  # time spent validating (and sampling stories), outside train_seconds
        self.validated: tuple[int, dict[str, float]] = (-1, {})  # the last validation: (step, metrics)

        self.model = GPT(cfg.model).to(self.device)
        self.optimizers = make_optimizers(self.model, cfg.optim)
        self.step = 0
        self.train_seconds = 0.0
        self.started_in: str | None = None  # the dtype `auto` chose when the run started (resume keeps it)
        self.ns_started_in: str | None = None  # and Muon's Newton-Schulz dtype
        self._saved_at = -1  # the step last/ was last written at
        if resume and (ckpt := checkpoint_dir(self.out)) is not None:
            self._restore(ckpt)
            if ckpt.name == LAST_DIR:
                self._repair_published()  # (every process: they must agree on the best model)

        self.dtype, self.dtype_why = self._autocast_dtype()
        self.ns_dtype, self.ns_why = self._muon_ns_dtype()
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

    def _info_of(self, tokens: np.ndarray, like: TokenFileInfo) -> TokenFileInfo:
        """The counts of held-out stories, bytes included (for bits per byte): each story's text
        (byte-level BPE decodes exactly) in UTF-8, plus one byte for its end, as pretokenize counts."""
        stories = split_stories(tokens, self.tokenizer.eos_id)
        n_bytes = sum(len(self.tokenizer.decode(s.tolist()).encode("utf-8")) + 1 for s in stories)
        return replace(like, tokens=len(tokens), stories=len(stories), bytes=n_bytes)

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

    def _muon_ns_dtype(self) -> tuple[str | None, str]:
        """Sets every Muon optimizer's Newton-Schulz dtype; its name and why: the configured one, or
        (auto) rank 0's measure for every process, and on resume the one the run started with.
        bf16 and fp32 can time alike (the Xeon), and a process that measured the other way
        would compute another run."""
        muons = [opt for opt in self.optimizers if isinstance(opt, Muon)]
        if not muons:
            return None, ""
        dtype, why = muon_ns_dtype(self.cfg.optim, self.device)
        if self.cfg.optim.muon_ns_dtype == "auto":
            if self.ns_started_in:
                dtype, why = getattr(torch, self.ns_started_in), f"{self.ns_started_in} (the dtype this run started with)"
            else:
                dtype, why = self.dist.gather((dtype, why))[0]
        for opt in muons:
            opt.ns_dtype = dtype
        return str(dtype).removeprefix("torch."), why

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
        self.ns_started_in = state.get("muon_ns_dtype")
        self.eval_seconds = state.get("eval_seconds", 0.0)
        self.best = BestModel.from_state(state.get("best_model"))
        self.validated = (state.get("validated_step", -1), state.get("validated", {}))
        self._saved_at = self.step
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

    def _published_step(self) -> int:
        """The step whose model checkpoint/ should hold: the best one, or the last."""
        if self.cfg.load_best_model_at_end and self.best.step is not None:
            return self.best.step
        return self.step

    def save_checkpoint(self) -> Path:
        """Write the last state to last/ and, when this step's model is the one to use, make it
        checkpoint/ too. Every process calls it (it gathers their samplers' and RNGs' states)."""
        data_states = self.dist.gather(self.batches.state())
        rng = self.dist.gather(torch.get_rng_state())
        cuda_rng = self.dist.gather(torch.cuda.get_rng_state() if self.device.type == "cuda" else None)
        self._saved_at = self.step
        last = self.out / LAST_DIR
        if not self.dist.main:
            return last
        self._check_finite()
        tmp = self.out / (LAST_DIR + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tokens = self.step * self.cfg.tokens_per_step * self.dist.world
        training: dict[str, Any] = {"step": self.step, "tokens": tokens,
                                    "epochs": round(tokens / max(self.data_tokens, 1), 3)}
        if self.validated[0] == self.step:  # validated at this step: the model's own scores
            training.update(self.validated[1])
        training.update({"best_step": self.best.step, "metric_for_best_model": self.cfg.metric_for_best_model,
                         "best_metric": self.best.metric})
        try:
            save_model(tmp, self.model, self.tokenizer, extra={"training": training})
            tensors, groups = optimizer_tensors(self.optimizers)
            tensors.update({f"rng.torch.{r}": s for r, s in enumerate(rng)})
            tensors.update({f"rng.cuda.{r}": s for r, s in enumerate(cuda_rng) if s is not None})
            save_tensors(tensors, tmp / OPTIMIZER_NAME)
            with atomic_write(tmp / "config.yaml") as f:
                f.write(dump_config(self.cfg))
            write_json(tmp / STATE_NAME, {"step": self.step, "train_seconds": self.train_seconds,
                                          "dtype": str(self.dtype).removeprefix("torch."),
                                          "muon_ns_dtype": self.ns_dtype,
                                          "eval_seconds": self.eval_seconds, "best_model": self.best.state(),
                                          "validated_step": self.validated[0], "validated": self.validated[1],
                                          "data_states": data_states, "optimizers": groups})
        except BaseException:  # a full disk, a kill: the old state stays; give back the space
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        swap_in(tmp, last)  # at every instant one complete last state exists
        if self._published_step() == self.step:
            self._publish()
        return last

    def _publish(self) -> None:
        """checkpoint/ <- last/'s model folder (hard links), swapped in whole. A kill before the
        swap leaves the previous checkpoint/; the next start repairs it (`_repair_published`)."""
        tmp, final = self.out / (CHECKPOINT_DIR + ".tmp"), self.out / CHECKPOINT_DIR
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            for name in PUBLISHED:
                _link_or_copy(self.out / LAST_DIR / name, tmp / name)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        swap_in(tmp, final)

    def _repair_published(self) -> None:
        """On resume, make checkpoint/ the model it should be. After a kill between writing last/
        and publishing it, that model is last/'s own: take it from there (any earlier best model
        was published before last/ moved past its step). A best model of a run that kept its
        last one until now (load_best_model_at_end turned on) is not on disk: forget it, so the
        next validation chooses again."""
        on_disk, wanted = saved_step(self.out / CHECKPOINT_DIR), self._published_step()
        if on_disk == wanted:
            return
        if wanted == self.step:
            if self.dist.main:
                log.info("%s: taking the model of step %d from %s", self.out / CHECKPOINT_DIR, self.step, LAST_DIR)
                self._publish()
            return
        log.warning("%s holds the model of step %s, not the best one (step %d): the next validation chooses "
                    "the best model again", self.out / CHECKPOINT_DIR, on_disk, wanted)
        self.best = BestModel(patience_counter=self.best.patience_counter)

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
        mine = windows[self.dist.rank::self.dist.world]  # each process a share, summed over them
        self.model.eval()
        total = 0.0
        for i in range(0, len(mine), self.cfg.batch_size):
            xy = torch.from_numpy(mine[i:i + self.cfg.batch_size]).to(self.device)
            with self._autocast():
                _, loss = self.model(xy[:, :-1], xy[:, 1:])
            total += float(loss) * len(xy)
        self.model.train()
        total, count = self.dist.sum([total, float(len(mine))], self.device)
        val_loss = total / count
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
        data = max(self.data_tokens, 1)
        budget = f"{cfg.max_minutes:g} minutes (the LR schedule follows the clock)" if cfg.max_minutes else \
            f"{cfg.max_steps:,} steps = {cfg.max_steps * per_step / 1e6:,.2f}M tokens " \
            f"= {cfg.max_steps * per_step / data:.1f} epochs"
        threads = f", {torch.get_num_threads()} threads" if self.device.type == "cpu" else ""
        processes = f", {world} processes" if world > 1 else ""
        lines = [(f"model: {cfg.model.arch}, {cfg.model.n_layer} layers x d_model {cfg.model.d_model}, "
                  f"{params / 1e6:.2f}M parameters ({non_emb / 1e6:.2f}M without embeddings)"),
                 (f"device: {self.device}{threads}, {str(self.dtype).removeprefix('torch.')} ({self.dtype_why})"
                  f"{processes}"),
                 (f"batch: {per_step:,} tokens per step ({cfg.batch_size} x {cfg.grad_accum} x "
                  f"{cfg.model.context_length}{f' x {world}' if world > 1 else ''}); optimizer "
                  f"{cfg.optim.optimizer}, {cfg.optim.schedule} schedule; budget {budget}"),
                 (f"data: {self.data_tokens / 1e6:,.2f}M training tokens; one epoch (every token read once) "
                  f"takes {data / per_step:,.1f} steps")]
        if self.valid is not None:
            windows = len(self.valid[0])
            keep = (f"checkpoint/ keeps the best model by {cfg.metric_for_best_model}"
                    if cfg.load_best_model_at_end else "checkpoint/ keeps the last model")
            stop = (f"early stopping after {cfg.early_stopping_patience} validations without an improvement of "
                    f"more than {cfg.early_stopping_threshold:g}" if cfg.early_stopping_patience else
                    "no early stopping")
            lines.append(f"validation: {self.valid_what}; {windows} windows of {cfg.model.context_length} tokens "
                         f"every {cfg.eval_interval} steps; {keep}, last/ the last state; {stop}")
        else:
            lines.append(f"validation: {self.valid_what}; checkpoint/ and last/ keep the last model")
        if self.ns_why:
            lines.append(f"muon: Newton-Schulz in {self.ns_why}")
        warnings = []
        if not cfg.max_minutes and cfg.optim.warmup_steps >= cfg.max_steps:
            warnings.append(f"warning: warmup_steps ({cfg.optim.warmup_steps}) >= max_steps ({cfg.max_steps}): the "
                            "learning rate never finishes warming up; lower optim.warmup_steps")
        if self.overlap:
            warnings.append(f"warning: {self.overlap} validation stories also appear in the training data: the "
                            "validation loss will look better than it is; pretokenize disjoint corpora")
        if self.valid is None and cfg.early_stopping_patience:
            warnings.append("warning: early_stopping_patience is set but there is no validation: the run will not "
                            "stop early")
        return lines + warnings

    def finished(self) -> bool:
        """The schedule is done, or early stopping ended the run."""
        return (self.step >= self.cfg.max_steps or self.progress() >= 1.0
                or self.best.exhausted(self.cfg.early_stopping_patience))

    def result(self) -> dict[str, float]:
        """The validation of the model checkpoint/ holds (the same on every process)."""
        if self.cfg.load_best_model_at_end and self.best.step is not None:
            return dict(self.best.metrics)
        return dict(self.validated[1]) if self.validated[0] == self.step else {}

    def fit(self, pause_at: int | None = None) -> dict[str, float]:
        """Train to the end of the schedule or until early stopping (or until step `pause_at`, e.g.
        a job's slot); returns the validation of the model checkpoint/ holds: the best one with
        `load_best_model_at_end`, which the trainer's model then is too, or the last one."""
        cfg = self.cfg
        end = min(cfg.max_steps, pause_at or cfg.max_steps)
        if self.dist.main:
            self.out.mkdir(parents=True, exist_ok=True)
            with atomic_write(self.out / "config.yaml") as f:
                f.write(dump_config(cfg))
            for line in self.summary():
                (log.warning if line.startswith("warning") else log.info)(line)
        if self.step >= end or self.finished():  # a finished run, rerun: nothing to add
            if self.dist.main:
                log.info(f"{self.out} already finished at step {self.step}")
            return self.result() or self.evaluate()
        self.model.train()
        # The bar counts whichever limit ends the run: steps, or seconds of a time budget.
        by_time = cfg.max_minutes > 0
        bar = tqdm(total=round(60 * cfg.max_minutes) if by_time else cfg.max_steps,
                   initial=round(self.train_seconds) if by_time else self.step, unit="s" if by_time else "step",
                   desc="training", disable=not (cfg.progress and self.dist.main), dynamic_ncols=True)
        tokens_per_step = cfg.tokens_per_step * self.dist.world
        window_start, window_steps = time.perf_counter(), 0
        last_eval: dict[str, float] = {}
        while self.step < end and not self.finished():
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
                bar.set_postfix(step=self.step, epoch=f"{self.step * tokens_per_step / self.data_tokens:.2f}",
                                loss=f"{loss:.3f}", tok_s=f"{tok_s:,.0f}", **_short(last_eval))
                window_start, window_steps = time.perf_counter(), 0
            new_best = False
            if self.step % cfg.eval_interval == 0:
                last_eval = self._eval_and_log()
                new_best = self._take(last_eval)
            if self.step % cfg.checkpoint_interval == 0 or (new_best and cfg.load_best_model_at_end):
                self.save_checkpoint()  # (a new best is saved at once: checkpoint/ is made from last/)
        bar.close()
        done = self.finished()
        if done and self.validated[0] != self.step:  # the end of the run is validated, cadence or not
            last_eval = self._eval_and_log()
            self._take(last_eval)
        if self._saved_at != self.step:
            self.save_checkpoint()
        if not last_eval:  # no validation set: nothing has drawn the curves yet
            self.log.plot()
        if done:
            self._report()
            if self.dist.main and self.best.step is not None and cfg.load_best_model_at_end:
                self.log.best(self.best.step, self.best.step * tokens_per_step, **self.best.metrics)
                self.log.plot()
            if self.dist.main and self._published_step() != self.step:  # load_best_model_at_end
                self.model.load_state_dict(load_tensors(self.out / CHECKPOINT_DIR / WEIGHTS_NAME), strict=False)
        if self.log.trackers is not None:
            self.log.trackers.close()
        if self.dist.world > 1:  # together: rank 0 may still be writing samples while the others are done
            dist.barrier()
            dist.destroy_process_group()
        return self.result()

    def _take(self, metrics: dict[str, float]) -> bool:
        """Count one validation towards the best model and early stopping; True for a new best."""
        if not metrics:
            return False
        return self.best.update(metrics, self.step, self.cfg.metric_for_best_model, self.cfg.early_stopping_threshold)

    def _report(self) -> None:
        """The end of a run, in the log: which model checkpoint/ holds, and what validating cost."""
        cfg = self.cfg
        if not self.dist.main:
            return
        if self.best.exhausted(cfg.early_stopping_patience):
            log.info(f"early stopping at step {self.step}: {self.best.patience_counter} validations without an "
                     f"improvement of {cfg.metric_for_best_model} by more than {cfg.early_stopping_threshold:g}")
        epochs = self.step * cfg.tokens_per_step * self.dist.world / max(self.data_tokens, 1)
        if self.best.step is not None:
            kept = "checkpoint/ holds it" if cfg.load_best_model_at_end else \
                "checkpoint/ holds the last model (load_best_model_at_end=false)"
            log.info(f"best model: step {self.best.step} of {self.step} ({epochs:.1f} epochs), {cfg.metric_for_best_model}"
                     f" {self.best.metric:.4f}; {kept}, last/ the last state")
            share = self.eval_seconds / max(self.train_seconds, 1e-9)
            log.info(f"validating took {self.eval_seconds:.1f} s, {100 * share:.1f}% of the training time "
                     f"({self.train_seconds:.0f} s)")
    def _eval_and_log(self) -> dict[str, float]:
        start = time.perf_counter()
        result = self.evaluate()
        self.validated = (self.step, result)
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
        self.eval_seconds += time.perf_counter() - start
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

