import itertools
import json
import math
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from tinystories.data.prepare import PrepareConfig, prepare
from tinystories.errors import TinyStoriesError
from tinystories.model.checkpoint import load_model
from tinystories.train.batches import TokenBatches
from tinystories.train.config import build_train_config
from tinystories.train.optim import lr_factor
from tinystories.train.trainer import Trainer
from tinystories.utils import atomic_write

TINY = ["model.n_layer=1", "model.d_model=32", "model.n_head=2", "model.context_length=64",
        "model.vocab_size=512", "optim.warmup_steps=2", "model.dropout=0.1"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tokens")
    prepare(PrepareConfig(out_dir=str(out), vocab_size=512), progress=False)
    return out


def make_config(data_dir: Path, out: Path, **kw: object):
    fields = {"data_dir": str(data_dir), "out_dir": str(out), "batch_size": 4, "max_steps": 8, "eval_interval": 4,
                  "eval_batches": 2, "log_interval": 1, "checkpoint_interval": 4, "progress": False, "seed": 3}
    fields.update(kw)
    return build_train_config(None, TINY, **fields)


def losses(out: Path) -> list[float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["kind"] == "train"]


RECIPES = {
    "defaults": [],  # the recipe: Muon + AdamW, warmup-stable-decay, story-start windows
    "adamw-cosine-random": ["optim.optimizer=adamw", "optim.schedule=cosine", "data_order=random"],
    "muon-shuffled-modern": ["optim.optimizer=muon", "data_order=shuffled", "model.arch=modern",
                             "model.qk_norm=true", "model.mlp=relu2"],
}


@pytest.mark.parametrize("recipe", RECIPES)
def test_resumed_run_continues_exactly(recipe: str, data_dir: Path, tmp_path: Path) -> None:
    def config(out: Path):  # type: ignore[no-untyped-def]
        return build_train_config(None, TINY + RECIPES[recipe], data_dir=str(data_dir), out_dir=str(out),
                                  batch_size=4, max_steps=8, eval_interval=4, eval_batches=2, log_interval=1,
                                  checkpoint_interval=4, progress=False, seed=3, grad_accum=2)

    straight = tmp_path / "straight"
    Trainer(config(straight)).fit()

    interrupted = tmp_path / "interrupted"
    Trainer(config(interrupted)).fit(pause_at=4)  # stopped after step 4
    trainer = Trainer(config(interrupted))
    assert trainer.step == 4
    trainer.fit()

    assert losses(interrupted) == losses(straight) and len(losses(straight)) == 8
    for folder in ("checkpoint", "last"):  # the model to use and the state to resume from
        a, b = load_model(straight / folder).model, load_model(interrupted / folder).model
        for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(p, q), name
    assert state_of(interrupted / "last") == state_of(straight / "last")  # the best model's bookkeeping too


def test_outputs_of_a_run(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = Trainer(make_config(data_dir, out, max_steps=30, eval_interval=10, dropout=None,
                                 batch_size=8)).fit()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r["loss"] for r in rows if r["kind"] == "train"]
    assert train[-1] < train[0] - 0.5  # it learns
    assert math.isclose(train[0], math.log(512), rel_tol=0.1)  # starts near uniform
    evals = [r for r in rows if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [10, 20, 30]
    assert result["val_bpb"] == pytest.approx(evals[-1]["val_bpb"], abs=1e-4)
    assert 0.5 < result["val_bpb"] < 4
    for name in ("loss.png", "metrics.csv", "config.yaml", "checkpoint/config.yaml", "checkpoint/model.safetensors"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert build_train_config(out / "config.yaml").max_steps == 30


@pytest.mark.parametrize("schedule", ["cosine", "wsd"])
def test_schedule_warms_up_then_decays(schedule: str, data_dir: Path, tmp_path: Path) -> None:
    cfg = build_train_config(None, [f"optim.schedule={schedule}", "optim.warmup_steps=10", "optim.decay_frac=0.2"])
    lrs = [cfg.optim.lr * lr_factor(cfg.optim, step / 100, step) for step in range(101)]
    assert lrs[0] < lrs[1] < lrs[9] and max(lrs) == pytest.approx(cfg.optim.lr)
    assert lrs[-1] == pytest.approx(cfg.optim.final_lr, rel=1e-6)
    if schedule == "wsd":  # stable until 80%, then a straight line down
        assert lrs[10] == lrs[50] == lrs[80] == cfg.optim.lr
        assert lrs[90] == pytest.approx((cfg.optim.lr + cfg.optim.final_lr) / 2)
    else:
        assert lrs[50] < lrs[10] and lrs[50] == pytest.approx((cfg.optim.lr + cfg.optim.final_lr) / 2, rel=0.05)


@pytest.mark.parametrize("order", ["shuffled", "stories"])
def test_epoch_orders_visit_every_window_once(order: str) -> None:
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, 50, size=1000).astype(np.uint16)
    story_starts = [0, 97, 250, 251, 400, 613, 800]
    tokens[story_starts] = 0  # EOS
    batches = TokenBatches(tokens, 20, 4, seed=1, order=order, eos_id=0)
    starts = sorted(batches._starts_of_epoch().tolist())
    if order == "stories":  # every story's leading EOS starts a window; long ones go on every 21 tokens
        bounds = [*story_starts, 1000]
        expected = [s for a, b in itertools.pairwise(bounds) for s in range(a, b, 21) if s <= 1000 - 21]
        assert starts == expected and set(story_starts) <= set(starts)
    else:  # back-to-back windows of context + 1 from a random offset, covering the tokens
        assert all(b - a == 21 for a, b in itertools.pairwise(starts)) and starts[0] < 21 and starts[-1] + 42 > 1000
    drawn = []
    while len(drawn) < len(starts):
        x, _ = batches.next(torch.device("cpu"))
        drawn += [tuple(r.tolist()) for r in x]
    expected = {tuple(tokens[s:s + 20].tolist()) for s in starts}
    assert set(drawn[:len(starts)]) == expected and len(set(drawn[:len(starts)])) == len(starts)  # each once
    assert batches.epoch == 1  # the next epoch has begun, with another order


def test_story_order_covers_documents_longer_than_a_window() -> None:
    tokens = np.ones(1000, dtype=np.uint16)
    tokens[[0, 130, 140]] = 0  # stories of 130, 10 and 860 tokens; windows of 51
    batches = TokenBatches(tokens, 50, 4, seed=1, order="stories", eos_id=0)
    assert sorted(batches._starts_of_epoch().tolist()) == [0, 51, 102, 130, *range(140, 1000 - 51, 51)]


def test_resume_follows_the_new_config_or_says_why_it_cannot(data_dir: Path, tmp_path: Path) -> None:
    Trainer(make_config(data_dir, tmp_path, max_steps=4)).fit(pause_at=2)
    resumed = Trainer(build_train_config(tmp_path / "config.yaml", ["optim.lr=5e-4", "optim.min_lr=0"]))
    resumed.fit()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in rows if r["kind"] == "train"]
    assert lrs[2] <= 5e-4 < lrs[0]  # the LR after the resume follows the new peak
    with pytest.raises(TinyStoriesError, match="optimizer state does not fit optim.optimizer=adamw"):
        Trainer(build_train_config(tmp_path / "config.yaml", ["optim.optimizer=adamw"]))


def test_muon_takes_q_k_v_apart_and_a_run_resumes_either_way(data_dir: Path, tmp_path: Path) -> None:
    """`optim.muon_split_qkv` changes the update, not the optimizer's state: a run started one way
    resumes the other (a checkpoint from before the setting resumes under its default)."""
    Trainer(make_config(data_dir, tmp_path, max_steps=4)).fit(pause_at=2)
    for split in (False, True):
        trainer = Trainer(build_train_config(tmp_path / "config.yaml", [f"optim.muon_split_qkv={split}"]))
        qkv = {p for n, p in trainer.model.named_parameters() if n.endswith(".attn.qkv.weight")}
        assert qkv and set(trainer.optimizers[0].blocks) == (qkv if split else set())  # type: ignore[attr-defined]
        assert trainer.step == 2
    trainer.fit()
    assert trainer.step == 4


def test_resume_refuses_another_model_shape(data_dir: Path, tmp_path: Path) -> None:
    Trainer(make_config(data_dir, tmp_path, max_steps=2)).fit()
    with pytest.raises(TinyStoriesError, match="another shape"):
        Trainer(build_train_config(tmp_path / "config.yaml", ["model.n_layer=2"]))


def test_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"good")
    with pytest.raises(RuntimeError), atomic_write(target, "wb") as f:
        f.write(b"half")
        raise RuntimeError("disk full")
    assert target.read_bytes() == b"good" and os.listdir(tmp_path) == ["model.safetensors"]


def test_missing_data_dir_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(TinyStoriesError, match="run `tinystories pretokenize`"):
        Trainer(make_config(tmp_path / "nowhere", tmp_path / "out"))


def test_vocab_too_small_for_tokenizer(data_dir: Path, tmp_path: Path) -> None:
    cfg = build_train_config(None, TINY + ["model.vocab_size=100"], data_dir=str(data_dir), out_dir=str(tmp_path))
    with pytest.raises(TinyStoriesError, match="set model.vocab_size=512"):
        Trainer(cfg)


@pytest.mark.slow
def test_ddp_with_torchrun_on_two_cpu_processes(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "tinystories.cli", "train", "--data", str(data_dir), "--out", str(out), "--max-steps", "3",
           "--batch-size", "2", "--device", "cpu",
           *[a for o in (*TINY, "progress=false", "eval_interval=3", "log_interval=1", "grad_accum=2")
             for a in ("--set", o)]]
    # Its own process group, so a hang cannot leave torchrun's workers behind.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        _, stderr = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, stderr[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 2, 3]
    assert rows[0]["tokens"] == 2 * 2 * 2 * 64  # batch x grad_accum x 2 processes x context
    assert load_model(out / "checkpoint").config["training"]["step"] == 3
    # Each process validated half the windows; the sum over both is one process's score of them all.
    (ddp_eval,) = [r for r in rows if r["kind"] == "eval"]
    alone = Trainer(build_train_config(None, [*TINY, "grad_accum=2", "eval_interval=3"], data_dir=str(data_dir),
                                       out_dir=str(tmp_path / "alone"), batch_size=2, device="cpu", progress=False))
    alone.model.load_state_dict(weights(out / "checkpoint"), strict=False)
    assert alone.evaluate()["val_loss"] == pytest.approx(ddp_eval["val_loss"], abs=2e-5)
    assert json.loads((out / "last" / "trainer_state.json").read_text())["best_model"]["step"] == 3


def test_start_up_summary_warnings_and_a_finished_rerun(data_dir: Path, tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="tinystories")
    out = tmp_path / "run"
    cfg = make_config(data_dir, out, max_steps=4, eval_interval=2, log_interval=1)
    bad = build_train_config(None, [*TINY, "optim.warmup_steps=10"], data_dir=str(data_dir),
                             out_dir=str(tmp_path / "w"), max_steps=5, progress=False)
    assert any("never finishes warming up" in line for line in Trainer(bad).summary())
    first = Trainer(cfg, sample=lambda model, tok, n: [f"story {i}" for i in range(n)]).fit()
    text = caplog.text
    assert "parameters" in text and "tokens per step" in text and "device: cpu" in text
    assert "muon: Newton-Schulz in " in text  # which dtype the optimizer runs in, and why
    assert "validation stories also appear in the training data" not in text
    rows = (out / "metrics.jsonl").read_text()
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [s["step"] for s in samples] == [2, 4] and samples[0]["stories"] == ["story 0", "story 1"]
    caplog.clear()
    again = Trainer(make_config(data_dir, out, max_steps=4, eval_interval=2, log_interval=1)).fit()
    assert again == pytest.approx(first, abs=1e-4) and (out / "metrics.jsonl").read_text() == rows  # no new rows
    assert "already finished" in caplog.text


def test_a_time_budget_is_fitted_to_the_tokens_it_buys(data_dir: Path, tmp_path: Path) -> None:
    from tinystories.train.budget import PLANS, measure_throughput, plan_for

    assert [p.up_to for p in PLANS] == sorted(p.up_to for p in PLANS) and PLANS[-1].changes == {}
    slow, fast = plan_for(1.0e6), plan_for(3.0e6)  # 3 minutes of an AVX2 EPYC, of an AVX-512 Xeon
    cfg = make_config(data_dir, tmp_path / "run", batch_size=16)
    assert slow.apply(cfg).batch_size == 8 and fast.apply(cfg) == cfg
    tok_s = measure_throughput(cfg, steps=2)
    assert 0 < tok_s < 1e8 and not (tmp_path / "run").exists()  # real steps, in a scratch folder


def test_the_plan_for_a_small_corpus_is_chosen_by_the_epochs_it_will_see(data_dir: Path, tmp_path: Path) -> None:
    from tinystories.train.budget import EPOCH_PLANS, epoch_plan_for, plan_for, plans_for

    assert [p.up_to for p in EPOCH_PLANS] == sorted(p.up_to for p in EPOCH_PLANS) and EPOCH_PLANS[-1].up_to == math.inf
    cfg = make_config(data_dir, tmp_path / "run")
    few, many = epoch_plan_for(4.5), epoch_plan_for(15.0)  # the 3- and 10-minute demos on the Zen 4 (recipe epochs)
    assert few.apply(cfg) == cfg and few.changes == {}
    regularized = many.apply(cfg)  # a dotted key changes a field of one section and nothing else
    assert regularized.model.dropout == 0.2 != cfg.model.dropout and regularized.optim == cfg.optim and regularized.batch_size == 4
    assert "epochs" in many.why and "epochs" in few.why
    # the demo's fit: the same 7.7M tokens are 15 epochs of the bundled sample, 1.5 of a corpus ten times larger
    assert plans_for(7.7e6, 0.52e6) == [plan_for(7.7e6), many] and plans_for(7.7e6, 5.2e6) == [plan_for(7.7e6), few]


def test_train_says_when_its_epochs_call_for_the_epoch_plan(data_dir: Path, tmp_path: Path) -> None:
    """`train` applies no plan, but says which `--set` flags the plan for its epochs would add."""
    from tinystories.train.budget import epoch_advice, epoch_plan_for, field

    tuned = make_config(data_dir, tmp_path / "run", max_steps=1000)
    cfg = replace(tuned, model=replace(tuned.model, dropout=0.0))
    per_epoch = 1000 * cfg.tokens_per_step // 20  # the run reads these tokens 20 times
    plan = epoch_plan_for(20.0)
    assert plan.changes and all(field(cfg, key) != value for key, value in plan.changes.items())
    advice = epoch_advice(cfg, per_epoch)
    assert advice is not None and "20.0 times" in advice and plan.why in advice
    assert all(f"--set {key}={value}" in advice for key, value in plan.changes.items())
    assert epoch_advice(cfg, per_epoch * 10) is None  # 2 epochs: the recipe as it is
    assert epoch_advice(plan.apply(cfg), per_epoch) is None  # already there
    assert epoch_advice(replace(cfg, max_minutes=5.0), per_epoch) is None  # epochs not known before the clock runs
    assert field(cfg, "batch_size") == cfg.batch_size and field(cfg, "optim.lr") == cfg.optim.lr


def test_validation_stories_in_the_training_set_are_flagged(tmp_path: Path) -> None:
    data = tmp_path / "tokens"
    prepare(PrepareConfig(train=["bundled:valid"], valid=["bundled:valid"], out_dir=str(data), vocab_size=512),
            progress=False)
    trainer = Trainer(build_train_config(None, TINY, data_dir=str(data), out_dir=str(tmp_path / "r"),
                                         max_steps=2, progress=False))
    assert trainer.overlap == 500
    assert any("500 validation stories also appear in the training data" in line for line in trainer.summary())


@pytest.mark.slow
def test_tensorboard_and_wandb_offline(data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    Trainer(make_config(data_dir, out, max_steps=4, eval_interval=2, log_interval=1, log_to=["tensorboard", "wandb"]),
            sample=lambda model, tok, n: ["Once upon a time there was a cat."] * n).fit()
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4]
    assert [e.step for e in events.Scalars("eval/val_bpb")] == [2, 4]
    assert "samples/text_summary" in events.Tags()["tensors"]
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].glob("*.wandb"))  # the run, ready for `wandb sync`

    alone = tmp_path / "wandb-only"  # W&B alone, on a folder that does not exist yet
    Trainer(make_config(data_dir, alone, max_steps=2, eval_interval=2, log_to=["wandb"], eval_samples=0)).fit()
    assert len((alone / "wandb_run_id").read_text()) == 16 and any((alone / "wandb").glob("offline-run-*"))


def test_torn_log_lines_do_not_stop_a_resume(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    sample = lambda model, tok, n: ["Once upon a time there was a cat."] * n
    Trainer(make_config(data_dir, out, max_steps=4, eval_interval=2), sample=sample).fit(pause_at=2)
    for name in ("samples.jsonl", "metrics.jsonl"):  # a crash mid-append
        with (out / name).open("a") as f:
            f.write('{"step": 3, "sto')
    Trainer(make_config(data_dir, out, max_steps=4, eval_interval=2), sample=sample).fit()
    samples = [json.loads(line)["step"] for line in (out / "samples.jsonl").read_text().splitlines()]
    assert samples == [2, 4] and [r["step"] for r in map(json.loads, (out / "metrics.jsonl").read_text().split(
        "\n")[:-1]) if r["kind"] == "eval"] == [2, 4]


def test_a_nan_loss_stops_before_it_is_saved(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    Trainer(make_config(data_dir, out)).fit(pause_at=4)
    trainer = Trainer(make_config(data_dir, out))
    with torch.no_grad():  # what a diverging run does to its weights
        next(trainer.model.parameters()).fill_(float("nan"))
    with pytest.raises(TinyStoriesError, match=r"step 5: the training loss is nan.*last finite checkpoint"):
        trainer.fit()
    kept = load_model(out / "checkpoint")
    assert kept.config["training"]["step"] == 4 and all(torch.isfinite(p).all() for p in kept.model.parameters())
    assert not (out / "checkpoint.tmp").exists()
    with pytest.raises(TinyStoriesError, match="the weights hold NaN"):
        trainer.save_checkpoint()  # the check before every save, whatever the last loss was


def test_a_full_disk_ends_with_one_line_and_the_rerun_resumes(data_dir: Path, small_disk: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    from conftest import fill
    from tinystories.cli import main

    out = small_disk / "run"
    argv = ["train", "--data", str(data_dir), "--out", str(out), "--batch-size", "4", "--eval-samples", "0",
            *[a for o in (*TINY, "progress=false", "eval_interval=4", "eval_batches=2", "checkpoint_interval=4",
                                "log_interval=1")
              for a in ("--set", o)]]
    assert main([*argv, "--max-steps", "4"]) == 0
    filler = fill(small_disk, leave=100_000)  # room for the logs, not for a second checkpoint
    assert main([*argv, "--max-steps", "8"]) == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert err.startswith(f"error: {out}/last.tmp/") and "no space left on the device" in err, err
    for name in ("last", "checkpoint"):  # the old state and model, whole
        assert load_model(out / name).config["training"]["step"] == 4
    assert not (out / "last.tmp").exists()  # and the half-written one gave its space back

    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    try:
        assert main([*argv, "--max-steps", "8"]) == 2
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_disk)], check=True)
    assert f"error: {out}/.tinystories.lock: read-only file system" in capsys.readouterr().err

    filler.unlink()
    assert main([*argv, "--max-steps", "8"]) == 0
    assert "resuming from" in capsys.readouterr().err
    assert load_model(out / "last").config["training"]["step"] == 8
    assert [r["step"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
            if r["kind"] == "train"] == list(range(1, 9))


# ---- the best model, validation on held-out rows, epochs -------------------------------------------------------

# A run that overfits in seconds: 10 stories (about 9 steps an epoch), a wide layer at a high LR, held-out
# stories from elsewhere in the sample. Validation falls for the first 2-4 epochs, then climbs.
OVERFIT = ["model.n_layer=1", "model.d_model=128", "model.n_head=2", "model.context_length=64",
           "model.vocab_size=300", "optim.warmup_steps=2", "optim.lr=3e-2", "optim.muon_lr=3e-2",
           "optim.decay_frac=0.01"]


@pytest.fixture(scope="module")
def overfit_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tinystories.data.corpus import read_stories

    root = tmp_path_factory.mktemp("overfit")
    stories = read_stories("bundled:train")[0]
    (root / "few.jsonl").write_text("".join(json.dumps({"text": s}) + "\n" for s in stories[:10]))
    (root / "held.jsonl").write_text("".join(json.dumps({"text": s}) + "\n" for s in stories[-60:]))
    prepare(PrepareConfig(train=[str(root / "few.jsonl")], valid=[str(root / "held.jsonl")], out_dir=str(root / "tok"),
                          vocab_size=300), progress=False)
    return root / "tok"


def overfit_config(data: Path, out: Path, *extra: str, **kw: object):  # type: ignore[no-untyped-def]
    fields = {"data_dir": str(data), "out_dir": str(out), "batch_size": 8, "max_steps": 32, "eval_interval": 4,
              "eval_batches": 2, "log_interval": 1, "checkpoint_interval": 10, "progress": False, "seed": 3,
              "eval_samples": 0, **kw}
    return build_train_config(None, [*OVERFIT, *extra], **fields)


def rows_of(out: Path, kind: str) -> list[dict[str, object]]:
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


def state_of(folder: Path) -> dict[str, object]:
    """What a resumed run must reproduce exactly (not the seconds it took)."""
    state = json.loads((folder / "trainer_state.json").read_text())
    return {k: v for k, v in state.items() if k not in ("train_seconds", "eval_seconds")}


def weights(folder: Path) -> dict[str, torch.Tensor]:
    from tinystories.model.checkpoint import load_tensors

    return load_tensors(folder / "model.safetensors")


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture(scope="module")
def overfit_run(overfit_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Trainer, dict[str, float]]:
    out = tmp_path_factory.mktemp("straight") / "run"
    trainer = Trainer(overfit_config(overfit_data, out))
    return out, trainer, trainer.fit()


def test_the_best_model_is_kept_when_validation_gets_worse(overfit_run: tuple[Path, Trainer, dict[str, float]],
                                                           overfit_data: Path, tmp_path: Path) -> None:
    out, trainer, result = overfit_run
    evals = rows_of(out, "eval")
    scores = {int(r["step"]): float(r["val_bpb"]) for r in evals}  # type: ignore[arg-type]
    best = min(scores, key=scores.__getitem__)
    assert list(scores) == list(range(4, 33, 4))
    # the run overfits: the last model is clearly worse (by about 0.1 bits per byte; how much varies by CPU)
    assert best < 32 and scores[32] > scores[best] + 0.05
    assert trainer.best.step == best and result["val_bpb"] == pytest.approx(scores[best], abs=1e-5)
    ckpt = json.loads((out / "checkpoint" / "config.json").read_text())["training"]
    assert ckpt["step"] == best and ckpt["val_bpb"] == pytest.approx(scores[best], abs=1e-5)
    assert ckpt["best_step"] == best and ckpt["metric_for_best_model"] == "val_bpb"
    assert json.loads((out / "last" / "config.json").read_text())["training"]["step"] == 32
    assert rows_of(out, "best") == [{"step": best, "tokens": best * 512, "kind": "best",
                                     "val_loss": round(trainer.best.metrics["val_loss"], 5),
                                     "val_bpb": round(scores[best], 5)}]
    # the trainer ends with the best model (load_best_model_at_end), the one every command loads
    assert trainer.evaluate()["val_bpb"] == trainer.best.metric == trainer.best.metrics["val_bpb"]
    from tinystories.model.loader import load_any

    loaded = load_any(out)
    assert loaded.path == out / "checkpoint" and all(
        torch.equal(p, q) for p, q in zip(loaded.model.state_dict().values(), trainer.model.state_dict().values()))
    assert not (out / "checkpoint" / "optimizer.safetensors").exists()  # a model folder; the state is in last/

    last = tmp_path / "last"  # load_best_model_at_end=false: the last weights, whatever validation said
    Trainer(overfit_config(overfit_data, last, "load_best_model_at_end=false", max_steps=12)).fit()
    assert json.loads((last / "checkpoint" / "config.json").read_text())["training"]["step"] == 12
    assert same_weights(last / "checkpoint", last / "last")
    assert os.path.samefile(last / "checkpoint" / "model.safetensors", last / "last" / "model.safetensors")  # linked


KILL = r"""
import json, os, signal, sys
from pathlib import Path
from tinystories.train import trainer as T
from tinystories.train.config import build_train_config

where, at = sys.argv[2], int(sys.argv[3])
die = lambda: os.kill(os.getpid(), signal.SIGKILL)
if where == "step":  # in the middle of the run, between saves
    step = T.Trainer.train_step
    T.Trainer.train_step = lambda self: die() if self.step == at else step(self)
elif where == "publish":  # last/ written with a new best, checkpoint/ not yet made from it
    publish = T.Trainer._publish
    T.Trainer._publish = lambda self: die() if self.step == at else publish(self)
elif where == "swap":  # between the two renames that swap in a new last/
    swap = T.swap_in
    def cut(tmp, final):
        if final.name == "last" and json.loads((tmp / "trainer_state.json").read_text())["step"] == at:
            final.rename(final.with_name("last.old"))
            die()
        swap(tmp, final)
    T.swap_in = cut
T.Trainer(build_train_config(sys.argv[1])).fit()
"""


@pytest.mark.slow
@pytest.mark.parametrize("where,at", [("step", 26), ("publish", 16), ("swap", 20)])
def test_a_run_killed_anywhere_resumes_exactly_best_model_included(
        where: str, at: int, overfit_run: tuple[Path, Trainer, dict[str, float]], overfit_data: Path,
        tmp_path: Path) -> None:
    """SIGKILL at a step between saves, between writing last/ and making checkpoint/ of its new best model, and
    between the renames of a save: the resumed run ends with the uninterrupted run's losses, validations, last
    state, best model and bookkeeping (best metric, best step, patience counter)."""
    from tinystories.train.config import dump_config

    straight = overfit_run[0]
    out = tmp_path / "run"
    cfg = overfit_config(overfit_data, out, "early_stopping_patience=100")  # counted, never reached
    (tmp_path / "config.yaml").write_text(dump_config(cfg))
    proc = subprocess.run([sys.executable, "-c", KILL, str(tmp_path / "config.yaml"), where, str(at)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    if where == "publish":  # the state that needs repair: last/ has the new best, checkpoint/ the one before
        assert state_of(out / "last")["best_model"]["step"] == at  # type: ignore[index]
        assert json.loads((out / "checkpoint" / "config.json").read_text())["training"]["step"] < at
    if where == "swap":
        assert not (out / "last").exists() and (out / "last.old").is_dir()

    resumed = Trainer(cfg)
    assert resumed.step == {"step": 20, "publish": 16, "swap": 16}[where]
    assert json.loads((out / "checkpoint" / "config.json").read_text())["training"]["step"] == resumed.best.step
    resumed.fit()
    assert [r["loss"] for r in rows_of(out, "train")] == [r["loss"] for r in rows_of(straight, "train")]
    assert rows_of(out, "eval") == rows_of(straight, "eval") and rows_of(out, "best") == rows_of(straight, "best")
    assert state_of(out / "last") == state_of(straight / "last")
    assert state_of(out / "last")["best_model"]["patience_counter"] > 0  # type: ignore[index]
    for name in ("last", "checkpoint"):
        assert same_weights(out / name, straight / name), name
        assert (json.loads((out / name / "config.json").read_text())["training"]
                == json.loads((straight / name / "config.json").read_text())["training"])


@pytest.mark.slow
def test_early_stopping_after_patience_validations(overfit_run: tuple[Path, Trainer, dict[str, float]],
                                                    overfit_data: Path, tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="tinystories")
    scores = [float(r["val_bpb"]) for r in rows_of(overfit_run[0], "eval")]  # type: ignore[arg-type]
    stop, best, waited = None, math.inf, 0  # where the uninterrupted run's validations say a patience of 2 stops
    for i, score in enumerate(scores):
        best, waited = (score, 0) if score < best else (best, waited + 1)
        if waited == 2:
            stop = 4 * (i + 1)
            break
    assert stop is not None and stop < 32
    out = tmp_path / "run"
    trainer = Trainer(overfit_config(overfit_data, out, "early_stopping_patience=2"))
    trainer.fit()
    assert trainer.step == stop and rows_of(out, "train")[-1]["step"] == stop
    assert f"early stopping at step {stop}: 2 validations without an improvement" in caplog.text
    assert trainer.best.step == stop - 8 and state_of(out / "last")["step"] == stop
    caplog.clear()
    again = Trainer(overfit_config(overfit_data, out, "early_stopping_patience=2"))
    again.fit()  # a rerun of a run that stopped early trains no further
    assert again.step == stop and "already finished" in caplog.text


def test_epochs_in_the_summary_and_the_progress_bar(overfit_data: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    trainer = Trainer(overfit_config(overfit_data, tmp_path / "run", max_steps=18, eval_interval=9, progress=True))
    tokens = trainer.data_tokens
    assert tokens == json.loads((overfit_data / "train.json").read_text())["tokens"]  # valid.bin: nothing held out
    lines = trainer.summary()
    assert any(f"18 steps = 0.01M tokens = {18 * 512 / tokens:.1f} epochs" in line for line in lines), lines
    assert any(f"one epoch (every token read once) takes {tokens / 512:,.1f} steps" in line for line in lines), lines
    assert any(line.startswith("validation: valid.bin (60 stories") for line in lines), lines
    trainer.fit()
    assert f"epoch={18 * 512 / tokens:.2f}" in capsys.readouterr().err
    assert json.loads((tmp_path / "run/last/config.json").read_text())["training"]["epochs"] == round(
        18 * 512 / tokens, 3)


def test_without_valid_bin_stories_are_held_out_of_the_training_data(tmp_path: Path) -> None:
    from tinystories.data.corpus import read_stories
    from tinystories.train.batches import split_stories

    data = tmp_path / "tokens"
    prepare(PrepareConfig(train=["bundled:valid"], valid=[], out_dir=str(data), vocab_size=300), progress=False)
    assert not (data / "valid.bin").exists()
    source = read_stories("bundled:valid")[0]

    def trainer(seed: int, *extra: str) -> Trainer:
        return Trainer(build_train_config(None, [*TINY, "model.vocab_size=300", *extra], data_dir=str(data),
                                          out_dir=str(tmp_path / f"r{seed}"), seed=seed, progress=False))

    t = trainer(3)
    assert t.held_out is not None and t.valid is not None
    eos = t.tokenizer.eos_id
    held = [t.tokenizer.decode(s.tolist()) for s in split_stories(t.held_out, eos)]
    kept = [t.tokenizer.decode(s.tolist()) for s in split_stories(t.batches.tokens, eos)]
    assert len(held) == 25 and sorted(held + kept) == sorted(source)  # 5% of 500, whole stories, none lost
    assert not set(held) & set(kept) and t.overlap == 0  # disjoint
    assert len(t.batches.tokens) + len(t.held_out) == json.loads((data / "train.json").read_text())["tokens"]
    assert t.valid[1].bytes == sum(len(s.encode()) + 1 for s in held)  # bits per byte over their own bytes
    assert held != [s for s in source if s in set(held)][:0] and held == [s for s in source if s in set(held)]
    assert any("25 stories" in line and "held out of train.bin: 5% drawn with seed 3" in line for line in t.summary())
    assert np.array_equal(trainer(3).held_out, t.held_out)  # the same draw in every process and on resume
    assert not np.array_equal(trainer(4).held_out, t.held_out)
    none = trainer(5, "validation_split_percentage=0")
    assert none.valid is None and none.held_out is None and len(none.batches.tokens) == len(t.batches.tokens) + len(
        t.held_out)
    assert any(line.startswith("validation: none") for line in none.summary())


def test_a_corpus_too_small_to_hold_out_from_says_what_to_do() -> None:
    from tinystories.train.batches import hold_out_stories

    tokens = np.array([5, 6, 7, 0, 8, 9, 0], dtype=np.uint16)  # two stories
    train, held, count = hold_out_stories(tokens, 0, 50, seed=1, min_tokens=2)
    assert count == 1 and sorted([train.tolist(), held.tolist()]) == [[5, 6, 7, 0], [8, 9, 0]]
    with pytest.raises(TinyStoriesError, match="too small to hold out a validation window.*--valid"):
        hold_out_stories(tokens, 0, 50, seed=1, min_tokens=8)


@pytest.mark.slow
def test_turning_load_best_model_at_end_on_when_resuming_chooses_again(overfit_data: Path, tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    """A run that kept its last model has no best one on disk: resumed with load_best_model_at_end, it says so and
    picks the best of the validations to come, never pointing at weights it does not have."""
    out = tmp_path / "run"
    first = Trainer(overfit_config(overfit_data, out, "load_best_model_at_end=false", max_steps=24))
    first.fit()
    assert first.best.step is not None and first.best.step < 24  # a best model, but checkpoint/ holds step 24
    caplog.set_level("INFO", logger="tinystories")
    resumed = Trainer(overfit_config(overfit_data, out))
    assert "not the best one" in caplog.text and resumed.best.step is None
    resumed.fit()
    assert resumed.best.step in (28, 32)
    assert json.loads((out / "checkpoint" / "config.json").read_text())["training"]["step"] == resumed.best.step


def test_a_small_improvement_is_a_new_best_but_does_not_reset_the_patience() -> None:
    """As HF's EarlyStoppingCallback: early_stopping_threshold decides the count, any improvement the best model."""
    from tinystories.train.best import BestModel

    best = BestModel()
    seen = [best.update({"val_bpb": v}, step, "val_bpb", threshold=0.01) for step, v in
            [(1, 1.5), (2, 1.495), (3, 1.52), (4, 1.4)]]
    assert seen == [True, True, False, True] and best.step == 4 and best.patience_counter == 0
    assert BestModel.from_state(best.state()) == best
    best.update({"val_bpb": 1.399}, 5, "val_bpb", threshold=0.01)
    assert best.step == 5 and best.patience_counter == 1 and not best.exhausted(2) and not best.exhausted(0)
    best.update({"val_bpb": 1.6}, 6, "val_bpb", threshold=0.01)
    assert best.exhausted(2) and best.step == 5
